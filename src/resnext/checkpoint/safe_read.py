"""Reading weight files safely, and finding the state dict inside what was read.

Files a user hands us are never fully unpickled: ``.pt``/``.pth`` go through
``torch.load(weights_only=True)`` and ``.safetensors`` through safetensors.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError

#: Entries of a checkpoint dict that hold the model's state dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict", "model_state_dict")

#: Key prefixes that wrappers add to every parameter name, and who adds them. A prefix is
#: stripped when *every* key carries it; stripping repeats, so stacked wrappers (a compiled
#: DDP model: ``_orig_mod.module.``) unwrap too.
STATE_DICT_PREFIXES: dict[str, str] = {
    "module.": "DistributedDataParallel / DataParallel, and timm's ModelEmaV2",
    "_orig_mod.": "torch.compile (the OptimizedModule wrapper)",
    "model.": "PyTorch Lightning (a LightningModule holding the network as self.model)",
}


def read_file(path: str | Path) -> dict:
    """Load a ``.pt``/``.pth``/``.safetensors`` file into a dict, safely."""
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights file {str(p)!r} does not exist")
    if p.is_dir():
        raise WeightsError(f"{str(p)!r} is a folder; give the path of a .pth or .safetensors file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsError(f"{str(p)!r} is not a readable safetensors file: {e}") from e
    with open(p, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK\x03\x04); old files are a pickle (protocol byte 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise WeightsError(
            f"{str(p)!r} is not a PyTorch (.pt/.pth) or .safetensors weights file; give a "
            "checkpoint written by `resnext train` or a saved state dict"
        )
    if head.startswith(b"PK\x03\x04") and _is_torchscript(p):
        raise WeightsError(
            f"{str(p)!r} is a TorchScript archive (e.g. from resnext export --format "
            "torchscript): load it with torch.jit.load; resnext commands take the checkpoint, "
            "the .safetensors model file or the .onnx export"
        )
    try:
        # timm's train.py stores its argparse.Namespace of options: plain data, allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" (it holds {found[1]})" if found else ""
        raise WeightsError(
            f"{str(p)!r} holds objects other than tensors and plain containers{what}, so it was "
            "not loaded: files are read with weights_only=True, which refuses arbitrary "
            "pickles. Re-save it as a state dict or .safetensors from code you trust."
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise WeightsError(
            f"{str(p)!r} is not a readable PyTorch file (truncated or corrupt?): {e}"
        ) from e
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{str(p)!r} holds a {type(obj).__name__}, not a state dict")
    return dict(obj)


def _is_torchscript(path: Path) -> bool:
    """torch.jit.save writes code/ and constants.pkl into its zip; torch.save does not."""
    names = zip_names(path)
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names or ())


def zip_names(path: Path) -> list[str] | None:
    """The member names of a zip archive (torch.save's format, numpy's .npz, TorchScript's),
    or None for a file that is not one."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except zipfile.BadZipFile:
        return None


def extract_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint or a plain state dict.

    Understands our checkpoints (``model``, or ``ema`` where asked for by the caller), the
    common wrappers (:data:`WRAPPER_KEYS`) and the wrappers' key prefixes
    (:data:`STATE_DICT_PREFIXES`).
    """
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError("no tensors found: this file is not a state dict or checkpoint")
    return strip_prefixes(state)


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove every :data:`STATE_DICT_PREFIXES` prefix that all keys share, repeatedly."""
    state = dict(state)
    stripped = True
    while stripped and state:
        stripped = False
        for prefix in STATE_DICT_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def add_num_batches_tracked(state: dict[str, torch.Tensor]) -> int:
    """Give every BN that has running statistics but no ``num_batches_tracked`` (files saved
    before PyTorch 0.4.1) a zero count, as ``load_state_dict`` would; returns how many."""
    added = 0
    for k in list(state):
        if k.endswith(".running_mean"):
            name = k[: -len("running_mean")] + "num_batches_tracked"
            if name not in state:
                state[name] = torch.tensor(0, dtype=torch.long)
                added += 1
    return added
