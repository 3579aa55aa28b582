"""``resnext eval --explain DIR``: a gallery of where the model looked when it was most
sure and wrong, and least sure and right.

One HTML page (``index.html``) with a PNG per image: the image, the class activation map of
its true class and that of its predicted class (for a right answer, the runner-up's), on one
colour scale. The confidences are the evaluation's (10-crop or not); the maps are those of
the eager fp32 model on the single centre crop (:mod:`resnext.inference.explain`).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.eval_transforms import to_image_tensor
from ..data.preprocess import Preprocess
from .classes import with_id
from .classifier import Classifier
from .explain import explain_classes
from .overlay import draw_overlays


@dataclass
class Pick:
    """One image of the gallery: its index in the split, true and predicted class."""

    kind: str  # "mistake" (most confident wrong answers) | "unsure" (least confident right)
    index: int
    label: int
    predicted: int
    other: int  # the second map's class: the prediction, or for a right answer the runner-up
    confidence: float  # the probability of the predicted class


def pick(probs: torch.Tensor, labels: torch.Tensor, count: int) -> list[Pick]:
    """The ``count`` most confident mistakes, then the ``count`` least confident right
    answers (confidence: the predicted class's probability); ties by index."""
    top2 = probs.topk(min(2, probs.shape[1]), dim=1)
    pred = top2.indices[:, 0]
    conf = top2.values[:, 0]
    wrong = (pred != labels).nonzero().flatten().tolist()
    right = (pred == labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: (-float(conf[i]), i))
    right.sort(key=lambda i: (float(conf[i]), i))
    out = []
    for kind, chosen in (("mistake", wrong[:count]), ("unsure", right[:count])):
        for i in chosen:
            p = int(pred[i])
            runner_up = int(top2.indices[i, -1])
            other = p if kind == "mistake" else runner_up
            out.append(Pick(kind, i, int(labels[i]), p, other, float(conf[i])))
    return out


def write_gallery(
    folder: str | Path,
    classifier: Classifier,
    preprocess: Preprocess,
    dataset: Any,
    probs: torch.Tensor,
    labels: torch.Tensor,
    count: int,
    notes: Sequence[str] = (),
) -> Path:
    """Write the gallery of ``dataset`` (raw ``(image, label)`` samples, in the order of
    ``probs``/``labels``) to ``folder``; returns the page's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    picks = pick(probs, labels, count)
    transform = preprocess.transform()
    clf = classifier
    cards: dict[str, list[str]] = {"mistake": [], "unsure": []}
    records = []
    for n, p in enumerate(picks, start=1):
        image, _ = dataset[p.index]
        batch = transform(image)[None]
        ids = torch.tensor([[p.label, p.other]])
        (e,) = explain_classes(
            clf.model, batch, ids, probs[p.index][None], [to_image_tensor(image)],
            clf.classes, preprocess,
        )  # fmt: skip
        true_name, other_name = (with_id(clf.name_of(c), c) for c in e.classes)
        second = "predicted" if p.kind == "mistake" else "runner-up"
        panels = [
            (e.maps[0], f"true: {true_name} ({100 * e.probabilities[0]:.1f}%)"),
            (e.maps[1], f"{second}: {other_name} ({100 * e.probabilities[1]:.1f}%)"),
        ]
        eager_first = e.eager_classes[0]
        disagree = eager_first != clf.classes[p.predicted]
        title = f"#{p.index}: predicted {with_id(clf.name_of(clf.classes[p.predicted]), clf.classes[p.predicted])} ({100 * p.confidence:.1f}%)"  # noqa: E501
        name = f"{p.kind}-{n:02d}.png"
        draw_overlays(folder / name, e.image, panels, title)
        caption = title + (
            f"; the eager fp32 centre crop ranks {eager_first} first" if disagree else ""
        )
        cards[p.kind].append(
            f'<figure><img src="{name}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
        records.append(
            {
                "file": name, "kind": p.kind, "index": p.index,
                "true": e.classes[0], "predicted": clf.classes[p.predicted],
                "second_map": e.classes[1], "confidence": p.confidence,
                "eager_top1": eager_first,
            }
        )  # fmt: skip
    page = folder / "index.html"
    page.write_text(_page(cards, count, len(labels), notes))
    (folder / "gallery.json").write_text(json.dumps(records, indent=2) + "\n")
    return page


def _page(cards: dict[str, list[str]], count: int, total: int, notes: Sequence[str]) -> str:
    def section(title: str, items: list[str], none: str) -> str:
        body = "\n".join(items) if items else f"<p>{none}</p>"
        return f"<h2>{title}</h2>\n<div class=grid>\n{body}\n</div>"

    notes_html = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>resnext eval: where the model looked</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 24px; color: #1d2327; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 16px; }}
figure {{ margin: 0; border: 1px solid #d7dde1; border-radius: 8px; padding: 8px; }}
img {{ max-width: 100%; }} figcaption {{ color: #5f6b73; font-size: 13px; }}
.note {{ color: #5f6b73; }}
</style></head><body>
<h1>Where the model looked</h1>
<p>Of {total} images: the {count} most confident mistakes and the {count} least confident right
answers. Each shows the image, the class activation map of its true class, and that of the
predicted class (for a right answer, the runner-up), on one colour scale (logit units). Maps:
the eager fp32 model on the centre crop; the margin the crop cut away is shaded.</p>
{notes_html}
{section("Most confident mistakes", cards["mistake"], "No mistakes.")}
{section("Least confident right answers", cards["unsure"], "No right answers.")}
</body></html>
"""
