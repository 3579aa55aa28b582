"""An evaluation report as people read it: tables, a JSON file, a confusion-matrix PNG."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from ..table import format_table
from .metrics import EvalReport, EvalResult

MAX_CONFUSION_CLASSES = 100


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


def write_json(path: str | Path, report: EvalReport) -> None:
    """Every number of the report, with what was evaluated and how (``report.info``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report.to_dict(), indent=2) + "\n")


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
