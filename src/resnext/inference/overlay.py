"""Class activation maps drawn over their images: a PNG figure with a colour bar (``resnext
predict --explain``, the ``resnext eval --explain`` gallery) and a plain blend at the
image's own size (``resnext serve``'s ``?explain=1``, laid over the picture on the page).

The colormap is ``inferno`` (perceptually uniform: equal steps of the map look like equal
steps of brightness, and it reads in grey too); pixels the crop cut away (NaN) are dimmed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .explain import Explanation

CMAP = "inferno"
ALPHA = 0.55  # the map's weight over the image
OUTSIDE = 0.35  # brightness left to pixels outside the crop


def _colormap(name: str = CMAP) -> Any:  # a matplotlib Colormap (imported lazily)
    import matplotlib

    return matplotlib.colormaps[name]


def _finite_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([m[np.isfinite(m)].ravel() for m in maps])
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return lo, hi if hi > lo else lo + 1e-12


def blend(image: np.ndarray, cam: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``image`` with ``cam`` (``(H, W)``, NaN outside) in the colormap
    over it, scaled from the map's minimum to its maximum; outside pixels dimmed."""
    lo, hi = _finite_range([cam])
    inside = np.isfinite(cam)
    norm = np.where(inside, (np.nan_to_num(cam, nan=lo) - lo) / (hi - lo), 0.0)
    colour = _colormap()(norm)[..., :3]
    base = image.astype(np.float64) / 255
    out = np.where(inside[..., None], (1 - alpha) * base + alpha * colour, OUTSIDE * base)
    return (out * 255).round().clip(0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """An ``(H, W, 3)`` uint8 array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def draw_overlays(
    path: str | Path,
    image: np.ndarray,
    panels: Sequence[tuple[np.ndarray, str]],
    title: str = "",
    panel_inches: float = 2.6,
) -> None:
    """A PNG of the image, then each ``(map, caption)`` over it, with one colour bar (the
    maps share its scale: logit units, as the maps are)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    n = 1 + len(panels)
    fig, axes = plt.subplots(
        1, n, figsize=(panel_inches * n + 0.9, panel_inches + 0.6), squeeze=False
    )
    axes = axes[0]
    small = max(image.shape[:2]) < 256  # show small images' pixels, not a blur
    interpolation = "nearest" if small else "antialiased"
    axes[0].imshow(image, interpolation=interpolation)
    axes[0].set_title("image", fontsize=9)
    lo, hi = _finite_range([cam for cam, _ in panels])
    shown = None
    for ax, (cam, caption) in zip(axes[1:], panels, strict=True):
        ax.imshow(image, interpolation=interpolation)
        shown = ax.imshow(
            np.ma.masked_invalid(cam), cmap=_colormap(), vmin=lo, vmax=hi, alpha=ALPHA,
            interpolation=interpolation,
        )  # fmt: skip
        shade = np.zeros((*cam.shape, 4))
        shade[..., 3] = np.where(np.isfinite(cam), 0.0, 1 - OUTSIDE)  # outside the crop
        ax.imshow(shade, interpolation=interpolation)
        ax.set_title(caption, fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if shown is not None:
        bar = fig.colorbar(shown, ax=list(axes), fraction=0.035, pad=0.02)
        bar.solids.set_alpha(1)
        bar.set_label("class activation (logit units)", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_explanation(
    explanation: Explanation, png: str | Path, npy: str | Path, caption: str
) -> None:
    """``resnext predict --explain``'s two files of an image: the overlay PNG of its top-1
    map (``caption`` names the class) and the raw map as ``.npy`` (float32, H x W, NaN
    outside the crop)."""
    e = explanation
    title = "" if e.agrees else "eager fp32 ranks another class first"
    draw_overlays(png, e.image, [(e.maps[0], caption)], title)
    np.save(npy, e.maps[0].astype(np.float32), allow_pickle=False)
