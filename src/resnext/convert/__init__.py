"""Import ResNeXt weights from other ecosystems into our model file (safetensors + JSON).

One importer a source format, each returning an :class:`Imported` (our model, the
preprocessing its authors evaluated it with, class names where known, provenance):

``t7``          the authors' Torch7 release (fb.resnet.torch layout), read with torchfile
``state_dict``  torchvision/timm-named state dicts, bare or wrapped (torch.compile, DDP,
                Lightning, EMA entries), the architecture inferred from the shapes
``lornatang``   Lornatang/ResNetXt-PyTorch ``.pth.tar`` checkpoints
``chainer``     nutszebra/resnext Chainer ``.npz`` files (ILSVRC and CIFAR layouts)

Nothing is unpickled beyond ``torch.load(weights_only=True)``; ``.npz`` files are read with
``allow_pickle=False``; torchfile builds no code objects.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..checkpoint import read_file
from ..checkpoint.safe_read import zip_names
from ..errors import WeightsError
from .base import Imported, save_imported

#: format name -> (module, function); imported on use, so one format's optional
#: dependency (torchfile for t7) is needed only for that format.
IMPORTERS: dict[str, tuple[str, str]] = {
    "t7": ("resnext.convert.t7", "import_t7"),
    "state_dict": ("resnext.convert.state_dict", "import_state_dict"),
    "lornatang": ("resnext.convert.lornatang", "import_lornatang"),
    "chainer": ("resnext.convert.chainer", "import_chainer_npz"),
}


def detect_format(path: str | Path) -> str:
    """The importer for a file, from its name and first bytes (``--from`` overrides)."""
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"{str(p)!r} does not exist or is not a file")
    name = p.name.lower()
    if name.endswith((".t7", ".net")):
        return "t7"
    if name.endswith(".npz"):
        return "chainer"
    with open(p, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") and _looks_like_npz(p):
        return "chainer"
    if name.endswith(".pth.tar"):
        # timm's train.py writes .pth.tar too; Lornatang's hold an ema_state_dict entry.
        return "lornatang" if "ema_state_dict" in read_file(p) else "state_dict"
    return "state_dict"


def _looks_like_npz(path: Path) -> bool:
    """numpy's .npz is a zip of .npy files; torch.save writes a zip holding data.pkl."""
    names = zip_names(path)
    return bool(names) and all(n.endswith(".npy") for n in names)


def importer(fmt: str) -> Callable[..., Imported]:
    """The import function of a format name."""
    if fmt not in IMPORTERS:
        raise WeightsError(f"unknown source format {fmt!r}; known: {', '.join(IMPORTERS)}")
    module, func = IMPORTERS[fmt]
    return getattr(importlib.import_module(module), func)


def import_weights(path: str | Path, fmt: str | None = None, **options: Any) -> Imported:
    """Read ``path`` with the importer of ``fmt`` (detected from the file when None).

    ``options`` go to that importer (e.g. ``ema=True`` for state dicts and Lornatang's
    checkpoints, ``model="resnext50_32x4d"`` for a state dict); an option the importer
    does not take is an error naming the format.
    """
    fmt = fmt or detect_format(path)
    fn = importer(fmt)
    takes = set(inspect.signature(fn).parameters) - {"path"}
    unknown = sorted(set(options) - takes)
    if unknown:
        raise WeightsError(
            f"the {fmt} importer takes no option {', '.join(unknown)} (it takes: "
            f"{', '.join(sorted(takes)) or 'none'})"
        )
    return fn(path, **options)


__all__ = ["IMPORTERS", "Imported", "detect_format", "import_weights", "importer", "save_imported"]
