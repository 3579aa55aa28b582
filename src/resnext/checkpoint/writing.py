"""Writing weight files: atomically (no truncated file after a crash), never over an input,
with the SHA-256 of what was written, and a clear error where the disk is full."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from ..errors import ResnextError, WeightsError

#: The errors of a write that found no room: a full disk, a quota, a file-size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(ResnextError):
    """A file could not be written for lack of room; what was there before is unchanged."""

    exit_code = 1


class _Hashing:
    """A file opened for writing that hashes what goes through it, and keeps the OSError a
    write raised (torch.save reports it as a RuntimeError of its own)."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha256, self.error = f, hashlib.sha256(), None

    def write(self, data: bytes) -> int:
        try:
            n = self.f.write(data)
        except OSError as e:
            self.error = e
            raise
        self.sha256.update(data)
        return n

    def flush(self) -> None:
        self.f.flush()


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> str:
    """Write through a temporary file in the same folder, fsync, then ``os.replace``; returns
    the SHA-256 (hex) of the bytes written. No room for them: :class:`DiskFullError`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    hashing: _Hashing | None = None
    try:
        with os.fdopen(fd, "wb") as f:
            hashing = _Hashing(f)
            write(hashing)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode any new file gets (0644 at umask 022).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)  # first: the space it held counts as free below
        full = _no_room(e, hashing.error if hashing is not None else None)
        if full is not None:
            raise DiskFullError(
                f"cannot write {path}: {full.strerror} ({free_space(path.parent)} free there)"
                + ("; the file there before is unchanged" if path.exists() else "")
            ) from e
        raise
    return hashing.sha256.hexdigest()


def _no_room(e: BaseException, seen: OSError | None) -> OSError | None:
    """The no-room OSError behind ``e`` (itself, one it was raised from, or one a write
    raised before the writer turned it into another error), else None."""
    chain: list[BaseException | None] = [seen]
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    for x in chain:
        if isinstance(x, OSError) and x.errno in NO_ROOM:
            return x
    return None


def free_space(folder: Path) -> str:
    """The free space of the disk that holds ``folder``, for a message."""
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            break
        free /= 1024
    return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, record: dict) -> None:
    """``record`` as indented JSON (the model file's and every export's sidecar), atomically."""
    atomic_write(path, lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))


def refuse_overwriting(output: str | Path, inputs: list[str | Path], what: str) -> None:
    """An output that is one of the inputs would be replaced by something else (a training
    checkpoint by an export, say): refuse it before any work."""
    out = Path(output)
    for item in inputs:
        if out.exists() and Path(item).exists() and out.samefile(item):
            raise WeightsError(
                f"-o {str(output)!r} is the input {str(item)!r}: {what} would replace it; "
                "write to another file"
            )


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors detached, contiguous and on the CPU: what safetensors stores."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save_safetensors(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights as safetensors (loadable by any ecosystem)."""
    from safetensors.torch import save_file

    save_file(cpu_state_dict(model), str(path))
