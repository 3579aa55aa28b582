"""The main job end to end, as a user runs it: `resnext train` with no arguments, then eval
and predict on its checkpoint. This is the "done" check of the training and evaluation work:
>= 98% test accuracy, eval reproduces it, predict names >= 95% of the digits saved as PNG.
(Its speed, <= 3 minutes on 2 cores, is measured by `make demo`, not asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import resnext as resnext_api
from resnext import EvalOptions
from resnext.data.digits import digits_splits

pytestmark = pytest.mark.slow


def resnext(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnext", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run of the demo with its default config (about 2 minutes here)."""
    root = tmp_path_factory.mktemp("demo")
    proc = resnext("train", "train.run_name=demo", "train.progress=false", cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "runs" / "demo"


def test_demo_reaches_98_percent_test_accuracy(demo_run: Path) -> None:
    records = [json.loads(ln) for ln in (demo_run / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in records if r["kind"] == "test")
    assert test["test_images"] == 359 and test["checkpoint"] == "best.pt"
    assert test["test_top1"] >= 98.0
    for name in ("config.yaml", "last.pt", "best.pt", "curves.png"):
        assert (demo_run / name).stat().st_size > 0, name
    assert list((demo_run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard events"


def test_eval_reproduces_and_predict_names_the_digits(demo_run: Path, tmp_path: Path) -> None:
    records = [json.loads(ln) for ln in (demo_run / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in records if r["kind"] == "test")
    proc = resnext(
        "eval", str(demo_run / "best.pt"), "--json", str(tmp_path / "e.json"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    member = json.loads((tmp_path / "e.json").read_text())["members"][0]
    assert member["top1"] == pytest.approx(test["test_top1"], abs=1e-9)
    # The same evaluation from Python: the numbers `resnext eval` printed.
    report = resnext_api.evaluate(EvalOptions(demo_run / "best.pt"))
    assert report.final.num_images == 359 and report.members[0].name == str(demo_run / "best.pt")
    for key in ("top1", "top5", "loss"):
        assert getattr(report.final, key) == pytest.approx(member[key], abs=1e-9), key

    # The test split's digits as PNG files, one folder per true class.
    _, _, test_set = digits_splits(0.1, 0.2, 0)
    for i in range(len(test_set)):
        image, label = test_set[i]
        (tmp_path / "png" / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(
            tmp_path / "png" / str(label) / f"{i:03d}.png"
        )
    proc = resnext(
        "predict", str(demo_run / "best.pt"), str(tmp_path / "png"), "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    predictions = json.loads(proc.stdout)["predictions"]
    assert len(predictions) == 359
    right = sum(Path(p["path"]).parent.name == p["topk"][0]["class"] for p in predictions)
    assert right / len(predictions) >= 0.95
    # The same images through eval and predict: the same count right.
    assert right == round(member["top1"] / 100 * 359)
