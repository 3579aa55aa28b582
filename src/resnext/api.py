"""The Python API: ``resnext.Classifier`` turns a checkpoint or weights file into predictions.

``resnext predict`` and ``resnext eval`` use the same :class:`Preprocess` and image loading,
so a picture gets exactly the preprocessing the model was evaluated with.

Example::

    clf = resnext.Classifier.from_checkpoint("runs/demo/best.pt")
    clf.predict(["seven.png"], topk=3)  # [[("7", 0.98), ("1", 0.01), ("9", 0.003)]]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from .data.images import BadImageError, load_image
from .data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    ToRGBImage,
    eval_transform,
)
from .engine.checkpoint import load_checkpoint, model_from_checkpoint
from .engine.distributed import resolve_device as engine_resolve_device
from .models import ResNeXt, create_model, default_input_size, parse_name
from .weights import WeightsError, extract_state_dict, load_checked, read_file

ImageInput = str | Path | Image.Image | torch.Tensor

# An image file that cannot be read or is not an image; the message names the file.
ImageError = BadImageError


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names (WordNet synset lemmas), in class-index order.

    Index 0 is "tench, Tinca tinca", 999 "toilet tissue, toilet paper, bathroom tissue".
    The list was taken from timm's ``imagenet_synsets.txt`` + ``imagenet_synset_to_lemma.txt``
    (synsets sorted: the standard ILSVRC-2012 label order) and checked against torchvision's
    short category names: the first lemma equals them at 998 indices; at the other two
    torchvision disambiguates ("crane bird" at 134, the machine "crane" being 517;
    "maillot tank suit" at 639).
    """
    return list(_imagenet_classes())


@cache
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("resnext").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, not 1000")
    return names


def default_class_names(num_classes: int) -> list[str]:
    """Names for a model that stores none: ImageNet-1k's for 1,000 classes, else the indices."""
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


@dataclass(frozen=True)
class Preprocess:
    """The evaluation preprocessing a checkpoint stores: resize, centre crop, normalise."""

    image_size: int  # crop side fed to the network
    eval_resize: int | None = None  # shorter side before the crop; None = resize to the crop
    interpolation: str = "bilinear"  # resize filter, the one used in training
    mean: tuple[float, ...] = IMAGENET_MEAN  # per-channel normalisation, [0, 1] units
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise ValueError(f"image_size must be at least 1, got {self.image_size}")
        if self.eval_resize is not None and self.eval_resize < self.image_size:
            raise ValueError(
                f"resize {self.eval_resize} is smaller than the crop {self.image_size}; "
                "the shorter side must be at least the crop side"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                f"got {self.interpolation!r}"
            )
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        """Read a checkpoint's ``preprocess`` entry (unknown keys are an error)."""
        known = {"image_size", "eval_resize", "interpolation", "mean", "std"}
        extra = sorted(set(d) - known)
        if extra:
            raise WeightsError(f"unknown preprocess keys {extra}; expected {sorted(known)}")
        if "image_size" not in d:
            raise WeightsError("the checkpoint's preprocess entry has no image_size")
        kw = dict(d)
        for k in ("mean", "std"):
            if kw.get(k) is not None:
                kw[k] = tuple(float(v) for v in kw[k])
            else:
                kw.pop(k, None)
        if kw.get("interpolation") is None:
            kw.pop("interpolation", None)
        try:
            return cls(**kw)
        except (ValueError, TypeError) as e:
            raise WeightsError(f"preprocess entry {dict(d)}: {e}") from e

    @classmethod
    def for_model(cls, name: str) -> Preprocess:
        """The usual preprocessing of a registry model's family (ImageNet: 256 -> 224)."""
        size = default_input_size(name)
        if size == 224:
            return cls(image_size=224, eval_resize=256)
        return cls(image_size=size)

    def to_dict(self) -> dict[str, Any]:
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

    def transform(self, ten_crop: bool = False) -> Callable[[Any], torch.Tensor]:
        """PIL image or uint8/float CHW tensor -> normalised float ``(C, S, S)``.

        With ``ten_crop``: ``(10, C, S, S)``, the four corner crops and the centre crop of
        the resized image and the same five of its mirror image (paper Sec. 4, 10-crop test).
        The centre crop is exactly the single-crop input.
        """
        if not ten_crop:
            return eval_transform(
                self.image_size, self.mean, self.std, self.eval_resize, self.interpolation
            )
        return TenCropTransform(self)


class TenCropTransform:
    """Resize like :func:`~resnext.data.transforms.eval_transform`, then torchvision's
    ``TenCrop``; each crop normalised, stacked into ``(10, C, S, S)``."""

    def __init__(self, pre: Preprocess) -> None:
        interp = INTERPOLATIONS[pre.interpolation]
        s = pre.image_size
        # Shorter side to the resize (default: the crop), as eval_transform does.
        resize = v2.Resize(pre.eval_resize or s, interp, antialias=True)
        self.crops = v2.Compose([ToRGBImage(), resize, v2.TenCrop(s)])
        self.finish = v2.Compose(
            [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
        )

    def __call__(self, image: Any) -> torch.Tensor:
        return torch.stack([self.finish(c).as_subclass(torch.Tensor) for c in self.crops(image)])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> CUDA if available, else CPU; the trainer's rule and checks."""
    return engine_resolve_device(device, what="device")


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast (or a no-op for fp32) on the model's device."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Classifier:
    """A model with its class names and preprocessing, ready to classify images.

    Build one with :meth:`from_checkpoint` (a ``resnext train`` checkpoint) or
    :meth:`from_weights` (a registry name and a plain state dict, e.g. torchvision's).
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        preprocess: Preprocess,
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.preprocess = preprocess
        self.precision = precision
        self._transform = preprocess.transform()
        num_out = _num_outputs(model)
        if num_out is not None and num_out != len(self.classes):
            raise WeightsError(
                f"the model has {num_out} outputs but {len(self.classes)} class names were given"
            )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        use_ema: bool | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> Classifier:
        """Load a ``resnext train`` checkpoint: its weights, classes and preprocessing.

        ``use_ema``: True = the EMA weights, False = the trained weights, None = the ones the
        training run selected and tested (``metrics.selected``; the trained weights if absent).
        """
        return cls.from_checkpoint_dict(
            load_checkpoint(path), use_ema=use_ema, device=device, precision=precision, path=path
        )

    @classmethod
    def from_checkpoint_dict(
        cls,
        ckpt: Mapping[str, Any],
        use_ema: bool | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        path: str | Path = "the checkpoint",
    ) -> Classifier:
        """As :meth:`from_checkpoint`, for a checkpoint already read with ``load_checkpoint``."""
        if use_ema is None:
            use_ema = selected_ema(ckpt)
        model = model_from_checkpoint(dict(ckpt), use_ema=use_ema)
        num_classes = model.arch.num_classes
        classes = ckpt.get("classes") or default_class_names(num_classes)
        if ckpt.get("preprocess") is None:
            raise WeightsError(
                f"{str(path)!r} stores no preprocess entry, so its evaluation preprocessing "
                "is unknown; load it with Classifier.from_weights and give preprocess="
            )
        pre = Preprocess.from_dict(ckpt["preprocess"])
        return cls(model, classes, pre, device=device, precision=precision)

    @classmethod
    def from_weights(
        cls,
        name: str,
        weights_path: str | Path,
        classes: Sequence[str] | None = None,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
    ) -> Classifier:
        """A registry model (e.g. ``resnext50_32x4d``) with a plain state dict loaded, every key
        and shape checked. The class count is read from the file's ``fc.weight``; without
        ``classes``, 1,000 outputs get the ImageNet-1k names. ``preprocess`` defaults to the
        family's usual one (ImageNet: resize 256, crop 224, ImageNet mean/std); a dict
        overrides single fields of that default."""
        return cls(
            *model_from_weights(name, weights_path, classes, preprocess),
            device=device,
            precision=precision,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_tensor(self, image: ImageInput) -> torch.Tensor:
        """One input -> the preprocessed float ``(C, S, S)`` tensor the model sees.

        Paths are opened upright (EXIF) as RGB by the data package's ``load_image``; PIL
        images of any mode are converted to RGB by the eval transform (alpha over white,
        16-bit scaled); tensors are uint8 ``(C, H, W)`` (0..255) or float (0..1), one or
        three channels.
        """
        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, Image.Image):
            pass
        elif isinstance(image, torch.Tensor):
            if image.ndim != 3 or image.shape[0] not in (1, 3):
                raise ValueError(
                    f"an image tensor must be (C, H, W) with 1 or 3 channels, got shape "
                    f"{tuple(image.shape)}; give a batch as a list or a 4-D tensor"
                )
            if image.is_floating_point() and (image.min() < 0 or image.max() > 1):
                raise ValueError(
                    "a float image tensor must hold values in [0, 1] (un-normalised); "
                    "use uint8 for 0..255"
                )
        else:
            raise TypeError(
                f"cannot classify a {type(image).__name__}: give a path, a PIL image or a tensor"
            )
        return self._transform(image).as_subclass(torch.Tensor)

    @torch.inference_mode()
    def predict_proba(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64
    ) -> torch.Tensor:
        """Softmax probabilities ``(N, num_classes)`` for the images, on the CPU."""
        items = _as_list(images)
        out = []
        for i in range(0, len(items), batch_size):
            batch = torch.stack([self.to_tensor(x) for x in items[i : i + batch_size]])
            out.append(self.probabilities(batch))
        if not out:
            return torch.empty(0, self.num_classes)
        return torch.cat(out)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax of the model on an already preprocessed ``(N, C, S, S)`` batch (CPU)."""
        with autocast(self.device, self.precision):
            logits = self.model(batch.to(self.device))
        return logits.float().softmax(dim=1).cpu()

    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """For each image, its ``topk`` (class name, probability) pairs, most likely first."""
        return self.topk(self.predict_proba(images, batch_size=batch_size), topk)

    def topk(self, probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """(class name, probability) pairs of the ``k`` largest probabilities of each row."""
        if k < 1:
            raise ValueError(f"topk must be at least 1, got {k}")
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)
        ]


def selected_ema(ckpt: Mapping[str, Any]) -> bool:
    """Whether the training run selected (and tested) the EMA weights of this checkpoint."""
    metrics = ckpt.get("metrics") or {}
    return metrics.get("selected") == "ema" and ckpt.get("ema") is not None


def model_from_weights(
    name: str,
    weights_path: str | Path,
    classes: Sequence[str] | None = None,
    preprocess: Preprocess | Mapping[str, Any] | None = None,
) -> tuple[ResNeXt, list[str], Preprocess]:
    """(model, classes, preprocess) for a registry name and a plain state dict file."""
    try:
        parse_name(name)
    except ValueError as e:
        raise WeightsError(str(e)) from e
    state = extract_state_dict(read_file(weights_path))
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise WeightsError(
            f"{str(weights_path)!r} has no 2-D fc.weight, so the class count is unknown; "
            "is it a ResNet/ResNeXt state dict with torchvision's parameter names?"
        )
    num_classes = int(fc.shape[0])
    model = create_model(name, num_classes=num_classes)
    load_checked(model, state)
    if classes is None:
        classes = default_class_names(num_classes)
    classes = list(classes)
    if len(classes) != num_classes:
        raise WeightsError(
            f"{len(classes)} class names given but {str(weights_path)!r} has {num_classes} outputs"
        )
    base = Preprocess.for_model(name)
    if preprocess is None:
        pre = base
    elif isinstance(preprocess, Preprocess):
        pre = preprocess
    else:
        pre = Preprocess.from_dict({**base.to_dict(), **dict(preprocess)})
    return model, classes, pre


def _num_outputs(model: nn.Module) -> int | None:
    arch = getattr(model, "arch", None)
    return getattr(arch, "num_classes", None)


def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.ndim == 4 else [images]
    return list(images)
