"""``resnext convert SRC -o DST.safetensors [--from FORMAT]``: weights from another ecosystem
into our model file (safetensors + JSON with architecture, classes, preprocessing, source)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, model_from_checkpoint
from ..convert import IMPORTERS, import_weights, save_imported
from ..errors import ConfigError

HELP = "import weights (Torch7 .t7, torchvision/timm .pth, Lornatang .pth.tar, Chainer .npz)"
DESCRIPTION = """\
Convert a weights file of another ecosystem into a resnext model file: DST.safetensors and
DST.json (architecture, class names, the source's evaluation preprocessing, provenance), which
every resnext command and Classifier load by path.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SRC", help="the file to import")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="DST.safetensors")
    p.add_argument(
        "--from", dest="fmt", choices=tuple(IMPORTERS), help="source format (default: detected)"
    )
    p.add_argument("--model", help="state_dict: the registry name (default: inferred)")
    ema = p.add_mutually_exclusive_group()
    ema.add_argument("--ema", action="store_true", default=None, help="take the file's EMA weights")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="the trained weights")
    p.add_argument(
        "--preprocess",
        choices=("tv-v1", "tv-v2"),
        help="state_dict: torchvision's V1 (256 -> 224) or V2 (232 -> 224) evaluation",
    )
    p.add_argument("--classes", metavar="FILE", help="class names, one per line, in output order")


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.suffix != ".safetensors":
        raise ConfigError(f"-o {args.output!r}: the model file is written as NAME.safetensors")
    options: dict[str, Any] = {}
    if args.model:
        options["model"] = args.model
    if args.ema is not None:
        options["ema"] = args.ema
    if args.preprocess:
        options["preprocess"] = args.preprocess
    imported = import_weights(args.source, args.fmt, **options)
    if args.classes:
        imported.classes = _read_classes(args.classes, imported.model.arch.num_classes)
    weights, sidecar = save_imported(out, imported)
    # Read it back as every command will, and check it computes what was imported.
    reloaded = model_from_checkpoint(load_checkpoint(weights)).eval()
    model = imported.model.eval()
    arch = model.arch
    x = torch.randn(2, arch.in_chans, *(2 * [imported.preprocess.image_size]))
    with torch.no_grad():
        same = torch.equal(model(x), reloaded(x))
    if not same:
        raise RuntimeError(f"{weights} does not reload to the imported model")  # a bug
    src = imported.source
    print(f"{args.source}: {src.get('format', args.fmt)} -> {arch.name}")
    if imported.classes:
        names = ""
    else:  # the file names none: default_class_names
        names = " (ImageNet-1k names)" if arch.num_classes == 1000 else " (named by index)"
    print(f"  classes: {arch.num_classes}{names}")
    print(f"  preprocessing: {imported.preprocess.describe()}")
    notes = {k: v for k, v in src.items() if k not in ("format", "file") and v is not None}
    if notes:
        print("  source: " + ", ".join(f"{k} {v}" for k, v in notes.items()))
    print(f"wrote {weights} and {sidecar} (reloaded: the same logits)")
    return 0


def _read_classes(path: str, num_classes: int) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--classes {path!r}: no such file")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if len(names) != num_classes:
        raise ConfigError(
            f"--classes {path!r} holds {len(names)} names but the model has {num_classes} outputs"
        )
    return names
