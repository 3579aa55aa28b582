"""Weight files: read safely, every key and shape checked, clear errors for bad files."""

from __future__ import annotations

import argparse
import fractions
from pathlib import Path

import pytest
import torch

from resnext.checkpoint import (
    STATE_DICT_PREFIXES,
    WeightsError,
    extract_state_dict,
    load_checked,
    read_file,
    save_safetensors,
    strip_prefixes,
)
from resnext.models import create_model


def tiny(**kw):
    return create_model("resnext29_2x4d", widths=(16, 32, 64), stem_width=16, **kw)


def test_pth_and_safetensors_roundtrip(tmp_path: Path) -> None:
    model = tiny()
    torch.save(model.state_dict(), tmp_path / "w.pth")
    save_safetensors(model, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        other = tiny()
        load_checked(other, extract_state_dict(read_file(tmp_path / name)))
        for k, v in model.state_dict().items():
            assert torch.equal(v, other.state_dict()[k]), (name, k)


def test_wrappers_and_ddp_prefix_are_understood(tmp_path: Path) -> None:
    model = tiny()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    other = tiny()
    load_checked(other, extract_state_dict(read_file(tmp_path / "ddp.pth")))
    assert torch.equal(other.fc.weight, model.fc.weight)


def test_shape_mismatch_is_reported_not_dropped() -> None:
    state = tiny(num_classes=10).state_dict()
    with pytest.raises(WeightsError, match=r"fc.weight: file \(10, 64\) vs model \(5, 64\)"):
        load_checked(tiny(num_classes=5), state)
    with pytest.raises(WeightsError, match="to fine-tune on new classes, skip the classifier"):
        load_checked(tiny(num_classes=5), state)
    model = tiny(num_classes=5)
    load_checked(model, state, skip_classifier=True)  # fine-tuning path
    assert torch.equal(model.conv1.weight, state["conv1.weight"])


def test_missing_and_unexpected_keys_are_listed() -> None:
    state = tiny().state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(
        WeightsError,
        match=r"1 missing keys .*layer1.0.conv1.weight.*1 unexpected keys .*extra.weight",
    ):
        load_checked(tiny(), state)


def test_another_architecture_is_refused() -> None:
    with pytest.raises(WeightsError, match="do not fit this model"):
        load_checked(
            create_model("resnext29_4x4d", widths=(16, 32, 64), stem_width=16), tiny().state_dict()
        )


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        read_file(tmp_path / "nope.pth")
    with pytest.raises(WeightsError, match="is a folder"):
        read_file(tmp_path)


def test_corrupt_files_get_clear_errors(tmp_path: Path) -> None:
    torch.save(tiny().state_dict(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch file"):
        read_file(tmp_path / "cut.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        read_file(tmp_path / "junk.safetensors")


def test_arbitrary_pickles_are_refused(tmp_path: Path) -> None:
    """weights_only=True: a file holding arbitrary objects is not unpickled."""
    evil = {"model": tiny().state_dict(), "args": fractions.Fraction(1, 3)}
    torch.save(evil, tmp_path / "evil.pth")
    with pytest.raises(
        WeightsError, match=r"\(it holds fractions.Fraction\).*weights_only=True, which refuses"
    ):
        read_file(tmp_path / "evil.pth")


def test_a_file_that_is_no_weights_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("# my notes\n")
    with pytest.raises(WeightsError, match=r"is not a PyTorch .* or .safetensors weights file"):
        read_file(tmp_path / "notes.pth")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_file(tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="no tensors found"):
        extract_state_dict({"epoch": 3})


def test_compiled_and_stacked_wrapper_checkpoints_load(tmp_path: Path) -> None:
    """Real wrapper state dicts: torch.compile (``_orig_mod.``), DDP-then-compile and
    compile-then-DDP stacks, Lightning's ``model.``; each loads to the same weights."""
    model = tiny()
    compiled = torch.compile(model)  # lazy: state_dict() does not compile anything
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    plain = model.state_dict()
    variants = {
        "compile": {"model": compiled.state_dict()},
        "ddp+compile": {f"_orig_mod.module.{k}": v for k, v in plain.items()},
        "compile+ddp": {f"module._orig_mod.{k}": v for k, v in plain.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in plain.items()}},
    }
    for name, payload in variants.items():
        torch.save(payload, tmp_path / f"{name}.pth")
        other = tiny(num_classes=10)
        load_checked(other, extract_state_dict(read_file(tmp_path / f"{name}.pth")))
        for k, v in plain.items():
            assert torch.equal(v, other.state_dict()[k]), (name, k)


def test_a_prefix_only_some_keys_carry_is_kept() -> None:
    """Only a prefix that every key shares is a wrapper's; a partial one stays, and the
    checked load then names the keys instead of guessing."""
    state = {"module.conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)}
    assert set(strip_prefixes(state)) == set(state)
    assert set(STATE_DICT_PREFIXES) >= {"module.", "_orig_mod.", "model."}


def test_timm_checkpoints_with_their_argparse_namespace_load(tmp_path: Path) -> None:
    """timm's train.py saves its options as an argparse.Namespace: plain data, allowed."""
    model = tiny()
    payload = {"epoch": 3, "state_dict": model.state_dict(), "args": argparse.Namespace(lr=0.1)}
    torch.save(payload, tmp_path / "checkpoint-3.pth.tar")
    obj = read_file(tmp_path / "checkpoint-3.pth.tar")
    assert obj["args"].lr == 0.1
    load_checked(tiny(), extract_state_dict(obj))


def test_a_torchscript_archive_is_named_as_one(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.trace(tiny().eval(), torch.rand(1, 3, 32, 32)), tmp_path / "m.pt")
    with pytest.raises(WeightsError, match=r"is a TorchScript archive.*torch\.jit\.load"):
        read_file(tmp_path / "m.pt")


def test_files_from_before_num_batches_tracked_load(tmp_path: Path) -> None:
    """PyTorch < 0.4.1 saved BN without num_batches_tracked (e.g. torchvision's resnet50
    file): --weights and model.pretrained take them, counting 0 batches."""
    from resnext import Classifier

    full = create_model("resnext29_2x4d", num_classes=10).state_dict()
    state = {k: v for k, v in full.items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    clf = Classifier.from_weights("resnext29_2x4d", tmp_path / "old.pth")
    assert int(clf.model.bn1.num_batches_tracked) == 0
