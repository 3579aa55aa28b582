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
from ..inference.explain import cam_head
from ..inference.overlay import save_explanation
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
        "--explain",
        metavar="DIR",
        help="also write each image's class activation map of its top-1 class to DIR: an "
        "overlay PNG with a colour bar and the raw map as .npy (float32, the image's H x W, NaN "
        "outside the eval crop); maps come from the eager fp32 model",
    )
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
    if args.explain:
        cam_head(clf.model)  # a model without exact maps is refused before any work
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
    explained = explain_files(clf, [name for name, _ in results], args) if args.explain else {}
    if args.json:
        out = {
            "predictions": [
                {
                    "path": name,
                    "topk": [
                        {"class": c, "name": clf.name_of(c), "probability": p} for c, p in preds
                    ],
                    **({"explain": explained[name]} if name in explained else {}),
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


def explain_files(clf: Classifier, paths: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Write each image's top-1 map (overlay PNG and .npy) under ``args.explain``; what the
    JSON output says of each, by path."""
    folder = Path(args.explain)
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    out: dict[str, dict] = {}
    for i in range(0, len(paths), args.batch_size):
        batch = paths[i : i + args.batch_size]
        for path, e in zip(
            batch, clf.explain(batch, topk=1, batch_size=args.batch_size), strict=True
        ):
            stem = Path(path).stem
            name, n = stem, 1
            while name in taken:  # same file name in two folders
                n += 1
                name = f"{stem}-{n}"
            taken.add(name)
            png, npy = folder / f"{name}.cam.png", folder / f"{name}.cam.npy"
            c = e.classes[0]
            caption = f"{with_id(clf.name_of(c), c)} ({100 * e.probabilities[0]:.1f}%)"
            save_explanation(e, png, npy, caption)
            out[path] = {
                "class": c,
                "overlay": str(png),
                "map": str(npy),
                "classes_agree": e.agrees,
            }
            if not e.agrees:
                print(
                    f"resnext predict: {path}: the eager fp32 model ranks class "
                    f"{e.eager_classes[0]!r} first where the {clf.backend} back-end ranks "
                    f"{c!r}; the map is {c!r}'s (exact for the eager model's logit of {c!r})",
                    file=sys.stderr,
                )
            if not args.json:
                print(f"{path}\n  map of {c!r}: {png} and {npy}")
    return out


def format_prediction(name: str, preds: list[tuple[str, float]]) -> str:
    """The path, then one ``class  (probability%)`` line per class (as given: the caller
    passes what people read, e.g. ``goldfish, Carassius auratus (n01443537)``)."""
    lines = [name] + [f"  {c}  ({100 * p:.2f}%)" for c, p in preds]
    return "\n".join(lines)
