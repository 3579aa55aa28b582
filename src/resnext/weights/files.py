"""Reading weight files safely and loading them with every key and shape checked.

Files a user hands us are never fully unpickled: ``.pt``/``.pth`` go through
``torch.load(weights_only=True)`` and ``.safetensors`` through safetensors.
"""

from __future__ import annotations

import argparse
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

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
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


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


def key_differences(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    own_keys: set[str] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Sorted missing keys (of ``own_keys``, default all of ``own``), unexpected keys, and
    ``"key: file (shape) vs model (shape)"`` lines of ``state`` against ``own``."""
    own_keys = set(own) if own_keys is None else own_keys
    missing = sorted(own_keys - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own_keys & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def describe_differences(
    missing: list[str], unexpected: list[str], shapes: list[str], *, examples: int, eg: str = ""
) -> list[str]:
    """One phrase per kind of difference, with the first ``examples`` of each."""
    out = []
    if missing:
        out.append(f"{len(missing)} missing keys ({eg}{', '.join(missing[:examples])})")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys ({eg}{', '.join(unexpected[:examples])})")
    if shapes:
        out.append(f"{len(shapes)} shape mismatches ({'; '.join(shapes[:examples])})")
    return out


def load_checked(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, skip_classifier: bool = False
) -> None:
    """Copy ``state`` into ``model`` after checking every key and every shape.

    Unlike ``load_state_dict(strict=False)``, nothing is dropped silently: missing or
    unexpected keys and shape mismatches raise :class:`WeightsError` listing them.
    ``skip_classifier`` leaves ``fc`` as initialised (fine-tuning to new classes).
    """
    own = model.state_dict()
    state = dict(state)
    if skip_classifier:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own_keys = {k for k in own if not k.startswith("fc.")}
    else:
        own_keys = set(own)
    missing, unexpected, shapes = key_differences(own, state, own_keys)
    problems = describe_differences(missing, unexpected, shapes, examples=3, eg="e.g. ")
    if problems:
        hint = ""
        if shapes and all(s.startswith("fc.") for s in shapes):
            hint = " Only the classifier differs: to fine-tune on new classes, skip the classifier."
        raise WeightsError(
            "the weights do not fit this model: " + "; ".join(problems) + ". Check that the model "
            "name (depth, cardinality, width) and num_classes match the file." + hint
        )
    model.load_state_dict(state, strict=not skip_classifier)


def built_to_load(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()``'s module with its tensors allocated on the CPU but not initialised, for a
    full :func:`load_checked` to fill (skips the random initialisation: 0.16 s of the 0.17 s
    resnext50_32x4d takes to build). Only for modules whose every tensor is in their state
    dict (no non-persistent buffers), loaded without ``skip_classifier``."""
    with torch.device("meta"):
        model = build()
    return model.to_empty(device="cpu")


def save_safetensors(model: nn.Module, path: str | Path) -> None:
    """Write the model's weights as safetensors (loadable by any ecosystem)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path))
