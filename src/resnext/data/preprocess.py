"""The one evaluation-preprocessing record: resize, centre crop, interpolation, mean, std.

Training builds it from the config (:meth:`Preprocess.from_config`) and stores it in every
checkpoint; evaluation, prediction and the Python API read it back
(:meth:`Preprocess.from_dict`), so an image always gets the preprocessing its model was
validated with. The 10-crop test and the larger test crop are derived from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from ..config import DataConfig
from ..errors import ConfigError, WeightsError
from .eval_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    center_crop,
    check_geometry,
    eval_transform,
)


@dataclass(frozen=True)
class Preprocess:
    """What evaluation applies to an image: shorter side to ``eval_resize``, centre crop
    ``image_size``, scale to [0, 1], normalise with ``mean``/``std``."""

    image_size: int  # crop side fed to the network
    eval_resize: int | None = None  # shorter side before the crop; None = resize to the crop
    interpolation: str = "bilinear"  # resize filter, the one used in training
    mean: tuple[float, ...] = IMAGENET_MEAN  # per-channel normalisation, [0, 1] units
    std: tuple[float, ...] = IMAGENET_STD
    # where an odd margin puts the centre crop: round (torchvision) | ceil (fb.resnet.torch)
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        check_geometry(self.image_size, self.eval_resize, self.interpolation, self.crop_offset)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The record's fields; also the ``data.*`` config keys it is built from."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_config(
        cls, cfg: DataConfig, dataset_mean: Sequence[float], dataset_std: Sequence[float]
    ) -> Preprocess:
        """The record of a data config; ``mean``/``std`` None there = the dataset's own."""
        mean = cfg.mean if cfg.mean is not None else dataset_mean
        std = cfg.std if cfg.std is not None else dataset_std
        try:
            return cls(
                image_size=cfg.image_size,
                eval_resize=cfg.eval_resize,
                interpolation=cfg.interpolation,
                mean=tuple(float(v) for v in mean),
                std=tuple(float(v) for v in std),
            )
        except ValueError as e:
            raise ConfigError(f"data.image_size/eval_resize/interpolation/mean/std: {e}") from e

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Read a checkpoint's ``preprocess`` entry (unknown keys are an error)."""
        known = set(cls.field_names())
        extra = sorted(set(d) - known)
        if extra:
            raise WeightsError(f"unknown preprocess keys {extra}; expected {sorted(known)}")
        if "image_size" not in d:
            raise WeightsError("the checkpoint's preprocess entry has no image_size")
        kw = {k: v for k, v in d.items() if v is not None or k == "eval_resize"}
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(v) for v in kw[k])
        try:
            return cls(**kw)
        except (ValueError, TypeError) as e:
            raise WeightsError(f"preprocess entry {dict(d)}: {e}") from e

    @classmethod
    def for_input_size(cls, size: int) -> Preprocess:
        """The usual preprocessing of a model family: ImageNet (224) resize 256 -> crop 224,
        ImageNet mean/std; other sizes resize straight to the crop."""
        if size == 224:
            return cls(image_size=224, eval_resize=256)
        return cls(image_size=size)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint record (plain values: lists, not tuples)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def with_crop(self, crop: int | None = None, resize: int | None = None) -> Preprocess:
        """Another test crop: ``crop`` alone keeps this resize/crop ratio (320 -> resize 366
        for the ImageNet 256/224 ratio, the paper's larger-crop test); ``resize`` alone keeps
        the crop."""
        size = crop or self.image_size
        if resize is None and crop is not None and self.eval_resize is not None:
            resize = round(crop * self.eval_resize / self.image_size)
        elif resize is None and crop is None:
            resize = self.eval_resize
        return replace(self, image_size=size, eval_resize=resize)

    def describe(self) -> str:
        """e.g. ``resize 256 -> crop 224, bicubic``."""
        return (
            f"resize {self.eval_resize or self.image_size} -> crop {self.image_size}, "
            f"{self.interpolation}"
        )

    def transform(self, ten_crop: bool = False) -> Callable[[Any], torch.Tensor]:
        """PIL image or uint8/float CHW tensor -> normalised float ``(C, S, S)``.

        The single crop runs in torch alone (:mod:`resnext.data.eval_transforms`), so predicting
        does not import torchvision. With ``ten_crop``: ``(10, C, S, S)``, the four corner
        crops and the centre crop of the resized image and the same five of its mirror image
        (paper Sec. 4, 10-crop test). The centre crop is exactly the single-crop input.
        """
        single = eval_transform(
            self.image_size,
            self.mean,
            self.std,
            self.eval_resize,
            self.interpolation,
            self.crop_offset,
        )
        return TenCropTransform(single) if ten_crop else single


class TenCropTransform:
    """The paper's 10-crop test (torchvision's ``TenCrop`` order): the image resized as
    :class:`~resnext.data.eval_transforms.EvalTransform` resizes it, its four corner crops and
    centre crop, then the same five of its mirror image; each normalised, stacked into
    ``(10, C, S, S)``. The centre crops sit where the single crop does (``crop_offset``:
    torchvision's or fb.resnet.torch's), so crop 4 is exactly the single-crop input."""

    def __init__(self, single: EvalTransform) -> None:
        self.single = single

    def __call__(self, image: Any) -> torch.Tensor:
        t = self.single
        resized, s = t.resized(image), t.size
        h, w = resized.shape[-2:]
        crops = []
        for img in (resized, resized.flip(-1)):
            corners = [img[..., :s, :s], img[..., :s, w - s :], img[..., h - s :, :s]]
            corners.append(img[..., h - s :, w - s :])
            crops += [*corners, center_crop(img, s, t.crop_offset)]
        return torch.stack([t.normalise(c) for c in crops])
