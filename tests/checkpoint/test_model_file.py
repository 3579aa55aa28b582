"""The model file (NAME.safetensors + NAME.json): what convert and export write, and what every
command and the Classifier load by path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import DIGITS_PRE, TINY
from resnext import Classifier, RuntimeOptions, create_model
from resnext.checkpoint import load_checkpoint, model_from_checkpoint
from resnext.checkpoint.model_file import MODEL_FORMAT, save_model_file
from resnext.cli import main
from resnext.data import DIGITS_CLASSES
from resnext.errors import WeightsError


def _model_file(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(3)
    model = create_model("resnext29_2x4d", num_classes=10, **TINY).eval()
    path, _ = save_model_file(
        tmp_path / "m.safetensors",
        model,
        classes=list(DIGITS_CLASSES),
        preprocess=DIGITS_PRE,
        source={"format": "test", "file": "made-here"},
    )
    return model, path


def test_written_and_read_back_exactly(tmp_path: Path) -> None:
    model, path = _model_file(tmp_path)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["format"] == MODEL_FORMAT and meta["classes"] == list(DIGITS_CLASSES)
    assert meta["arch"] == model.arch.to_dict() and meta["preprocess"] == DIGITS_PRE
    assert meta["source"] == {"format": "test", "file": "made-here"}
    ckpt = load_checkpoint(path)
    assert ckpt["optimizer"] is None and ckpt["config"] is None
    again = model_from_checkpoint(ckpt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    clf = Classifier.from_checkpoint(path, runtime=RuntimeOptions(device="cpu"))
    x = torch.rand(2, 3, 32, 32)
    normalised = (x - torch.tensor(DIGITS_PRE["mean"])[:, None, None]) / torch.tensor(
        DIGITS_PRE["std"]
    )[:, None, None]
    with torch.no_grad():
        expected = model(normalised).softmax(1)
    torch.testing.assert_close(clf.predict_proba(list(x)), expected, rtol=0, atol=1e-6)


def test_eval_takes_a_model_file(tmp_path: Path, capsys) -> None:
    _, path = _model_file(tmp_path)
    assert main(["eval", str(path), "data.test_fraction=0.03", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "dataset: digits, test split: 50 images" in out and "trained weights" in out


def test_bad_model_files_say_what_is_wrong(tmp_path: Path) -> None:
    model, path = _model_file(tmp_path)
    side = tmp_path / "m.json"
    side.write_text("{not json")
    with pytest.raises(WeightsError, match=r"m\.json.*not readable JSON"):
        load_checkpoint(path)
    side.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WeightsError, match="not a resnext model description"):
        load_checkpoint(path)
    side.write_text(json.dumps({"format": MODEL_FORMAT, "arch": model.arch.to_dict()}))
    with pytest.raises(WeightsError, match="lacks classes, preprocess"):
        load_checkpoint(path)
    with pytest.raises(WeightsError, match=r"written as \.safetensors"):
        save_model_file(tmp_path / "m.pt", model, classes=list("0123456789"), preprocess={})
    with pytest.raises(WeightsError, match="3 class names for a model with 10 outputs"):
        save_model_file(tmp_path / "n.safetensors", model, classes=list("abc"), preprocess={})
