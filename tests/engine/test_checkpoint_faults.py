"""`resnext train` meets damaged checkpoints and a full disk, as a user's run would: a
resume whose newest checkpoint is damaged continues from the one before and ends with the
uninterrupted run's weights and EMA bit for bit; a disk that fills while a checkpoint is
written stops the run with one line naming the path and the free space, the previous
checkpoint intact."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import assert_same_training_state, tiny_run
from resnext.checkpoint import check_intact, load_checkpoint, step_checkpoints
from resnext.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restore_torch_globals")]

# The tiny ResNeXt on 180 digits: 12 steps in one epoch, a checkpoint every 4 steps (each
# about 630 KB), an EMA with copied BN statistics (cheap, and saved like any other).
RUN = tiny_run(
    "data.test_fraction=0.8",
    "train.batch_size=16",
    "train.epochs=1",
    "train.checkpoint_every_steps=4",
    "train.ema_decay=0.9",
    "train.ema_bn=copy",
    "train.log_every=1",
    "train.tensorboard=false",
    "train.threads=1",
)


def _train(out: Path, name: str, *extra: str) -> int:
    args = [*RUN, f"train.output_dir={out}", f"train.run_name={name}", *extra]
    return main(["train", *args])


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("straight")
    assert _train(out, "straight") == 0
    return out / "straight"


def test_a_truncated_newest_checkpoint_resumes_from_the_one_before_to_the_same_state(
    tmp_path: Path, straight: Path, capsys
) -> None:
    assert _train(tmp_path, "run", "train.max_steps=8") == 0
    run = tmp_path / "run"
    assert [s for s, _ in step_checkpoints(run)] == [8, 4]
    newest = run / "step-0000008.pt"
    newest.write_bytes(newest.read_bytes()[:100_000])  # cut short, as by a failed copy
    capsys.readouterr()
    assert _train(tmp_path, "run", "--resume") == 0
    out = capsys.readouterr().out
    assert re.search(
        r"last.pt \(step-0000008.pt\) is damaged: its SHA-256 differs .*\(cut short\?\); "
        r"resuming from step-0000004.pt \(step 4\), the newest intact checkpoint",
        out,
    ), out
    assert "(step 4)" in out.split("resuming")[-1]
    assert_same_training_state(run, straight)


def test_a_damaged_checkpoint_named_by_path_is_refused_naming_the_intact_one(
    tmp_path: Path, capsys
) -> None:
    assert _train(tmp_path, "run", "train.max_steps=8") == 0
    run = tmp_path / "run"
    newest = run / "step-0000008.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed: a whole zip, a wrong digest
    newest.write_bytes(bytes(data))
    capsys.readouterr()
    assert _train(tmp_path, "run", f"train.resume={newest}") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"train.resume={newest} cannot be resumed: its SHA-256 differs" in err
    assert f"resume with train.resume={run / 'step-0000004.pt'}" in err
    for path in (run / "step-0000004.pt", newest):
        path.write_bytes(b"garbage")
    assert _train(tmp_path, "run", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"no intact checkpoint to resume in {run}" in err


# -- a full disk ----------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 1,000 KiB tmpfs (room for one checkpoint, not two) where this test may mount one
    (root, with mount); None elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1000k", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        yield None
        return
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)
        if os.path.ismount(disk):
            subprocess.run(["umount", "-l", str(disk)], check=False)


def _file_size_limit(limit: int):
    def apply() -> None:  # in the child; Python ignores SIGXFSZ, so a write gets EFBIG
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    return apply


def test_a_disk_that_fills_stops_the_run_with_one_line_and_the_previous_checkpoint_intact(
    tmp_path: Path, small_disk: Path | None, straight: Path, capsys
) -> None:
    if small_disk is not None:  # the disk fills while step 8 is written
        code = _train(small_disk, "run")
        err = capsys.readouterr().err.strip()
        run = small_disk / "run"
        free = r"\d+(\.\d)? (bytes|KiB)"
    else:  # no mount: a file-size limit on the process (EFBIG) while it writes step 8
        if not hasattr(resource, "RLIMIT_FSIZE"):
            pytest.skip("neither a tmpfs mount (needs root) nor RLIMIT_FSIZE is available")
        assert _train(tmp_path, "run", "train.max_steps=4") == 0
        args = [*RUN, f"train.output_dir={tmp_path}", "train.run_name=run", "--resume"]
        done = subprocess.run(
            [sys.executable, "-m", "resnext", "train", *args],
            capture_output=True,
            text=True,
            preexec_fn=_file_size_limit(300_000),
            timeout=300,
        )
        code, err, run = done.returncode, done.stderr.strip(), tmp_path / "run"
        free = r"\d+(\.\d)? (bytes|KiB|MiB|GiB)"
    assert code == 1, err
    print(f"\n{err}")
    assert "\n" not in err
    assert re.fullmatch(
        rf"resnext train: error: checkpoint of step 8 not written: cannot write "
        rf"{re.escape(str(run / 'step-0000008.pt'))}: (No space left on device|File too large) "
        rf"\({free} free there\)\. {re.escape(str(run / 'last.pt'))} still holds the previous "
        r"checkpoint \(step-0000004.pt\), intact; the run stopped here\. Free space .* --resume",
        err,
    ), err
    assert check_intact(run / "last.pt") is None
    assert load_checkpoint(run / "last.pt")["step"] == 4
    assert not list(run.glob(".*.tmp"))  # the partial file is gone
    # Continued where there is room, the run ends as the uninterrupted one.
    moved = tmp_path / "moved"
    shutil.copytree(run, moved / "run", symlinks=True)
    assert _train(moved, "run", "--resume") == 0
    assert_same_training_state(moved / "run", straight)
