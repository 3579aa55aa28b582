"""``resnext eval``: accuracy of checkpoints (or an ensemble of them) on a dataset split.

Test modes of the paper (Sec. 4): one centre crop (resize R -> crop S), the 10-crop test
(``--ten-crop``) and a larger crop (``--crop 320``, resize scaled by the same ratio).
Several checkpoints form an ensemble: their softmax outputs are averaged.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..api import Classifier, Preprocess, model_from_weights, resolve_device, selected_ema
from ..cli import UserError
from ..config import ConfigError, DataConfig, from_dict, merge_overrides
from ..data import TransformedDataset, build_raw_splits, make_loader
from ..engine.checkpoint import load_checkpoint
from ..engine.evaluate import EvalReport, EvalResult, evaluate
from ..table import format_table
from .common import IntermixedParser, add_model_options

# DataConfig keys that do not change which images and labels a split holds; members of an
# ensemble must agree on every other key (name, root, fractions, split seed, folders, ...).
NOT_DATASET_KEYS = {
    "image_size",
    "eval_resize",
    "augment",
    "interpolation",
    "mean",
    "std",
    "color_jitter",
    "pca_lighting",
    "on_bad_file",
    "num_workers",
}
# data.* overrides that change the preprocessing rather than the dataset.
PREPROCESS_KEYS = ("image_size", "eval_resize", "interpolation", "mean", "std")
MAX_CONFUSION_CLASSES = 100
_OVERRIDE = re.compile(r"^[A-Za-z_]+\.[A-Za-z_]+=")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="top-1/top-5 accuracy of checkpoints or an ensemble (centre, 10-crop, large crop)",
        description="Evaluate one checkpoint, or several as a softmax-averaged ensemble. "
        "By default the data is the checkpoint's own dataset and its test split; "
        "data.key=value overrides change it (as for train).",
    )
    p.__class__ = IntermixedParser  # options and positionals in any order
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="CHECKPOINT|data.key=value",
        help="checkpoints from `resnext train` (several = an ensemble), and data overrides",
    )
    add_model_options(p)
    p.add_argument("--split", choices=("test", "val"), default="test", help="split to evaluate")
    p.add_argument("--data-name", help="dataset reader (same as data.name=...)")
    p.add_argument("--data-root", help="dataset location (same as data.root=...)")
    p.add_argument(
        "--ten-crop", action="store_true", help="10-crop test: 4 corners + centre, and flips"
    )
    p.add_argument("--crop", type=int, help="test crop side (default: the checkpoint's)")
    p.add_argument(
        "--resize",
        type=int,
        help="shorter side before cropping (default: scaled with --crop by the checkpoint's ratio)",
    )
    p.add_argument("--batch-size", type=int, default=128, help="images per batch")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: data.num_workers)")
    p.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    p.add_argument(
        "--confusion", metavar="PNG", help="draw the confusion matrix (up to 100 classes)"
    )
    p.set_defaults(run=run)


@dataclass
class Member:
    """One model of the evaluation with what it was trained on."""

    name: str
    classifier: Classifier
    data: dict[str, Any] | None  # the checkpoint's data config section (None for --weights)
    ema: bool = False  # evaluated with the EMA weights


def split_inputs(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate checkpoint paths from ``data.key=value`` overrides."""
    paths, overrides = [], []
    for item in items:
        if _OVERRIDE.match(item) and not Path(item).exists():
            overrides.append(item)
        else:
            paths.append(item)
    for o in overrides:
        if not o.startswith("data."):
            raise UserError(
                f"override {o!r}: eval takes only data.* overrides (the model comes from the "
                "checkpoint), e.g. data.root=/path/to/data"
            )
    return paths, overrides


def load_members(args: argparse.Namespace, paths: list[str]) -> list[Member]:
    """Read every checkpoint (or the --model/--weights pair) into a :class:`Member`."""
    device = resolve_device(args.device)
    if args.weights or args.model:
        if not (args.weights and args.model):
            raise UserError("--model and --weights go together: a registry name and a state dict")
        if paths:
            raise UserError("give either checkpoints or --model/--weights, not both")
        model, classes, pre = model_from_weights(args.model, args.weights)
        clf = Classifier(model, classes, pre, device=device, precision=args.precision)
        return [Member(f"{args.model} ({Path(args.weights).name})", clf, None)]
    if not paths:
        raise UserError("give a checkpoint to evaluate (or --model NAME --weights FILE)")
    members = []
    for p in paths:
        ckpt = load_checkpoint(p)
        ema = selected_ema(ckpt) if args.ema is None else args.ema
        clf = Classifier.from_checkpoint_dict(
            ckpt, use_ema=ema, device=device, precision=args.precision, path=p
        )
        members.append(Member(p, clf, (ckpt.get("config") or {}).get("data"), ema))
    check_same_dataset(members)
    return members


def check_same_dataset(members: list[Member]) -> None:
    """An ensemble's members must share the class list and the dataset split."""
    first = members[0]
    for m in members[1:]:
        if m.classifier.classes != first.classifier.classes:
            raise UserError(
                f"{m.name} has {m.classifier.num_classes} classes "
                f"({_preview(m.classifier.classes)}) but {first.name} has "
                f"{first.classifier.num_classes} ({_preview(first.classifier.classes)}): "
                "an ensemble needs models of the same classes, in the same order"
            )
        a, b = first.data or {}, m.data or {}
        keys = [f.name for f in fields(DataConfig) if f.name not in NOT_DATASET_KEYS]
        diff = [k for k in keys if a.get(k) != b.get(k)]
        if diff:
            shown = ", ".join(f"data.{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in diff)
            raise UserError(
                f"{first.name} and {m.name} were trained on different datasets or splits "
                f"({shown}); an ensemble is evaluated on one test split, so they must match"
            )


def data_config(base: dict[str, Any] | None, args: argparse.Namespace, overrides: list[str]):
    """The checkpoint's data section (or the defaults) with flags and overrides applied."""
    extra = list(overrides)
    if args.data_name:
        extra.append(f"data.name={args.data_name}")
    if args.data_root:
        extra.append(f"data.root={args.data_root}")
    try:
        merged = merge_overrides({"data": dict(base or {})}, extra)
        return from_dict(merged).data, _explicit(extra)
    except ConfigError as e:
        raise UserError(str(e)) from e


def _explicit(overrides: list[str]) -> set[str]:
    return {o.split("=", 1)[0].split(".", 1)[1] for o in overrides}


def member_preprocess(
    pre: Preprocess, cfg: DataConfig, explicit: set[str], args: argparse.Namespace
) -> Preprocess:
    """The member's stored preprocessing, changed only by what the user asked for."""
    changes = {k: getattr(cfg, k) for k in PREPROCESS_KEYS if k in explicit}
    if changes:
        d = pre.to_dict() | {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
        pre = Preprocess.from_dict(d)
    try:
        return pre.with_crop(args.crop, args.resize)
    except ValueError as e:
        raise UserError(str(e)) from e


class PerMember:
    """Applies each distinct preprocessing once; returns one tensor per member."""

    def __init__(self, transforms: list[Callable[[Any], torch.Tensor]], index: list[int]) -> None:
        self.transforms, self.index = transforms, index

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        outs = [t(image) for t in self.transforms]
        return tuple(outs[i] for i in self.index)


def run(args: argparse.Namespace) -> int:
    paths, overrides = split_inputs(args.inputs)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    members = load_members(args, paths)
    cfg, explicit = data_config(members[0].data, args, overrides)
    try:
        raw = build_raw_splits(cfg)
    except (ValueError, OSError) as e:
        raise UserError(f"cannot read dataset {cfg.name!r}: {e}") from e
    dataset = raw.test if args.split == "test" else raw.val
    if dataset is None or len(dataset) == 0:
        other = "val" if args.split == "test" else "test"
        raise UserError(f"dataset {cfg.name!r} has no {args.split} split; try --split {other}")
    classes = members[0].classifier.classes
    if raw.num_classes != len(classes):
        raise UserError(
            f"the model has {len(classes)} classes but dataset {cfg.name!r} has "
            f"{raw.num_classes}; evaluate on the dataset the model was trained for"
        )
    if raw.classes != classes:
        print(
            f"note: the dataset's class names ({_preview(raw.classes)}) differ from the "
            f"model's ({_preview(classes)}); labels are matched by index",
            file=sys.stderr,
        )
    if args.confusion and len(classes) > MAX_CONFUSION_CLASSES:
        raise UserError(
            f"--confusion draws at most {MAX_CONFUSION_CLASSES} classes and this dataset has "
            f"{len(classes)}; drop --confusion (--json PATH holds per-class accuracy)"
        )

    pres = [member_preprocess(m.classifier.preprocess, cfg, explicit, args) for m in members]
    distinct = list(dict.fromkeys(pres))
    if args.ten_crop and any(p.eval_resize in (None, p.image_size) for p in distinct):
        print(
            "note: --ten-crop with resize == crop: the five crops coincide and only the flip "
            "differs; give --resize larger than the crop for distinct corners",
            file=sys.stderr,
        )
    transforms = [p.transform(ten_crop=args.ten_crop) for p in distinct]
    transform = (
        transforms[0]
        if len(distinct) == 1
        else PerMember(transforms, [distinct.index(p) for p in pres])
    )
    workers = cfg.num_workers if args.workers is None else args.workers
    loader = make_loader(
        TransformedDataset(dataset, transform),
        args.batch_size,
        shuffle=False,
        num_workers=workers,
    )
    mode = "10-crop" if args.ten_crop else "centre crop"
    print(f"dataset: {cfg.name}, {args.split} split: {len(dataset)} images, {len(classes)} classes")
    for m, p in zip(members, pres, strict=True):
        resize = p.eval_resize or p.image_size  # shorter side, as eval_transform does
        print(
            f"{m.name}: resize {resize} -> {mode} {p.image_size}, {p.interpolation}, "
            f"{args.precision}, {'EMA' if m.ema else 'trained'} weights"
        )
    report = evaluate(
        [m.classifier.model for m in members],
        loader,
        len(classes),
        names=[m.name for m in members],
        device=members[0].classifier.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    print(results_table(report))
    print(per_class_table(report, classes))
    if args.json:
        write_json(args.json, report, classes, cfg, args, pres, members)
        print(f"wrote {args.json}")
    if args.confusion:
        draw_confusion(args.confusion, report.final, classes)
        print(f"wrote {args.confusion}")
    return 0


def results_table(report: EvalReport) -> str:
    """One row per member and one for the ensemble."""
    k = report.final.topk
    rows: list[Sequence[object]] = [
        ("model", "top-1 %", f"top-{k} %", "top-1 err %", f"top-{k} err %", "loss", "images")
    ]
    results = [*report.members, *([report.ensemble] if report.ensemble else [])]
    for r in results:
        rows.append(
            (
                r.name,
                f"{r.top1:.2f}",
                f"{r.top5:.2f}",
                f"{r.top1_error:.2f}",
                f"{r.top5_error:.2f}",
                f"{r.loss:.4f}",
                r.num_images,
            )
        )
    return format_table(rows, rule_before_last=report.ensemble is not None)


def per_class_table(report: EvalReport, classes: Sequence[str], limit: int = 30) -> str:
    """Per-class top-1 accuracy: every class up to ``limit``, else the ``10`` weakest."""
    final = report.final
    order = list(range(len(classes)))
    title = "per-class top-1 accuracy %"
    if len(classes) > limit:
        order = sorted(
            (c for c in order if final.class_counts[c] > 0), key=lambda c: final.per_class[c]
        )[:10]
        title += f" (the 10 lowest of {len(classes)} classes; --json PATH has all)"
    results = [*report.members, *([report.ensemble] if report.ensemble else [])]
    header = ["class", "images"] + ([r.name for r in results] if len(results) > 1 else ["top-1 %"])
    rows: list[Sequence[object]] = [header]
    for c in order:
        rows.append([classes[c], final.class_counts[c]] + [_pct(r.per_class[c]) for r in results])
    return title + "\n" + format_table(rows)


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def write_json(
    path: str,
    report: EvalReport,
    classes: Sequence[str],
    cfg: DataConfig,
    args: argparse.Namespace,
    pres: list[Preprocess],
    members: list[Member],
) -> None:
    """Every number of the report, with what was evaluated and how."""
    out = {
        "dataset": {"name": cfg.name, "root": cfg.root, "split": args.split},
        "classes": list(classes),
        "mode": {"ten_crop": args.ten_crop, "precision": args.precision},
        "members": [
            {**r.to_dict(classes), "preprocess": p.to_dict(), "ema": m.ema}
            for r, p, m in zip(report.members, pres, members, strict=True)
        ],
        "ensemble": report.ensemble.to_dict(classes) if report.ensemble else None,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def draw_confusion(path: str, result: EvalResult, classes: Sequence[str]) -> None:
    """A confusion-matrix PNG: rows are true classes, columns predictions, counts annotated."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    k = len(classes)
    conf = result.confusion.numpy()
    side = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(side, side))
    # Colour by the share of each true class, so rare classes are as visible as common ones.
    rowsum = conf.sum(axis=1, keepdims=True).clip(min=1)
    im = ax.imshow(conf / rowsum, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    labels = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
    ax.set_xticks(range(k), labels, rotation=90 if k > 10 else 0, fontsize=8 if k > 20 else 10)
    ax.set_yticks(range(k), labels, fontsize=8 if k > 20 else 10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{result.name}: top-1 {result.top1:.2f}% on {result.num_images} images")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if conf[i, j]:
                    dark = conf[i, j] / rowsum[i, 0] > 0.5
                    ax.text(
                        j, i, int(conf[i, j]), ha="center", va="center",
                        color="white" if dark else "black", fontsize=8,
                    )  # fmt: skip
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _preview(names: Sequence[str], n: int = 3) -> str:
    head = ", ".join(names[:n])
    return head + (", ..." if len(names) > n else "")
