"""Device resolution (torchrun included, with CUDA mocked: no GPU here), the one precision
notion, and the error family's command-line behaviour."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import resnext.models
from resnext import EvalOptions, RuntimeOptions, cli, runtime
from resnext.commands.common import add_runtime_options, runtime_from_args
from resnext.errors import ConfigError, DataError, ResnextError, TrainingError, WeightsError


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)


def _torchrun(monkeypatch: pytest.MonkeyPatch, local_rank: int, world_size: int = 4) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("RANK", str(local_rank))


def test_single_process_devices(eight_gpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert runtime.resolve_device("auto") == torch.device("cuda", 0)
    assert runtime.resolve_device("cuda") == torch.device("cuda", 0)
    assert runtime.resolve_device("cuda:5") == torch.device("cuda", 5)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="only 8 GPU"):
        runtime.resolve_device("cuda:8")


def test_under_torchrun_each_process_takes_its_local_rank(
    eight_gpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rank in range(4):
        _torchrun(monkeypatch, rank)
        assert runtime.resolve_device("cuda", what="train.device") == torch.device("cuda", rank)
        assert runtime.resolve_device("auto", what="train.device") == torch.device("cuda", rank)
    _torchrun(monkeypatch, 2)
    # An explicit index would put every process on that one GPU: refused, saying why.
    with pytest.raises(ConfigError, match=r"train.device='cuda:1' under torchrun.*LOCAL_RANK"):
        runtime.resolve_device("cuda:1", what="train.device")
    assert runtime.resolve_device("cpu") == torch.device("cpu")  # gloo on CPU stays possible
    _torchrun(monkeypatch, 9, world_size=10)
    with pytest.raises(ConfigError, match="LOCAL_RANK 9 but only 8 GPU"):
        runtime.resolve_device("cuda")


def test_device_errors_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        runtime.resolve_device("cuda:0", what="--device")
    with pytest.raises(ConfigError, match="must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        runtime.resolve_device("gpu")


def test_one_precision_notion(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert runtime.PRECISIONS == ("fp32", "bf16", "fp16")
    assert runtime.autocast_dtype("fp32") is None
    assert runtime.autocast_dtype("bf16") is torch.bfloat16
    x = torch.randn(4, 4)
    with runtime.autocast(cpu, "bf16"):
        assert (x @ x).dtype == torch.bfloat16
    with runtime.autocast(cpu, "fp32"):
        assert (x @ x).dtype == torch.float32
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        runtime.check_precision("fp16", cpu, "train.precision")
    with pytest.raises(ConfigError, match="must be one of fp32, bf16, fp16, got 'none'"):
        runtime.check_precision("none", cpu)
    # bf16 on a CPU without native bf16 is emulated: allowed, with a warning.
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16"):
        runtime.check_precision("bf16", cpu)


def test_auto_train_precision_follows_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 only where computed natively; never emulated bf16 (5x slower on such CPUs)."""
    from resnext.config import from_dict
    from resnext.engine.setup import resolve_train_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.auto_train_precision(cpu)[0] == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.auto_train_precision(cpu)[0] == "fp32"
    cuda = torch.device("cuda:1")
    for capability, want in (
        ((9, 0), "bf16"),
        ((8, 0), "bf16"),
        ((7, 5), "fp16"),
        ((6, 1), "fp32"),
    ):
        asked: list[torch.device] = []
        monkeypatch.setattr(
            torch.cuda,
            "get_device_capability",
            lambda d, c=capability, seen=asked: seen.append(d) or c,
        )
        assert runtime.auto_train_precision(cuda)[0] == want, capability
        assert asked == [cuda]  # the run's own GPU, not the current one
    # The run config gets the resolved value (written to config.yaml and the checkpoints);
    # a resume keeps the checkpoint's, on whatever machine it resumes.
    cfg = from_dict({})
    assert cfg.train.precision == "auto"
    resolved, said = resolve_train_precision(cfg, cpu)
    assert resolved.train.precision == "fp32" and said is not None and "no native bf16" in said
    ckpt = {"config": {"train": {"precision": "bf16"}}}
    resumed, said = resolve_train_precision(cfg, cpu, ckpt)
    assert resumed.train.precision == "bf16" and "started with" in (said or "")
    explicit = from_dict({"train": {"precision": "fp32"}})
    assert resolve_train_precision(explicit, cpu, ckpt) == (explicit, None)
    # a run of an older version stored train.amp: read as today's key, kept
    old = {"config": {"train": {"amp": "none"}}}
    assert resolve_train_precision(cfg, cpu, old)[0].train.precision == "fp32"
    # an fp16 run (auto on an older GPU) cannot resume exactly on the CPU: said at once
    with pytest.raises(ConfigError, match=r"trained in fp16 .* resume on a CUDA device"):
        resolve_train_precision(cfg, cpu, {"config": {"train": {"precision": "fp16"}}})
    with pytest.raises(ConfigError, match="auto, fp32, bf16, fp16"):
        from_dict({"train": {"precision": "half"}})


def test_error_family() -> None:
    for cls in (ConfigError, DataError, WeightsError, TrainingError):
        assert issubclass(cls, ResnextError)
    assert all(issubclass(c, ValueError) for c in (ConfigError, DataError, WeightsError))
    assert TrainingError.exit_code == 1 and ConfigError.exit_code == 2


def test_cli_prints_user_errors_in_one_line_and_keeps_bugs_tracebacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def user_error(args):
        raise DataError("data.root='/x' does not exist")

    def bug(args):
        raise KeyError("a bug")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda only=None: parser)
    parser._subparsers._group_actions[0].choices["models"].set_defaults(run=user_error)
    assert cli.main(["models"]) == 2
    assert capsys.readouterr().err == "resnext models: error: data.root='/x' does not exist\n"
    parser._subparsers._group_actions[0].choices["models"].set_defaults(run=bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["models"])


def test_inference_imports_no_training_engine() -> None:
    """eval, predict and the Python API (resnext, resnext.inference) load no engine module."""
    code = (
        "import sys, resnext, resnext.inference, resnext.commands.eval, resnext.commands.predict\n"
        "bad = sorted(m for m in sys.modules if m.startswith('resnext.engine'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_models_import_only_torch_and_the_standard_library() -> None:
    root = Path(resnext.models.__file__).parent
    for f in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                assert node.level == 1, f"{f.name} imports {node.module} from outside models"
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module] if isinstance(node, ast.ImportFrom) else node.names
                for name in names:
                    top = (name if isinstance(name, str) else name.name).split(".")[0]
                    assert top == "torch" or top in sys.stdlib_module_names, (f.name, top)


def test_an_onnx_file_runs_on_the_cpu_unless_a_device_was_named() -> None:
    assert RuntimeOptions().for_onnx() == RuntimeOptions(device="cpu")
    assert RuntimeOptions(device=None, precision="bf16").for_onnx().device == "cpu"
    named = RuntimeOptions(device="cuda:1", backend="eager")
    assert named.device_named and named.for_onnx() == named  # kept, and refused where it runs


def test_runtime_options_from_the_command_line() -> None:
    p = argparse.ArgumentParser()
    add_runtime_options(p)
    args = p.parse_args(["--device", "cpu", "--precision", "bf16", "--backend", "eager"])
    assert runtime_from_args(args) == RuntimeOptions("cpu", "bf16", "eager")
    assert runtime_from_args(p.parse_args([])) == RuntimeOptions()
    bench = argparse.ArgumentParser()
    add_runtime_options(bench, device_only=True)  # bench measures every back-end and precision
    assert runtime_from_args(bench.parse_args(["--device", "cpu"])) == RuntimeOptions("cpu")
    with pytest.raises(SystemExit):
        bench.parse_args(["--precision", "bf16"])


def test_eval_options_are_checked_when_made() -> None:
    assert EvalOptions("a.pt").checkpoints == ("a.pt",)
    assert EvalOptions(["a.pt", Path("b.pt")], data=None).data == {}  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="split must be test or val, got 'train'"):
        EvalOptions("a.pt", split="train")
    with pytest.raises(ConfigError, match="batch size must be at least 1, got 0"):
        EvalOptions("a.pt", batch_size=0)
