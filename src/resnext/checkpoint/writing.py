"""Writing weight files: atomically (no truncated file after a crash), never over an input."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

from ..errors import WeightsError


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the mode any new file gets (0644 at umask 022).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
