"""The back-ends: each gives the plain model's predictions within float rounding and the same
top-1 (eager and compile fold BN; onnxruntime exports once, cached by the weights' hash);
each is refused, with the reason, where it cannot run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from helpers import DIGITS_PRE, tiny_checkpoint
from resnext import Classifier, RuntimeOptions
from resnext.benchmarking import randomise_bn
from resnext.cli import main
from resnext.data import Preprocess
from resnext.errors import ConfigError
from resnext.export.onnx_cache import weights_digest
from resnext.inference.backends import choose_backend, missing_onnx_modules

pytest.importorskip("onnxruntime")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESNEXT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.mark.parametrize(
    "backend", ["eager", pytest.param("compile", marks=pytest.mark.slow), "onnxruntime"]
)
def test_each_backend_gives_the_models_probabilities(tmp_path: Path, backend: str) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt", seed=4)
    model = Classifier.from_checkpoint(
        ckpt, runtime=RuntimeOptions(device="cpu", backend="eager")
    ).model
    randomise_bn(model, seed=1)
    pre = Preprocess.from_dict(DIGITS_PRE)
    clf = Classifier(
        model, list("0123456789"), pre, runtime=RuntimeOptions(device="cpu", backend=backend)
    )
    assert clf.backend == backend and clf.runner is not model
    x = torch.stack([clf.to_tensor(image) for image in torch.rand(7, 3, 32, 32)])
    with torch.inference_mode():
        expected = model(x).softmax(1)  # the plain module: BN unfolded, NCHW
    # 4 then 3 images: a compiled batch shape is reused (padded) for a smaller batch
    got = torch.cat([clf.probabilities(x[:4]), clf.probabilities(x[4:])])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    if backend == "compile":
        assert len(clf.runner.compile_seconds) == 1  # one shape compiled: 3 ran padded to 4


def test_onnxruntime_exports_once_per_weights(tmp_path: Path, _cache) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt", seed=4)
    Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", backend="onnxruntime"))
    (cached,) = list(_cache.glob("*.onnx"))
    assert cached.name.startswith("resnext29_2x4d-")
    eager = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", backend="eager"))
    stamp = cached.stat().st_mtime_ns
    Classifier.from_checkpoint(
        ckpt, runtime=RuntimeOptions(device="cpu", backend="onnxruntime")
    )  # same weights
    assert cached.stat().st_mtime_ns == stamp and len(list(_cache.glob("*.onnx"))) == 1
    other = tiny_checkpoint(tmp_path / "d.pt", seed=5)  # other weights: another export
    Classifier.from_checkpoint(other, runtime=RuntimeOptions(device="cpu", backend="onnxruntime"))
    assert len(list(_cache.glob("*.onnx"))) == 2
    assert weights_digest(eager.model) != weights_digest(
        Classifier.from_checkpoint(other, runtime=RuntimeOptions(device="cpu")).model
    )


def test_eval_with_onnxruntime_reports_eagers_numbers(tmp_path: Path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt", seed=4)
    results = {}
    for backend in ("eager", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        argv = ["eval", str(ckpt), "data.test_fraction=0.03", "--backend", backend]
        assert main([*argv, "--no-progress", "--json", str(out)]) == 0
        assert f"{backend} back-end" in capsys.readouterr().out
        results[backend] = json.loads(out.read_text())
    e, o = results["eager"]["members"][0], results["onnxruntime"]["members"][0]
    assert o["top1"] == e["top1"] and o["loss"] == pytest.approx(e["loss"], abs=1e-5)
    assert results["onnxruntime"]["backends"] == ["onnxruntime"]


def test_onnxruntime_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    with pytest.raises(ConfigError, match="precision bf16 runs eager"):
        Classifier.from_checkpoint(
            ckpt, runtime=RuntimeOptions(device="cpu", precision="bf16", backend="onnxruntime")
        )
    with pytest.raises(ConfigError, match="back-end must be one of auto, eager, compile, onnx"):
        Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", backend="tensorrt"))


def test_auto_falls_back_to_eager_where_the_cache_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("RESNEXT_CACHE", str(blocker))
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="back-end auto: .*running eager instead"):
        clf = Classifier.from_checkpoint(
            ckpt, runtime=RuntimeOptions(device="cpu")
        )  # backend="auto"
    assert clf.backend == "eager"
    with pytest.raises(ConfigError, match="cannot create the output folder"):
        Classifier.from_checkpoint(
            ckpt, runtime=RuntimeOptions(device="cpu", backend="onnxruntime")
        )


def test_auto_runs_fp32_in_onnxruntime_and_bf16_eager(tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    assert (
        Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu")).backend
        == "onnxruntime"
    )
    bf16 = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", precision="bf16"))
    assert bf16.backend == "eager"


def test_auto_without_onnxscript_names_it_and_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """onnx and onnxruntime installed, onnxscript not (its import made to fail): the
    fallback to eager names onnxscript, not onnxruntime, with the pip command."""
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now fails
    with pytest.raises(ImportError):
        import onnxscript  # noqa: F401
    assert missing_onnx_modules() == ["onnxscript"]
    name, why = choose_backend(torch.device("cpu"), "fp32")
    assert name == "eager" and why.startswith("onnxscript not installed")
    assert "(pip install onnxscript)" in why and "1.1-1.5x eager" in why
    assert "onnxruntime not installed" not in why and "onnxruntime is not installed" not in why
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    Image.new("RGB", (32, 32), "white").save(tmp_path / "x.png")
    assert main(["predict", str(ckpt), str(tmp_path / "x.png"), "--device", "cpu"]) == 0
    line = capsys.readouterr().err.splitlines()[0]
    assert line.startswith("resnext predict: eager back-end (onnxscript not installed, ")
    assert "pip install onnxscript" in line and line.endswith("fp32, cpu")
    # an explicit back-end is what was asked for: no note
    clf = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu", backend="eager"))
    assert clf.backend_line == "eager back-end"
