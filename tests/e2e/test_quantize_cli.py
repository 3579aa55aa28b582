"""`resnext quantize` as users run it: the gate refuses and writes nothing, --force writes the
figures into the file, and the int8 file runs in Classifier, predict, eval and a real serve
process, named `onnxruntime int8` everywhere.

The model is the tiny ResNeXt-29 with seeded weights (not trained): these tests check the
command's behaviour, not int8's accuracy, which docs/int8.md measures on the demo model.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from helpers import tiny_checkpoint
from resnext.cli import main
from resnext.data.digits import digits_splits
from resnext.export.to_int8 import INT8_KEY
from resnext.inference import Classifier
from resnext.runtime import RuntimeOptions

pytestmark = pytest.mark.usefixtures("restore_torch_globals")

# Few images keep each run at seconds: 16 calibrate, 40 judge.
FAST = ("--images", "16", "--eval-images", "40")


def _quantize(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["quantize", *argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("q") / "tiny.pt")


@pytest.fixture(scope="module")
def forced(checkpoint: Path) -> tuple[Path, str]:
    """An int8 file written past an impossible bound with --force, and what was printed."""
    out = checkpoint.with_name("tiny-int8.onnx")
    rc, text, err = _quantize(str(checkpoint), "-o", str(out), *FAST, "--max-drop=-100", "--force")
    assert rc == 0, err
    return out, text


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pngs")
    _, _, test = digits_splits(0.1, 0.2, 0)
    paths = []
    for i in range(6):
        image, _ = test[i]
        paths.append(folder / f"{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


@pytest.mark.slow  # a quantization of its own: ~10 s idle, 50 s on a busy 2-core machine
def test_the_gate_refuses_past_max_drop_and_writes_nothing(checkpoint: Path) -> None:
    out = checkpoint.parent / "refused" / "int8.onnx"
    rc, text, err = _quantize(str(checkpoint), "-o", str(out), *FAST, "--max-drop=-100")
    assert rc == 1
    missed = r"top-1 drop (-?[\d.]+) pt > --max-drop -100 pt \(missed by ([\d.]+) pt\)"
    found = re.search(missed, err)
    assert found and float(found[2]) == pytest.approx(float(found[1]) + 100, abs=0.011)
    assert "nothing was written" in err and "FAILED" in text
    # the gate table was printed: fp32 and int8 rows with top-1, top-5 and agreement
    assert re.search(r"fp32 \(onnxruntime\)\s+[\d.]+\s+[\d.]+\s+100\.00", text)
    assert re.search(r"int8 \(onnxruntime\)\s+[\d.]+\s+[\d.]+\s+[\d.]+", text)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_force_writes_the_gate_figures_into_metadata_and_sidecar(forced) -> None:
    path, text = forced
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    int8 = json.loads(props[INT8_KEY])
    gate = int8["gate"]
    assert gate["passed"] is False and gate["forced"] is True and gate["max_drop_pt"] == -100
    assert gate["labelled"] and gate["count"] == 40 and gate["images"] == "digits val split"
    assert f"top-1 drop {gate['drop_pt']:.2f} pt" in text
    assert gate["drop_pt"] == pytest.approx(gate["fp32"]["top1"] - gate["int8"]["top1"])
    assert int8["calibration"]["count"] == 16
    assert int8["calibration"]["images"] == "digits train split"
    assert int8["settings"]["per_channel_weights"] is True
    assert json.loads(props["resnext.classes"]) == [str(i) for i in range(10)]
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["int8"] == int8 and side["classes"] == json.loads(props["resnext.classes"])
    # the graph holds int8 weights: its quantize/dequantize nodes or QLinear ops
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"DequantizeLinear", "QuantizeLinear"} <= ops or "QLinearConv" in ops


def test_classifier_runs_the_int8_file_as_onnxruntime_int8(forced, digit_pngs, checkpoint):
    path, _ = forced
    clf = Classifier.from_checkpoint(path)
    assert clf.backend == "onnxruntime int8" and clf.backend_line == "onnxruntime int8 back-end"
    eager = RuntimeOptions(device="cpu", backend="eager")
    assert Classifier.from_checkpoint(checkpoint, runtime=eager).backend == "eager"
    got = clf.predict(digit_pngs, topk=10)
    assert len(got) == len(digit_pngs) and all(len(t) == 10 for t in got)
    assert all(abs(sum(p for _, p in t) - 1) < 1e-4 for t in got)  # a softmax over 10 classes


def test_predict_and_eval_cli_print_onnxruntime_int8(forced, digit_pngs) -> None:
    path, _ = forced
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["predict", str(path), *map(str, digit_pngs), "--json", "--no-progress"])
    assert rc == 0, err.getvalue()
    assert "onnxruntime int8 back-end" in err.getvalue()
    predictions = json.loads(out.getvalue())["predictions"]
    want = Classifier.from_checkpoint(path).predict(digit_pngs, topk=1)
    assert [p["topk"][0]["class"] for p in predictions] == [t[0][0] for t in want]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["eval", str(path), "data.test_fraction=0.03", "--no-progress"])
    assert rc == 0
    assert "onnxruntime int8 back-end" in out.getvalue()
    assert re.search(r"top-1\s", out.getvalue())


def test_serve_answers_with_the_int8_file(forced, digit_pngs, tmp_path) -> None:
    path, _ = forced
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "resnext", "serve", str(path), "--port", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url, deadline = None, time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log_path.read_text())
            if found:
                url = found[1]
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
            time.sleep(0.1)
        assert url is not None and proc.poll() is None, log_path.read_text()
        assert httpx.get(f"{url}/v1/model").json()["backend"] == "onnxruntime int8"
        r = httpx.post(
            f"{url}/v1/predict",
            content=digit_pngs[0].read_bytes(),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 200, r.text
        top = r.json()["predictions"][0]["topk"][0]
        want = Classifier.from_checkpoint(path).predict([digit_pngs[0]], topk=1)[0][0]
        assert top["class"] == want[0] and top["probability"] == pytest.approx(want[1], abs=1e-6)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # a quantization of its own
def test_unlabelled_folder_gates_on_agreement_with_held_out_images(tmp_path) -> None:
    """A state dict with --model and a folder without class sub-folders: calibrated on three
    quarters of it, judged by agreement with fp32 on the quarter held out."""
    from resnext.models import create_model

    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(create_model("resnext29_2x4d", num_classes=10).state_dict(), weights)
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "int8.onnx"
    argv = [str(weights), "--model", "resnext29_2x4d", "-o", str(out), "--calibration"]
    rc, text, err = _quantize(*argv, str(folder), "--max-drop", "100")
    assert rc == 0, err
    assert "calibration: 9 images of the 12 images under" in text
    assert re.search(r"gate on 3 images of the 12 images under .*held out from calibration", text)
    assert "disagreement with fp32" in text
    gate = json.loads(out.with_name("int8.onnx.json").read_text())["int8"]["gate"]
    assert gate["labelled"] is False and gate["int8"]["top1"] is None
    assert gate["drop_pt"] == pytest.approx(100 - gate["int8"]["agreement"])


def _scales(path: Path) -> dict[str, np.ndarray]:
    """The int8 file's quantization scales (initializers named ``*_scale``) by name."""
    tensors = onnx.load(str(path)).graph.initializer
    return {t.name: onnx.numpy_helper.to_array(t) for t in tensors if t.name.endswith("_scale")}


@pytest.mark.slow  # a histogram calibration of its own: ~15 s idle
@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_changes_activation_scales_only(forced, checkpoint, method) -> None:
    """--method entropy/percentile calibrates from histograms of the same images: the weights'
    per-channel scales stay those of min-max, most activation scales change (the method took
    effect: onnxruntime's own entropy set-up gave min-max's ranges), and the file records the
    method. 17 images: a last batch of another size."""
    minmax, _ = forced
    out = checkpoint.with_name(f"tiny-{method}.onnx")
    rc, text, err = _quantize(
        str(checkpoint), "-o", str(out), "--images", "17", "--eval-images", "40",
        "--method", method, "--max-drop=-100", "--force",
    )  # fmt: skip
    assert rc == 0, err
    assert f"{method} calibration" in text
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    int8 = json.loads(props[INT8_KEY])
    assert int8["settings"]["method"] == method and int8["calibration"]["count"] == 17
    a, b = _scales(minmax), _scales(out)
    assert a.keys() == b.keys()
    # per-channel weight scales (a bias's scale is the weight's times its input's)
    weights = [k for k in a if a[k].ndim == 1 and "bias" not in k]
    activations = [k for k in a if a[k].ndim == 0]
    assert len(weights) > 20 and len(activations) > 20
    assert all(np.array_equal(a[k], b[k]) for k in weights)
    changed = [k for k in activations if not np.isclose(a[k], b[k], rtol=1e-3)]
    assert len(changed) >= len(activations) // 2, f"{method}: {len(changed)} changed: {changed}"
