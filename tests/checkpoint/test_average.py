"""``resnext average``: every tensor is the float64 mean of the checkpoints' (BN statistics
included), the result loads everywhere a checkpoint does, and mismatches are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnext
from helpers import DIGITS_PRE, SMALL_TEST, TINY, direct_probs, tiny_checkpoint
from resnext import RuntimeOptions
from resnext.checkpoint import (
    WeightsError,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from resnext.checkpoint.average import average_checkpoints
from resnext.cli import main
from resnext.models import create_model


def bn_trained_checkpoint(path: Path, seed: int, *, ema: bool = False) -> Path:
    """``tiny_checkpoint(seed=seed)`` whose BN layers have seen ``seed + 1`` batches, so its
    running statistics (and ``num_batches_tracked``) differ from every other seed's. With
    ``ema``: an EMA of other values (the weights halved) that the run selected."""
    tiny_checkpoint(path, seed=seed)
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt).train()
    with torch.no_grad():
        for _ in range(seed + 1):
            model(torch.randn(4, 3, 32, 32) * (seed + 1) + seed)
    ckpt["model"] = model.state_dict()
    if ema:
        ckpt["ema"] = {k: v / 2 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        ckpt["metrics"] = {"selected": "ema"}
    save_checkpoint(path, ckpt)
    return path


def hand_mean(states: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    """The float64 mean cast back to float32; integer buffers: the largest."""
    tensors = [s[key] for s in states]
    if not tensors[0].is_floating_point():
        return max(tensors, key=int)
    return (sum(t.double() for t in tensors) / len(tensors)).float()


@pytest.fixture
def three(tmp_path: Path) -> list[Path]:
    return [bn_trained_checkpoint(tmp_path / f"{s}.pt", s) for s in range(3)]


def test_every_tensor_is_the_float64_mean_cast_back_bitwise(three: list[Path]) -> None:
    states = [load_checkpoint(p)["model"] for p in three]
    out = average_checkpoints(three)
    assert set(out["model"]) == set(states[0])
    for key, value in out["model"].items():
        assert value.dtype == states[0][key].dtype, key
        assert torch.equal(value, hand_mean(states, key)), key
    # BN statistics are averaged too; they differed, so the mean is none of the inputs'.
    for key in ("bn1.running_mean", "layer3.2.bn3.running_var"):
        assert not torch.equal(states[0][key], states[1][key])
        assert not any(torch.equal(out["model"][key], s[key]) for s in states)
    tracked = [k for k in states[0] if k.endswith("num_batches_tracked")]
    assert tracked and all(int(out["model"][k]) == 3 for k in tracked)  # 1, 2, 3 batches seen


def test_the_result_is_an_inference_only_checkpoint_of_the_first_files_records(
    three: list[Path],
) -> None:
    first = load_checkpoint(three[0])
    out = average_checkpoints([str(p) for p in three])
    assert (out["arch"], out["classes"], out["preprocess"]) == (
        first["arch"],
        first["classes"],
        first["preprocess"],
    )
    assert out["config"] == first["config"]
    assert out["ema"] is None
    assert all(out[k] is None for k in ("optimizer", "scheduler", "scaler", "step", "rng"))
    assert out["metrics"] == {
        "selected": "model",
        "averaged_from": [str(p) for p in three],
        "averaged_weights": ["model"] * 3,
    }
    # An inference-only checkpoint (no config, no training state) averages with ours.
    plain = _other_checkpoint(three[0].parent / "plain.pt")
    mixed = average_checkpoints([plain, three[0]])
    assert mixed["config"] is None and mixed["classes"] == first["classes"]
    assert torch.equal(
        mixed["model"]["bn1.running_mean"],
        hand_mean([load_checkpoint(plain)["model"], first["model"]], "bn1.running_mean"),
    )


def test_the_command_writes_a_checkpoint_that_eval_and_the_classifier_load(
    tmp_path: Path, three: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "soup" / "avg.pt"
    assert main(["average", *map(str, three), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "averaged 3 checkpoints of resnext29_2x4d (10 classes)" in printed
    assert all(f"  {p} (trained weights)" in printed for p in three)
    assert f"wrote {out}" in printed
    expected = average_checkpoints(three)["model"]
    clf = resnext.Classifier.from_checkpoint(out, runtime=RuntimeOptions(device="cpu"))
    assert clf.classes == [str(i) for i in range(10)]
    for key, value in clf.model.state_dict().items():
        assert torch.equal(value, expected[key]), key

    report = tmp_path / "r.json"
    assert main(["eval", str(out), SMALL_TEST, "--no-progress", "--json", str(report)]) == 0
    member = json.loads(report.read_text())["members"][0]
    probs, y = direct_probs(out)  # the averaged model on the same 50 digits, by hand
    assert member["num_images"] == len(y) == 50
    assert member["top1"] == pytest.approx(100 * float((probs.argmax(1) == y).float().mean()))


def test_ema_none_takes_what_each_run_selected(tmp_path: Path) -> None:
    a = bn_trained_checkpoint(tmp_path / "a.pt", 0, ema=True)  # selected its EMA
    b = bn_trained_checkpoint(tmp_path / "b.pt", 1)  # no EMA: its trained weights
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    key = "fc.weight"
    selected = average_checkpoints([a, b])
    assert selected["metrics"]["averaged_weights"] == ["ema", "model"]
    assert torch.equal(selected["model"][key], hand_mean([ca["ema"], cb["model"]], key))
    trained = average_checkpoints([a, b], ema=False)
    assert torch.equal(trained["model"][key], hand_mean([ca["model"], cb["model"]], key))
    with pytest.raises(WeightsError, match=r"b\.pt' has no EMA weights"):
        average_checkpoints([a, b], ema=True)


def _other_checkpoint(path: Path, name: str = "resnext29_2x4d", **preprocess: object) -> Path:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **TINY)
    classes = [str(i) for i in range(10)]
    save_checkpoint(
        path, make_checkpoint(model, classes=classes, preprocess={**DIGITS_PRE, **preprocess})
    )
    return path


def test_different_architectures_classes_or_preprocessing_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = tiny_checkpoint(tmp_path / "a.pt")
    wider = _other_checkpoint(tmp_path / "c4.pt", "resnext29_4x4d")
    with pytest.raises(
        WeightsError, match=r"a\.pt and .*c4\.pt differ in arch\.cardinality \(2 vs 4\)"
    ):
        average_checkpoints([a, wider])
    names = [f"digit {i}" for i in range(10)]
    renamed = tiny_checkpoint(tmp_path / "named.pt", seed=1, classes=names)
    with pytest.raises(WeightsError, match=r"differ in classes \(class 0: '0' vs 'digit 0'\)"):
        average_checkpoints([a, renamed])
    resized = _other_checkpoint(tmp_path / "resize.pt", eval_resize=36)
    with pytest.raises(WeightsError, match=r"differ in preprocess\.eval_resize \(None vs 36\)"):
        average_checkpoints([a, resized])
    # The command prints the same message on one line and writes nothing.
    out = tmp_path / "avg.pt"
    assert main(["average", str(a), str(wider), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnext average: error: ") and "arch.cardinality (2 vs 4)" in err
    assert err.count("\n") == 1 and not out.exists()


def test_one_checkpoint_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = tiny_checkpoint(tmp_path / "a.pt")
    out = tmp_path / "avg.pt"
    assert main(["average", str(a), "-o", str(out)]) == 2
    assert "averaging needs at least two checkpoints, got 1" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # no -o: argparse's usage error
        main(["average", str(a), str(a)])


def test_a_safetensors_output_is_a_model_file_and_an_input_is_never_replaced(
    three: list[Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "soup.safetensors"
    assert main(["average", *map(str, three), "-o", str(out)]) == 0
    assert (tmp_path / "soup.json").is_file()
    averaged = average_checkpoints(three)
    clf = resnext.Classifier.from_checkpoint(
        out, runtime=RuntimeOptions(device="cpu")
    )  # read as a model file
    for k, v in averaged["model"].items():
        assert torch.equal(clf.model.state_dict()[k], v), k
    before = three[0].read_bytes()
    assert main(["average", *map(str, three), "-o", str(three[0])]) == 2
    assert "is the input" in capsys.readouterr().err and three[0].read_bytes() == before


def test_the_command_averages_what_the_input_files_hold(tmp_path: Path) -> None:
    """`resnext average`'s output file against a mean computed here from the input files as
    torch.load reads them (no package code on the input side): the selected weights of each
    (an EMA for the run that selected it), float64 mean, integer counts the largest."""
    files = [
        bn_trained_checkpoint(tmp_path / "a.pt", 0, ema=True),
        bn_trained_checkpoint(tmp_path / "b.pt", 1),
        bn_trained_checkpoint(tmp_path / "c.pt", 2),
    ]
    raw = [torch.load(p, map_location="cpu", weights_only=True) for p in files]
    states = [
        r["ema"] if (r.get("metrics") or {}).get("selected") == "ema" else r["model"] for r in raw
    ]
    out = tmp_path / "avg.pt"
    assert main(["average", *map(str, files), "-o", str(out)]) == 0
    got = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert set(got) == set(states[0])
    for key, value in got.items():
        column = [s[key] for s in states]
        if value.is_floating_point():
            want = (torch.stack([t.double() for t in column]).sum(0) / 3).to(value.dtype)
        else:
            want = torch.stack(column).max(0).values
        assert torch.equal(value, want), key
    # The EMA file counted with its EMA (the halved weights), not its trained weights.
    w = "conv1.weight"
    assert not torch.equal(
        got[w], ((raw[0]["model"][w].double() + states[1][w] + states[2][w]) / 3).float()
    )
