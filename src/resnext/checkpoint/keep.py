"""A run folder's checkpoints, kept so that they can be trusted: the newest K, each with its
SHA-256 beside it, and the newest intact one found again for a resume.

With ``train.keep_checkpoints=K`` (default 2) a run folder holds:

- ``step-0000240.pt``: the checkpoint written at step 240, and ``step-0000240.pt.sha256``:
  its digest in ``sha256sum``'s format (``sha256sum -c step-0000240.pt.sha256`` checks it);
- the K-1 step checkpoints before it, likewise;
- ``last.pt`` and ``last.pt.sha256``: symbolic links to the newest pair (copies where the
  filesystem has no links), so ``last.pt`` still names the newest checkpoint.

A checkpoint goes to a temporary file, is fsynced and renamed (never seen half-written); its
digest is written after it, then ``last.pt`` moves, then the older files go. A reader checks
the digest before it unpickles anything. A full disk leaves every file as it was.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import WeightsError
from .checkpoints import copy_checkpoint, load_checkpoint, save_checkpoint
from .writing import DiskFullError, atomic_write

LAST = "last.pt"
DIGEST_SUFFIX = ".sha256"
_STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


class DamagedCheckpointError(WeightsError):
    """A checkpoint that is not the file that was written (cut short, changed, unreadable)."""


def step_name(step: int) -> str:
    """The file name of the checkpoint written at ``step``."""
    return f"step-{step:07d}.pt"


def digest_path(path: Path) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The run folder's step checkpoints as (step, path), newest first."""
    found = []
    for p in Path(run_dir).glob("step-*.pt"):
        m = _STEP_FILE.match(p.name)
        if m:
            found.append((int(m[1]), p))
    return sorted(found, reverse=True)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds a checkpoint a resume could continue (intact or not)."""
    last = Path(run_dir) / LAST
    return last.exists() or last.is_symlink() or bool(step_checkpoints(run_dir))


# -- writing --------------------------------------------------------------------------------
def save_step_checkpoint(run_dir: Path, payload: dict[str, Any], keep: int) -> Path:
    """Write ``payload`` as ``step-N.pt`` (N: its ``step``) with its digest, point ``last.pt``
    at it and delete all but the newest ``keep`` step checkpoints. Step checkpoints past N
    (left by a run resumed from an older one) are deleted too: they belong to a history
    this run replaced. Disk full: :class:`DiskFullError` that says what is intact."""
    run_dir = Path(run_dir)
    step = int(payload["step"])
    path = run_dir / step_name(step)
    try:
        digest = save_checkpoint(path, payload)
        line = f"{digest}  {path.name}\n".encode()
        atomic_write(digest_path(path), lambda f: f.write(line))
        _point(run_dir / LAST, path)
        _point(digest_path(run_dir / LAST), digest_path(path))
    except DiskFullError as e:
        raise DiskFullError(
            f"checkpoint of step {step} not written: {e}. {_intact_note(run_dir, path)}; the run "
            "stopped here. Free space (or move the run folder to a disk with room) and "
            "continue with --resume"
        ) from e
    _prune(run_dir, step, keep)
    return path


def _point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symbolic link to ``target``, atomically; a copy of it where
    the filesystem has no symbolic links (some network and FUSE filesystems)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(target.name, tmp)
    except OSError:
        copy_checkpoint(target, link)
        return
    os.replace(tmp, link)


def _prune(run_dir: Path, step: int, keep: int) -> None:
    """Delete step checkpoints beyond the newest ``keep`` up to ``step``, those past it, and
    the temporary files of writes that a killed process left behind."""
    steps = step_checkpoints(run_dir)
    older = [p for s, p in steps if s <= step]
    for p in [p for s, p in steps if s > step] + older[keep:]:
        p.unlink(missing_ok=True)
        digest_path(p).unlink(missing_ok=True)
    for pattern in (".step-*.tmp", f".{LAST}*.tmp"):  # only rank 0 writes: none is in use
        for p in run_dir.glob(pattern):
            p.unlink(missing_ok=True)


def _intact_note(run_dir: Path, failed: Path) -> str:
    """What a failed write left intact, for its message."""
    kept = [p for _, p in step_checkpoints(run_dir) if p != failed]
    if kept:
        return f"{run_dir / LAST} still holds the previous checkpoint ({kept[0].name}), intact"
    if (run_dir / LAST).exists():
        return f"{run_dir / LAST} still holds the previous checkpoint, intact"
    return "no checkpoint had been written yet"


# -- reading --------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_intact(path: Path) -> str | None:
    """None where the checkpoint at ``path`` is the file that was written (its digest matches,
    or it has none to check: written before digests), else what is wrong with it. Reads the
    bytes only; nothing is unpickled."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            return f"it links to {os.readlink(path)}, which does not exist"
        return "it does not exist"
    real = path.resolve()  # last.pt -> the step checkpoint it names
    side = digest_path(real)
    if not side.exists():
        return None
    try:
        expected = side.read_text().split()[0].lower()
    except (OSError, UnicodeDecodeError, IndexError):
        expected = ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return f"its digest file {side.name} is unreadable"
    if sha256_file(real) != expected:
        cut = "" if zipfile.is_zipfile(real) else "; it is not a whole zip archive (cut short?)"
        return f"its SHA-256 differs from the one recorded in {side.name} when it was written{cut}"
    return None


def load_intact(path: Path) -> dict[str, Any]:
    """Read a checkpoint after checking its digest; :class:`DamagedCheckpointError` (why)
    where it is damaged or unreadable."""
    why = check_intact(path)
    if why is None:
        try:
            return load_checkpoint(path)
        except WeightsError as e:
            why = str(e)
    raise DamagedCheckpointError(why)


def _label(path: Path) -> str:
    """A checkpoint's name for a message: ``last.pt (step-0000240.pt)`` for the link."""
    if path.is_symlink():
        return f"{path.name} ({os.readlink(path)})"
    return path.name


def resume_candidates(run_dir: Path) -> list[Path]:
    """The run folder's checkpoints, newest first: ``last.pt``, then the step checkpoints it
    is not (a ``last.pt`` copied where links were missing may equal the newest of them)."""
    run_dir = Path(run_dir)
    last = run_dir / LAST
    out = [last] if last.exists() or last.is_symlink() else []
    linked = last.resolve() if last.is_symlink() else None
    out += [p for _, p in step_checkpoints(run_dir) if p.resolve() != linked]
    return out


def load_newest_intact(
    run_dir: Path, say: Callable[[str], None] = lambda _m: None
) -> tuple[Path, dict[str, Any]]:
    """The newest intact checkpoint of a run folder and its contents. Each damaged one passed
    over is said with the reason; none intact is a one-line :class:`WeightsError`."""
    damaged: list[tuple[Path, str]] = []
    for path in resume_candidates(run_dir):
        try:
            ckpt = load_intact(path)
        except DamagedCheckpointError as e:
            damaged.append((path, str(e)))
            continue
        if damaged:
            passed = "; ".join(f"{_label(p)} is damaged: {why}" for p, why in damaged)
            say(
                f"{passed}; resuming from {path.name} (step {ckpt.get('step')}), the newest "
                f"intact checkpoint of {run_dir}"
            )
        return path, ckpt
    if not damaged:
        raise WeightsError(f"nothing to resume: {run_dir} holds no checkpoint")
    detail = "; ".join(f"{_label(p)}: {why}" for p, why in damaged)
    raise WeightsError(
        f"no intact checkpoint to resume in {run_dir} ({detail}); restore the run folder "
        "from a copy, or start a new run"
    )


def load_named(path: Path) -> dict[str, Any]:
    """The checkpoint a user named (``train.resume=PATH``), read only if intact. A damaged
    one is not replaced by another behind the user's back: the error names the newest
    intact checkpoint beside it, to name instead."""
    path = Path(path)
    try:
        return load_intact(path)
    except DamagedCheckpointError as e:
        why = str(e)
    others = [p for p in resume_candidates(path.parent) if p.resolve() != path.resolve()]
    for other in others:
        try:
            step = load_intact(other).get("step")
        except DamagedCheckpointError:
            continue
        raise DamagedCheckpointError(
            f"train.resume={path} cannot be resumed: {why}. The newest intact checkpoint beside it "
            f"is {other} (step {step}): resume with train.resume={other}, or with --resume "
            "(train.resume=auto), which falls back to it"
        )
    raise DamagedCheckpointError(
        f"train.resume={path} cannot be resumed: {why}; no intact checkpoint is beside it"
    )
