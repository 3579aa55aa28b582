"""``resnext export``: ONNX / TorchScript / safetensors files that give the eager logits, carry
their classes and preprocessing, and load into the Classifier; bad requests get clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnext
from helpers import DIGITS_PRE, tiny_checkpoint
from resnext import ConfigError, EvalOptions, RuntimeOptions, WeightsError, create_model
from resnext import export as export_mod
from resnext.checkpoint import load_checkpoint, model_from_checkpoint
from resnext.cli import main
from resnext.config import from_dict
from resnext.data import DIGITS_CLASSES, Preprocess, build_splits
from resnext.export.onnx_runtime import OnnxModel, load_onnx
from resnext.inference import prepare_evaluation
from resnext.inference.classifier import Classifier

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

DIFF = re.compile(r"max abs diff (\S+) on batches of 2 and 3")


def export(argv: list[str]) -> tuple[int, str]:
    """Run ``resnext export ARGV``; its exit status and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["export", *argv])
    return rc, out.getvalue()


def eager(ckpt: Path, n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch of ``n`` and the checkpoint's eager logits on it."""
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    x = torch.randn(n, 3, size, size)
    with torch.no_grad():
        return x, model(x)


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory) -> tuple[Path, Path, str]:
    """A tiny checkpoint exported by ``resnext export --format onnx``: (ckpt, file, stdout)."""
    folder = tmp_path_factory.mktemp("onnx")
    ckpt = tiny_checkpoint(folder / "c.pt", seed=3)
    rc, out = export([str(ckpt), "--format", "onnx", "-o", str(folder / "out" / "tiny.onnx")])
    assert rc == 0
    return ckpt, folder / "out" / "tiny.onnx", out


@pytest.fixture(scope="module")
def digits_pngs(tmp_path_factory) -> list[Path]:
    """Six digits test images saved as grayscale PNGs (as e2e/test_predict_cli.py does)."""
    folder = tmp_path_factory.mktemp("pngs")
    test = build_splits(from_dict({"data": {"test_fraction": 0.05}}).data).test
    paths = []
    for i in range(6):
        img, _ = test.base[i]
        paths.append(folder / f"{i}.png")
        Image.fromarray(img[0].numpy()).save(paths[-1])
    return paths


def test_onnx_export_matches_eager_in_onnxruntime_at_two_batch_sizes(onnx_export) -> None:
    ckpt, path, out = onnx_export
    m = DIFF.search(out)
    assert m and "onnxruntime vs eager" in out and float(m[1]) <= 1e-4
    assert "torch.onnx.export (dynamo)" in out  # the torch.export-based exporter works here
    assert Path(f"{path}.json").is_file() and not list(path.parent.glob(".*partial*"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("images", "logits")
    assert inp.shape == ["batch", 3, "height", "width"]  # dynamic batch and image size
    for n, size in ((1, 32), (5, 32), (2, 40)):  # 40: another test crop, the same file
        x, want = eager(ckpt, n, size)
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - want.numpy()).max() <= 1e-4


def test_onnx_metadata_and_json_hold_classes_and_preprocessing(onnx_export) -> None:
    ckpt, path, _ = onnx_export
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["resnext.classes"]) == list(DIGITS_CLASSES)
    assert json.loads(props["resnext.preprocess"]) == DIGITS_PRE
    assert json.loads(props["resnext.arch"]) == load_checkpoint(ckpt)["arch"]
    assert json.loads(props["resnext.source"]) == {
        "format": "resnext-checkpoint",
        "file": "c.pt",
        "weights": "model",
    }
    side = json.loads(Path(f"{path}.json").read_text())  # m.onnx.json: m.json is a model file's
    assert side["format"] == "resnext-model" and side["classes"] == list(DIGITS_CLASSES)
    assert side["preprocess"] == DIGITS_PRE


def test_classifier_on_the_onnx_file_predicts_like_the_checkpoint(onnx_export, digits_pngs) -> None:
    ckpt, path, _ = onnx_export
    model, classes, pre = load_onnx(path)
    assert isinstance(model, OnnxModel) and list(model.parameters()) == []
    assert classes == list(DIGITS_CLASSES) and pre == Preprocess.from_dict(DIGITS_PRE)
    got = Classifier(model, classes, pre, runtime=RuntimeOptions(device="cpu")).predict(
        digits_pngs, topk=3
    )
    want = Classifier.from_checkpoint(ckpt, runtime=RuntimeOptions(device="cpu")).predict(
        digits_pngs, topk=3
    )
    for g, w in zip(got, want, strict=True):
        assert [c for c, _ in g] == [c for c, _ in w]
        np.testing.assert_allclose([p for _, p in g], [p for _, p in w], rtol=0, atol=1e-5)


def test_onnx_model_refuses_a_gpu_and_foreign_onnx_files(onnx_export, tmp_path) -> None:
    model, _, _ = load_onnx(onnx_export[1])
    assert model.to("cpu") is model
    with pytest.raises(ConfigError, match="onnxruntime on the CPU"):
        model.to(torch.device("cuda"))  # refused before any CUDA call: works without a GPU
    with pytest.raises(ConfigError, match="onnxruntime on the CPU"):
        model.cuda()
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 10])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
    )
    foreign = tmp_path / "plain.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(WeightsError, match=r"plain\.onnx.*without resnext metadata.*--weights"):
        load_onnx(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(WeightsError, match=r"garbage\.onnx.*not a loadable ONNX file"):
        load_onnx(garbage)


@pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.load.*:FutureWarning")
def test_torchscript_export_carries_metadata_and_matches_eager(tmp_path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt", seed=4)
    path = tmp_path / "tiny.ts"
    rc, out = export([str(ckpt), "--format", "torchscript", "-o", str(path)])
    m = DIFF.search(out)
    assert rc == 0 and m and "torch.jit.load vs eager" in out and float(m[1]) <= 1e-4
    extra = {"resnext.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra["resnext.json"])
    assert meta == json.loads(Path(f"{path}.json").read_text())
    assert meta["classes"] == list(DIGITS_CLASSES) and meta["preprocess"] == DIGITS_PRE
    for n in (1, 4):
        x, want = eager(ckpt, n)
        with torch.no_grad():
            assert (loaded(x) - want).abs().max() <= 1e-4


def test_safetensors_export_is_exact_and_takes_the_selected_weights(tmp_path) -> None:
    torch.manual_seed(9)
    ema = create_model("resnext29_2x4d", num_classes=10, widths=(16, 32, 64), stem_width=16)
    ckpt = tiny_checkpoint(
        tmp_path / "c.pt", seed=5, ema=ema.state_dict(), metrics={"selected": "ema"}
    )
    for flag, want in (([], ema.state_dict()), (["--no-ema"], load_checkpoint(ckpt)["model"])):
        path = tmp_path / f"out{len(flag)}.safetensors"
        rc, out = export([str(ckpt), "--format", "safetensors", "-o", str(path), *flag])
        assert rc == 0 and "load_checkpoint vs eager: max abs diff 0 on batches of 2 and 3" in out
        back = load_checkpoint(path)  # the model file: safetensors + JSON beside it
        assert back["classes"] == list(DIGITS_CLASSES) and back["preprocess"] == DIGITS_PRE
        assert back["model"].keys() == want.keys()
        assert all(torch.equal(back["model"][k], want[k]) for k in want)
    assert "EMA weights" in export([str(ckpt), "--format", "safetensors", "-o", str(path)])[1]


@pytest.mark.slow
def test_torchvision_to_ours_to_onnx_keeps_torchvision_logits(tmp_path) -> None:
    """The issue's round trip: torchvision ResNeXt-50 -> our model file -> ONNX -> onnxruntime."""
    tv_models = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    tv = tv_models.resnext50_32x4d(weights=None).eval()
    for mod in tv.modules():  # running stats and affine params away from init: a real test
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.2)
    # The user's path: torchvision's file -> resnext convert (architecture inferred) -> export.
    torch.save(tv.state_dict(), tmp_path / "resnext50_32x4d-7cdf4587.pth")
    model_file = tmp_path / "tv.safetensors"
    assert (
        main(["convert", str(tmp_path / "resnext50_32x4d-7cdf4587.pth"), "-o", str(model_file)])
        == 0
    )
    assert load_checkpoint(model_file)["arch"] == create_model("resnext50_32x4d").arch.to_dict()
    path = tmp_path / "tv.onnx"
    rc, out = export([str(model_file), "--format", "onnx", "-o", str(path)])
    assert rc == 0 and DIFF.search(out)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (2, 3):
        x = torch.randn(n, 3, 224, 224)
        with torch.no_grad():
            want = tv(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert want.std() > 0.1  # logits that differ between classes, not a collapsed net
        assert np.abs(got - want).max() <= 1e-4


def test_an_export_never_replaces_its_input(tmp_path, capsys) -> None:
    ckpt = tiny_checkpoint(tmp_path / "best.pt")
    before = ckpt.read_bytes()
    assert main(["export", str(ckpt), "--format", "torchscript", "-o", str(ckpt)]) == 2
    assert "is the input" in capsys.readouterr().err and ckpt.read_bytes() == before


def test_eval_runs_an_onnx_file_on_the_cpu_even_where_auto_would_pick_a_gpu(
    onnx_export, monkeypatch
) -> None:
    ckpt, path, _ = onnx_export
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    ev = prepare_evaluation(EvalOptions(path, data={"test_fraction": 0.03}))  # device="auto"
    monkeypatch.undo()
    assert ev.members[0].classifier.device == torch.device("cpu")
    assert isinstance(ev.members[0].classifier.model, OnnxModel)
    report = resnext.evaluate(
        EvalOptions(path, data={"test_fraction": 0.03}, runtime=RuntimeOptions(device="cpu"))
    )
    want = resnext.evaluate(
        EvalOptions(ckpt, data={"test_fraction": 0.03}, runtime=RuntimeOptions(device="cpu"))
    )
    assert report.final.top1 == want.final.top1
    assert report.final.loss == pytest.approx(want.final.loss, abs=1e-5)


def test_bad_requests_get_clear_errors(tmp_path, capsys, monkeypatch) -> None:
    ckpt = tiny_checkpoint(tmp_path / "c.pt")
    model = model_from_checkpoint(load_checkpoint(ckpt))
    kw = {"classes": list(DIGITS_CLASSES), "preprocess": Preprocess.from_dict(DIGITS_PRE)}
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export_mod.check_output_path(tmp_path / "m.tflite", "tflite")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        main(["export", str(ckpt), "--format", "tflite", "-o", str(tmp_path / "m.tflite")])
    assert main(["export", str(ckpt), "--format", "onnx", "-o", str(tmp_path / "m.pt")]) == 2
    assert "a onnx export is written as .onnx, got" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"written as \.pt or \.ts"):
        export_mod.export_torchscript(model, tmp_path / "m.onnx", **kw)
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.onnx' is a folder"):
        export_mod.export_onnx(model, tmp_path / "dir.onnx", **kw)
    with pytest.raises(ConfigError, match="opset 99 is out of range"):
        export_mod.export_onnx(model, tmp_path / "m.onnx", opset=99, **kw)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the output folder"):
        export_mod.export_safetensors(model, tmp_path / "file" / "m.safetensors", **kw)
    with pytest.raises(WeightsError, match="3 class names for a model with 10 outputs"):
        export_mod.export_onnx(model, tmp_path / "m.onnx", **{**kw, "classes": ["a", "b", "c"]})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"need the onnxruntime package.*pip install"):
        export_mod.export_onnx(model, tmp_path / "m.onnx", **kw)
    assert not list(tmp_path.glob("m.*"))


def test_a_failed_check_keeps_no_file_and_the_fallback_exporter_works(
    tmp_path, monkeypatch
) -> None:
    model = model_from_checkpoint(load_checkpoint(tiny_checkpoint(tmp_path / "c.pt")))
    kw = {"classes": list(DIGITS_CLASSES), "preprocess": Preprocess.from_dict(DIGITS_PRE)}
    real_export = torch.onnx.export

    def no_dynamo(*args, dynamo: bool = True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated torch.export failure")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    report = export_mod.export_onnx(model, tmp_path / "m.onnx", **kw)
    assert report.exporter.startswith("torch.onnx.export (dynamo=False")
    assert "simulated torch.export failure" in report.notes[0]
    assert report.max_abs_diff <= 1e-4 and report.batch_sizes == (2, 3)
    assert load_onnx(report.path)[1] == list(DIGITS_CLASSES)  # metadata on this path too
    monkeypatch.setattr(export_mod.checked, "TOLERANCE", -1.0)  # any difference now fails the check
    with pytest.raises(WeightsError, match=r"max abs logit difference \S+ > -1.*nothing was kept"):
        export_mod.export_onnx(model, tmp_path / "n.onnx", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "m.onnx", "m.onnx.json"]
