"""``resnext predict``: the top-k classes of images, files or whole folders.

Unreadable files and non-images are reported on stderr and skipped; the rest are still
classified, and the exit status is 1 if any input failed (0 otherwise).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from ..data.images import is_image_file
from ..errors import ConfigError
from ..inference import Classifier
from ..inference.classes import with_id
from .common import IntermixedParser, add_model_options, runtime_from_args

HELP = "top-k classes of images or folders of images"
USAGE = (
    "resnext predict CHECKPOINT IMAGE_OR_FOLDER [...] [options]\n"
    "       resnext predict --model NAME --weights FILE IMAGE_OR_FOLDER [...] [options]"
)
DESCRIPTION = """\
Classify images with a checkpoint (or --model NAME --weights FILE, then every positional
argument is an image or folder).
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.__class__ = IntermixedParser  # options and positionals in any order
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="PATH",
        help="the checkpoint, then images and folders (with --weights: only images and folders)",
    )
    add_model_options(p)
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="images per forward pass (default 16: the next batch is decoded while the model "
        "runs this one, and small batches start the model sooner)",
    )


def collect(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image paths to classify (folders expanded, sorted) and (input, error) for missing ones."""
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                # Files named explicitly are always tried; in folders, image names only.
                if f.is_file() and is_image_file(f.name)
            )
            if not found:
                errors.append((item, "folder holds no image files"))
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            errors.append((item, "does not exist"))
    return files, errors


def load_classifier(args: argparse.Namespace) -> tuple[Classifier, list[str]]:
    """The classifier and the image arguments left over."""
    runtime = runtime_from_args(args)
    if args.weights or args.model:
        if not (args.weights and args.model):
            raise ConfigError("--model and --weights go together: a registry name and a state dict")
        clf = Classifier.from_weights(args.model, args.weights, runtime=runtime)
        return clf, list(args.inputs)
    if len(args.inputs) < 2:
        raise ConfigError(
            "give a checkpoint and at least one image or folder: "
            "resnext predict CHECKPOINT IMAGE_OR_FOLDER [...]"
        )
    clf = Classifier.from_checkpoint(args.inputs[0], use_ema=args.ema, runtime=runtime)
    return clf, list(args.inputs[1:])


def run(args: argparse.Namespace) -> int:
    if args.topk < 1:
        raise ConfigError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    clf, inputs = load_classifier(args)
    files, errors = collect(inputs)
    print(  # stderr: stdout stays the predictions (and valid JSON with --json)
        f"resnext predict: {clf.backend_line}, {clf.precision}, {clf.device}",
        file=sys.stderr,
    )
    for item, why in errors:
        print(f"resnext predict: {item}: {why}; skipped", file=sys.stderr)
    results = []
    bar = tqdm(
        total=len(files),
        desc="predict",
        unit="img",
        disable=args.no_progress or len(files) <= args.batch_size,
        leave=False,
    )
    for r in clf.predict_files(files, topk=args.topk, batch_size=args.batch_size):
        bar.update(1)
        if r.error is not None:
            errors.append((r.path, r.error))
            tqdm.write(f"resnext predict: {r.path}: {r.error}; skipped", file=sys.stderr)
            continue
        results.append((r.path, r.topk))
        if not args.json:
            shown = [(with_id(clf.name_of(c), c), p) for c, p in r.topk]
            tqdm.write(format_prediction(r.path, shown), file=sys.stdout)
    bar.close()
    if args.json:
        out = {
            "predictions": [
                {
                    "path": name,
                    "topk": [
                        {"class": c, "name": clf.name_of(c), "probability": p} for c, p in preds
                    ],
                }
                for name, preds in results
            ],
            "errors": [{"path": item, "error": why} for item, why in errors],
        }
        print(json.dumps(out, indent=2))
    if errors:
        print(
            f"resnext predict: {len(errors)} input(s) failed, {len(results)} classified",
            file=sys.stderr,
        )
        return 1
    return 0


def format_prediction(name: str, preds: list[tuple[str, float]]) -> str:
    """The path, then one ``class  (probability%)`` line per class (as given: the caller
    passes what people read, e.g. ``goldfish, Carassius auratus (n01443537)``)."""
    lines = [name] + [f"  {c}  ({100 * p:.2f}%)" for c, p in preds]
    return "\n".join(lines)
