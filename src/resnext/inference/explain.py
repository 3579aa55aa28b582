"""Class activation maps (Zhou et al., CVPR 2016): where the network looked, exactly.

A ResNeXt ends in global average pooling and one linear layer, so the logit of class ``c``
is the spatial mean of the map ``M_c = sum_k w_ck F_k`` plus the bias ``b_c``, where ``F`` is
the last stage's feature map (``forward_features``) and ``w``, ``b`` the ``fc`` layer. ``M_c``
is the class activation map: no gradients, no approximation.

The maps come from the eager PyTorch model in fp32 (autocast off), whatever back-end and
precision produced the prediction: the back-end's logits choose the classes (what the user
is shown), the eager fp32 model gives their maps, and :attr:`Explanation.agrees` says
whether the eager model ranks the same classes first (a bf16 or exported model can swap a
near-tie). A model whose head is anything else is refused (:func:`cam_head`).

Geometry: the network sees a centre crop of the image resized (:mod:`resnext.data.
eval_transforms`). :func:`to_image` undoes both: each pixel of the image (as the model got
it, upright after EXIF) reads the map bilinearly at the point of the crop it was resized
to; pixels the crop cut away are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.eval_transforms import crop_origin, shorter_side_size
from ..data.preprocess import Preprocess
from ..errors import WeightsError
from ..models import ResNeXt


def cam_head(model: nn.Module) -> nn.Linear:
    """The linear layer after global average pooling, or a one-line
    :class:`~resnext.errors.WeightsError` where the head is anything else (then a map
    would not be exact)."""
    from ..export.onnx_runtime import OnnxModel

    name = type(model).__name__
    if isinstance(model, OnnxModel):
        raise WeightsError(
            "class activation maps need the PyTorch model and an exported .onnx file holds "
            "none; explain the checkpoint or model file it was exported from"
        )
    exact = (
        isinstance(model, ResNeXt)
        and type(model).forward is ResNeXt.forward
        and type(model).forward_head is ResNeXt.forward_head
        and isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d)
        and model.avgpool.output_size in (1, (1, 1))
        and isinstance(getattr(model, "fc", None), nn.Linear)
    )
    if not exact:
        raise WeightsError(
            f"class activation maps need a head of global average pooling and one linear "
            f"layer (a ResNeXt's), and this {name} has another, so its maps would not be exact"
        )
    return model.fc


@torch.inference_mode()
def class_maps(
    model: nn.Module, batch: torch.Tensor, class_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(maps, logits)``: the maps ``(N, k, h, w)`` of classes ``class_ids`` ``(N, k)`` on
    the feature grid, and the model's logits ``(N, K)`` from the same features, in the
    model's own dtype with autocast off. ``maps[n, j].mean() + fc.bias[class_ids[n, j]]``
    is ``logits[n, class_ids[n, j]]``."""
    fc = cam_head(model)
    with torch.autocast(batch.device.type, enabled=False):
        feats = model.forward_features(batch)
        logits = model.forward_head(feats)
        w = fc.weight[class_ids.to(fc.weight.device)]  # (N, k, C)
        maps = torch.einsum("nkc,nchw->nkhw", w, feats)
    return maps, logits


@dataclass(frozen=True)
class CropGeometry:
    """Where the network's crop lies in an image: the image is ``height`` x ``width``,
    resized to ``resized`` (h, w), and the crop is ``size`` square at ``(top, left)`` of it."""

    height: int
    width: int
    resized: tuple[int, int]
    top: int
    left: int
    size: int

    @classmethod
    def of(cls, height: int, width: int, preprocess: Preprocess) -> CropGeometry:
        """The geometry :meth:`Preprocess.transform` gives an image of this size."""
        resize = preprocess.eval_resize or preprocess.image_size
        rh, rw = shorter_side_size(height, width, resize)
        top, left = crop_origin(rh, rw, preprocess.image_size, preprocess.crop_offset)
        return cls(height, width, (rh, rw), top, left, preprocess.image_size)


def _axis_weights(
    n_out: int, n_in: int, resized: int, start: int, size: int, cells: int
) -> tuple[np.ndarray, np.ndarray]:
    """The bilinear weights ``(n_out, cells)`` reading a map of ``cells`` along one axis at
    the centre of each of ``n_out`` image pixels, and which pixels fall inside the crop.

    Pixel ``i`` covers ``[i, i + 1)``; its centre lies at ``(i + 0.5) * resized / n_in`` in
    the resized image (align_corners=False, as the resize computes it), ``start`` less in the
    crop, and at ``crop * cells / size - 0.5`` in cell-centre units; reads beyond the first
    and last cell centres take the edge cell (grid_sample's border padding)."""
    centre = (np.arange(n_out, dtype=np.float64) + 0.5) * resized / n_in - start
    inside = (centre >= 0) & (centre <= size)
    p = np.clip(centre * cells / size - 0.5, 0, cells - 1)
    i0 = np.floor(p).astype(np.int64)
    i1 = np.minimum(i0 + 1, cells - 1)
    frac = p - i0
    weights = np.zeros((n_out, cells), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, i0), 1 - frac)
    np.add.at(weights, (rows, i1), frac)
    return weights, inside


def to_image(grid: torch.Tensor, geometry: CropGeometry) -> np.ndarray:
    """Maps ``(k, h, w)`` on the crop's feature grid -> ``(k, H, W)`` float32 at the
    image's own size and orientation, NaN where the crop cut the image away."""
    g = geometry
    maps = grid.detach().to("cpu", torch.float64).numpy()
    rows, in_rows = _axis_weights(g.height, g.height, g.resized[0], g.top, g.size, maps.shape[1])
    cols, in_cols = _axis_weights(g.width, g.width, g.resized[1], g.left, g.size, maps.shape[2])
    out = np.einsum("yh,khw,xw->kyx", rows, maps, cols).astype(np.float32)
    out[:, ~(in_rows[:, None] & in_cols[None, :])] = np.nan
    return out


@dataclass
class Explanation:
    """The class activation maps of one image.

    ``maps[j]`` is class ``classes[j]``'s map at the image's own size (NaN outside the crop
    the network saw); ``grid[j]`` the same on the feature grid, where
    ``grid[j].mean() + bias[j] == logits[j]`` (the eager fp32 logit).
    """

    classes: list[str]  # the explained classes: the back-end's top-k, most likely first
    probabilities: list[float]  # the back-end's probabilities of them
    maps: np.ndarray  # (k, H, W) float32, NaN outside the crop
    grid: torch.Tensor  # (k, h, w) on the feature grid, the model's dtype
    bias: list[float]  # fc.bias of each class
    logits: list[float]  # the eager fp32 logit of each class
    eager_classes: list[str]  # the eager fp32 model's own top-k
    image: np.ndarray  # (H, W, 3) uint8: the picture the maps lie on (upright RGB)

    @property
    def agrees(self) -> bool:
        """Whether the eager fp32 model ranks the same top-k classes as the back-end."""
        return self.eager_classes == self.classes

    @property
    def inside(self) -> np.ndarray:
        """``(H, W)`` bool: the pixels inside the crop the network saw."""
        return ~np.isnan(self.maps[0])


def picture_array(image: torch.Tensor) -> np.ndarray:
    """A ``(3, H, W)`` uint8 or float (0..1) image tensor -> ``(H, W, 3)`` uint8."""
    if image.is_floating_point():
        image = (image * 255).round().clamp(0, 255).to(torch.uint8)
    return image.permute(1, 2, 0).contiguous().numpy()


def explain_batch(
    model: nn.Module,
    batch: torch.Tensor,
    probs: torch.Tensor,
    pictures: Sequence[torch.Tensor],
    classes: Sequence[str],
    preprocess: Preprocess,
    topk: int,
) -> list[Explanation]:
    """Explanations of a preprocessed ``batch`` whose back-end probabilities are ``probs``:
    the back-end's top-``topk`` classes, their maps from ``model`` (the eager model, in the
    dtype of its parameters) at the size of each of ``pictures`` (``(3, H, W)`` tensors,
    the images before preprocessing)."""
    if topk < 1:
        raise ValueError(f"topk must be at least 1, got {topk}")
    top_i = probs.topk(min(topk, probs.shape[1]), dim=1).indices
    return explain_classes(model, batch, top_i, probs, pictures, classes, preprocess)


def explain_classes(
    model: nn.Module,
    batch: torch.Tensor,
    class_ids: torch.Tensor,
    probs: torch.Tensor,
    pictures: Sequence[torch.Tensor],
    classes: Sequence[str],
    preprocess: Preprocess,
) -> list[Explanation]:
    """As :func:`explain_batch`, for the given classes ``(N, k)`` of each image (e.g. its
    true and its predicted class); ``eager_classes`` is the eager model's top-k."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    maps, logits = class_maps(model, batch.to(device, dtype), class_ids)
    eager_top = logits.float().topk(class_ids.shape[1], dim=1).indices.cpu()
    bias = cam_head(model).bias.detach().cpu().double()
    out = []
    for n, picture in enumerate(pictures):
        geometry = CropGeometry.of(picture.shape[-2], picture.shape[-1], preprocess)
        ids = class_ids[n].tolist()
        out.append(
            Explanation(
                classes=[classes[i] for i in ids],
                probabilities=[float(probs[n, i]) for i in ids],
                maps=to_image(maps[n], geometry),
                grid=maps[n].cpu(),
                bias=[float(bias[i]) for i in ids],
                logits=[float(logits[n, i]) for i in ids],
                eager_classes=[classes[i] for i in eager_top[n].tolist()],
                image=picture_array(picture),
            )
        )
    return out
