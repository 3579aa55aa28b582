"""The run folder's step checkpoints: the newest K kept with a SHA-256 each, ``last.pt`` the
newest, and a damaged one (cut short, bytes changed, garbage) found before anything is
unpickled, so that a resume falls back to the next intact one or says why it cannot."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from resnext.checkpoint import (
    DamagedCheckpointError,
    WeightsError,
    check_intact,
    load_checkpoint,
    load_named,
    load_newest_intact,
    save_step_checkpoint,
    step_checkpoints,
)


def _save(run: Path, step: int, keep: int = 2) -> Path:
    payload = {"step": step, "model": {"w": torch.full((64, 64), float(step))}}
    return save_step_checkpoint(run, payload, keep)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flipped":  # one byte in the tensor data: still a whole, readable zip
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:  # garbage of the same length
        path.write_bytes(os.urandom(len(data)))


def test_the_newest_k_are_kept_each_with_its_sha256_and_last_names_the_newest(
    tmp_path: Path,
) -> None:
    for step in (4, 8, 12):
        _save(tmp_path, step)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [12, 8]
    for _, path in step_checkpoints(tmp_path):
        # sha256sum's format: `sha256sum -c step-0000012.pt.sha256` checks it by hand
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert Path(f"{path}.sha256").read_text() == f"{digest}  {path.name}\n"
    last = tmp_path / "last.pt"
    assert os.readlink(last) == "step-0000012.pt"
    assert os.readlink(tmp_path / "last.pt.sha256") == "step-0000012.pt.sha256"
    assert load_checkpoint(last)["step"] == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.pt", "last.pt.sha256", "step-0000008.pt", "step-0000008.pt.sha256",
        "step-0000012.pt", "step-0000012.pt.sha256",
    ]  # fmt: skip

    one = tmp_path / "one"
    for step in (4, 8):
        _save(one, step, keep=1)
    assert [s for s, _ in step_checkpoints(one)] == [8]


@pytest.mark.parametrize("how", ["truncated", "flipped", "garbage"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_next_intact_one(
    tmp_path: Path, how: str
) -> None:
    _save(tmp_path, 4)
    newest = _save(tmp_path, 8)
    _damage(newest, how)
    why = check_intact(tmp_path / "last.pt")
    assert why is not None and "SHA-256 differs" in why
    assert ("cut short" in why) == (how != "flipped")
    said: list[str] = []
    path, ckpt = load_newest_intact(tmp_path, said.append)
    assert path.name == "step-0000004.pt" and ckpt["step"] == 4
    (line,) = said
    assert "last.pt (step-0000008.pt) is damaged: its SHA-256 differs" in line
    assert "resuming from step-0000004.pt (step 4)" in line


def test_a_checkpoint_without_a_digest_is_checked_by_reading_it(tmp_path: Path) -> None:
    """A run folder of an earlier version has no digests: an unreadable file is still
    passed over, with the reader's reason."""
    _save(tmp_path, 4)
    newest = _save(tmp_path, 8)
    Path(f"{newest}.sha256").unlink()
    assert check_intact(newest) is None
    _damage(newest, "truncated")
    said: list[str] = []
    path, _ = load_newest_intact(tmp_path, said.append)
    assert path.name == "step-0000004.pt"
    assert "is not a readable PyTorch file (truncated or corrupt?)" in said[0]


def test_no_intact_checkpoint_is_a_one_line_error_naming_each(tmp_path: Path) -> None:
    for step in (4, 8):
        _damage(_save(tmp_path, step), "flipped")
    with pytest.raises(WeightsError, match=r"no intact checkpoint to resume in") as e:
        load_newest_intact(tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert "last.pt (step-0000008.pt): its SHA-256" in message
    assert "step-0000004.pt: its SHA-256" in message


def test_a_damaged_checkpoint_named_by_path_names_the_intact_one_beside_it(
    tmp_path: Path,
) -> None:
    """Named explicitly, a checkpoint is not replaced by another behind the user's back."""
    older = _save(tmp_path, 4)
    newest = _save(tmp_path, 8)
    assert load_named(newest)["step"] == 8
    _damage(newest, "flipped")
    with pytest.raises(DamagedCheckpointError) as e:
        load_named(newest)
    assert f"train.resume={newest} cannot be resumed: its SHA-256 differs" in str(e.value)
    assert f"train.resume={older}" in str(e.value)
    _damage(older, "garbage")
    with pytest.raises(DamagedCheckpointError, match="no intact checkpoint is beside it"):
        load_named(newest)


def test_a_resumed_run_replaces_the_newer_checkpoints_of_the_history_it_left(
    tmp_path: Path,
) -> None:
    """Resumed from step 4 past a damaged step 8, the run's next checkpoint (step 6) is the
    newest: step 8 goes, and last.pt names step 6."""
    _save(tmp_path, 4)
    _damage(_save(tmp_path, 8), "truncated")
    (tmp_path / ".step-0000010.pt.abc.tmp").write_bytes(b"left by a killed write")
    _save(tmp_path, 6)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [6, 4]
    assert os.readlink(tmp_path / "last.pt") == "step-0000006.pt"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_lost_link_target_is_passed_over(tmp_path: Path) -> None:
    _save(tmp_path, 4)
    newest = _save(tmp_path, 8)
    newest.unlink()
    said: list[str] = []
    path, _ = load_newest_intact(tmp_path, said.append)
    assert path.name == "step-0000004.pt"
    assert "links to step-0000008.pt, which does not exist" in said[0]
