"""Everything a user hands over is untrusted: a pickle that would run code is refused by every
entry point and nothing runs; truncated and empty files get a clear error naming the file."""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from helpers import DIGITS_PRE, TINY, tiny_checkpoint, tiny_run
from resnext import Classifier, create_model
from resnext.checkpoint import load_checkpoint, read_file
from resnext.checkpoint.model_file import save_model_file
from resnext.cli import main
from resnext.errors import WeightsError
from resnext.runtime import RuntimeOptions


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _evil(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    model = create_model("resnext29_2x4d", num_classes=10, **TINY)
    torch.save({"state_dict": model.state_dict(), "extra": Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize("name", ["evil.pt", "evil.pth", "evil.pth.tar"])
def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path: Path, name: str) -> None:
    path, marker = _evil(tmp_path, name)
    with pytest.raises(WeightsError, match="holds objects other than tensors") as err:
        read_file(path)
    assert name in str(err.value) and "weights_only" in str(err.value)
    with pytest.raises(WeightsError):
        load_checkpoint(path)
    with pytest.raises(WeightsError):
        Classifier.from_weights("resnext29_2x4d", path)
    assert not marker.exists()


def test_every_command_refuses_it_in_one_line(tmp_path: Path, capsys) -> None:
    path, marker = _evil(tmp_path, "evil.pth")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    calls = [
        ["eval", str(path)],
        ["predict", str(path), str(image)],
        ["predict", "--model", "resnext29_2x4d", "--weights", str(path), str(image)],
        ["convert", str(path), "-o", str(tmp_path / "out.safetensors")],
        ["average", str(path), str(path), "-o", str(tmp_path / "avg.pt")],
        ["export", str(path), "--format", "safetensors", "-o", str(tmp_path / "e.safetensors")],
    ]
    for argv in calls:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "evil.pth" in err and "Traceback" not in err, argv
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_empty_and_truncated_files_name_the_file(tmp_path: Path, kind: str) -> None:
    ckpt = tiny_checkpoint(tmp_path / "good.pt")
    model = create_model("resnext29_2x4d", num_classes=10, **TINY)
    good_st, _ = save_model_file(
        tmp_path / "good.safetensors", model, classes=list("0123456789"), preprocess=DIGITS_PRE
    )
    for good, name in ((ckpt, "bad.pt"), (good_st, "bad.safetensors")):
        data = good.read_bytes()
        bad = tmp_path / name
        bad.write_bytes(b"" if kind == "empty" else data[: len(data) // 2])
        if name.endswith(".safetensors"):  # a model file: the JSON beside it is intact
            (tmp_path / "bad.json").write_text((tmp_path / "good.json").read_text())
        with pytest.raises(WeightsError, match=name):
            load_checkpoint(bad)


def test_control_the_payload_does_run_code_under_full_unpickling(tmp_path: Path) -> None:
    """Without this, "the marker is absent" could mean the payload never worked."""
    path, marker = _evil(tmp_path, "evil.pth")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the test only: what the package must never do
    assert marker.exists()


@pytest.mark.usefixtures("restore_torch_globals")
@pytest.mark.parametrize("key", ["model.pretrained", "train.resume"])
def test_training_refuses_it_as_pretrained_weights_or_a_run_to_resume(
    tmp_path: Path, capsys, key: str
) -> None:
    path, marker = _evil(tmp_path, "evil.pth")
    runs = tmp_path / "runs"
    argv = ["train", *tiny_run("train.epochs=1"), f"train.output_dir={runs}", f"{key}={path}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "evil.pth" in err and "holds objects other than tensors" in err, err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not list(runs.glob("*/last.pt"))  # nothing trained


def test_serve_refuses_it_before_listening(tmp_path: Path, capsys) -> None:
    path, marker = _evil(tmp_path, "evil.pth")
    from resnext.serve.server import ModelSpec

    with pytest.raises(WeightsError, match="holds objects other than tensors"):
        runtime = RuntimeOptions(device="cpu", precision="fp32", backend="eager")
        ModelSpec(str(path), use_ema=None, runtime=runtime).load()
    with pytest.raises(WeightsError, match=r"evil\.pth"):
        Classifier.from_checkpoint(path, runtime=RuntimeOptions(backend="eager"))
    # The command loads the model before it binds a port, so this returns instead of serving.
    assert main(["serve", str(path), "--port", "0", "--backend", "eager"]) == 2
    err = capsys.readouterr().err
    assert "evil.pth" in err and "holds objects other than tensors" in err, err
    assert not marker.exists()
