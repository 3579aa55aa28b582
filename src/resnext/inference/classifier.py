"""``resnext.Classifier``: a checkpoint or weights file turned into predictions.

``resnext predict``, ``resnext eval`` and this class use the same
:class:`~resnext.data.Preprocess` record and image loading, so a picture gets exactly the
preprocessing the model was evaluated with.

Where and how it runs (device, precision, back-end) is one :class:`~resnext.RuntimeOptions`.

Example::

    clf = resnext.Classifier.from_checkpoint("runs/demo/best.pt")
    on_cpu = resnext.RuntimeOptions(device="cpu", backend="eager")
    clf = resnext.Classifier.from_checkpoint("runs/demo/best.pt", runtime=on_cpu)
    clf.predict(["seven.png"], topk=3)  # [[("7", 0.98), ("1", 0.01), ("9", 0.003)]]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..checkpoint import (
    add_num_batches_tracked,
    built_to_load,
    extract_state_dict,
    load_checked,
    load_checkpoint,
    model_from_checkpoint,
    read_file,
    selected_ema,
)
from ..data.eval_transforms import to_image_tensor
from ..data.images import BadImageError, load_image
from ..data.preprocess import Preprocess
from ..errors import WeightsError
from ..models import ResNeXt, create_model, default_input_size, parse_name
from ..runtime import RuntimeOptions, autocast, check_precision
from .backends import fast_path_missing, make_backend
from .classes import default_class_names, readable_names
from .explain import Explanation, cam_head, explain_batch

ImageInput = str | Path | Image.Image | torch.Tensor

# An image file that cannot be read or is not an image; the message names the file.
ImageError = BadImageError


@dataclass
class FilePrediction:
    """One file's result: its top-k (class name, probability) pairs, or why it failed."""

    path: str
    topk: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


class Classifier:
    """A model with its class names and preprocessing, ready to classify images.

    Build one with :meth:`from_checkpoint` (a ``resnext train`` checkpoint) or
    :meth:`from_weights` (a registry name and a plain state dict, e.g. torchvision's).
    ``runtime`` says where and how it runs (default: :class:`~resnext.RuntimeOptions`'s).
    """

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        preprocess: Preprocess,
        runtime: RuntimeOptions | None = None,
    ) -> None:
        self.runtime = runtime = runtime or RuntimeOptions()
        precision = runtime.precision
        self.device = runtime.resolve_device()
        check_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        # What people read for each class: WordNet ids (ImageNet-style folders) as their
        # names; predictions keep the ids (self.classes), as checkpoints do.
        self.names = readable_names(self.classes)
        self._name_of = dict(zip(self.classes, self.names, strict=True))
        self.preprocess = preprocess
        self.precision = precision
        # What runs a batch: the model itself (eager), or its cached ONNX export (onnxruntime).
        self.runner, self.backend = make_backend(
            self.model,
            runtime.backend,
            classes=self.classes,
            preprocess=preprocess,
            device=self.device,
            precision=precision,
        )
        # Why auto did not get the onnxruntime path where it would have (a module missing).
        fast_path_asked = runtime.backend == "auto" and self.device.type == "cpu"
        self.backend_note: str | None = None
        if fast_path_asked and precision == "fp32" and self.backend == "eager":
            self.backend_note = fast_path_missing()
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
        runtime: RuntimeOptions | None = None,
    ) -> Classifier:
        """Load a ``resnext train`` checkpoint, a model file (``.safetensors`` with its JSON,
        from ``resnext convert``/``export``) or an exported ``.onnx`` file (run in
        onnxruntime): its weights, classes and preprocessing.

        ``use_ema``: True = the EMA weights, False = the trained weights, None = the ones the
        training run selected and tested (``metrics.selected``; the trained weights if absent).
        """
        if Path(path).suffix == ".onnx":
            # onnxruntime is needed for .onnx files only
            from ..export.onnx_runtime import load_onnx

            if use_ema:
                raise WeightsError(
                    f"{str(path)!r} is an exported model: it holds one set of weights"
                )
            return cls(*load_onnx(path), (runtime or RuntimeOptions()).for_onnx())
        return cls.from_checkpoint_dict(load_checkpoint(path), use_ema, runtime, path)

    @classmethod
    def from_checkpoint_dict(
        cls,
        ckpt: Mapping[str, Any],
        use_ema: bool | None = None,
        runtime: RuntimeOptions | None = None,
        path: str | Path = "the checkpoint",
    ) -> Classifier:
        """As :meth:`from_checkpoint`, for a checkpoint already read with ``load_checkpoint``."""
        if use_ema is None:
            use_ema = selected_ema(dict(ckpt))
        model = model_from_checkpoint(dict(ckpt), use_ema=use_ema)
        num_classes = model.arch.num_classes
        classes = ckpt.get("classes") or default_class_names(num_classes)
        if ckpt.get("preprocess") is None:
            raise WeightsError(
                f"{str(path)!r} stores no preprocess entry, so its evaluation preprocessing "
                "is unknown; load it with Classifier.from_weights and give preprocess="
            )
        pre = Preprocess.from_dict(ckpt["preprocess"])
        return cls(model, classes, pre, runtime)

    @classmethod
    def from_weights(
        cls,
        name: str,
        weights_path: str | Path,
        classes: Sequence[str] | None = None,
        preprocess: Preprocess | Mapping[str, Any] | None = None,
        runtime: RuntimeOptions | None = None,
    ) -> Classifier:
        """A registry model (e.g. ``resnext50_32x4d``) with a plain state dict loaded, every key
        and shape checked. The class count is read from the file's ``fc.weight``; without
        ``classes``, 1,000 outputs get the ImageNet-1k names. ``preprocess`` defaults to the
        family's usual one (ImageNet: resize 256, crop 224, ImageNet mean/std); a dict
        overrides single fields of that default."""
        return cls(*model_from_weights(name, weights_path, classes, preprocess), runtime)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def backend_line(self) -> str:
        """The back-end that runs, as the commands print it: ``eager back-end``, with what
        to install where ``auto`` could not take the onnxruntime path."""
        note = f" ({self.backend_note})" if self.backend_note else ""
        return f"{self.backend} back-end{note}"

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
            logits = self.runner(batch.to(self.device))
        return logits.float().softmax(dim=1).cpu()

    def explain(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 1, batch_size: int = 16
    ) -> list[Explanation]:
        """Class activation maps of each image's ``topk`` classes (the back-end's), at the
        image's own size and orientation, NaN where the eval crop cut it away; computed by
        the eager model in fp32 beside the back-end's logits
        (:mod:`resnext.inference.explain`). A model whose head is not global average
        pooling and one linear layer is refused (:class:`~resnext.errors.WeightsError`)."""
        cam_head(self.model)  # refuse before any work
        items = _as_list(images)
        out: list[Explanation] = []
        for i in range(0, len(items), batch_size):
            chunk = [
                load_image(x) if isinstance(x, (str, Path)) else x
                for x in items[i : i + batch_size]
            ]
            batch = torch.stack([self.to_tensor(x) for x in chunk])
            pictures = [to_image_tensor(x) for x in chunk]
            out += explain_batch(
                self.model, batch, self.probabilities(batch), pictures, self.classes,
                self.preprocess, topk,
            )  # fmt: skip
        return out

    def predict(
        self, images: ImageInput | Sequence[ImageInput], topk: int = 5, batch_size: int = 64
    ) -> list[list[tuple[str, float]]]:
        """For each image, its ``topk`` (class name, probability) pairs, most likely first."""
        return self.topk(self.predict_proba(images, batch_size=batch_size), topk)

    def predict_files(
        self, paths: Sequence[str | Path], topk: int = 5, batch_size: int = 64
    ) -> Iterator[FilePrediction]:
        """Classify image files in batches, in the order given; a file that cannot be read
        yields a :class:`FilePrediction` with its ``error`` instead of stopping the rest.
        The next batch is decoded in a thread while the model runs this one."""
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
        if not batches:
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="resnext-read") as pool:
            pending = pool.submit(self._read_files, batches[0])
            for i in range(len(batches)):
                results, tensors, read = pending.result()
                if i + 1 < len(batches):
                    pending = pool.submit(self._read_files, batches[i + 1])
                if tensors:
                    top = self.topk(self.probabilities(torch.stack(tensors)), topk)
                    for result, preds in zip(read, top, strict=True):
                        result.topk = preds
                yield from results

    def _read_files(
        self, paths: Sequence[str | Path]
    ) -> tuple[list[FilePrediction], list[torch.Tensor], list[FilePrediction]]:
        """Every file's result record, the tensors of those that could be read, and their
        records (in the same order)."""
        results, tensors, read = [], [], []
        for path in paths:
            result = FilePrediction(str(path))
            try:
                tensors.append(self.to_tensor(load_image(path)))
                read.append(result)
            except BadImageError as e:
                # e.reason, not the message: its hint about data.on_bad_file is for datasets.
                result.error = f"cannot read image: {e.reason}"
            results.append(result)
        return results, tensors, read

    def name_of(self, class_id: str) -> str:
        """The readable name of a class of :attr:`classes` (see :attr:`names`)."""
        return self._name_of.get(class_id, class_id)

    def topk(self, probs: torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """(class, probability) pairs of the ``k`` largest probabilities of each row; the
        classes are the model's own (:attr:`classes`: WordNet ids where it was trained on
        ImageNet-style folders), :meth:`name_of` gives what to show people."""
        if k < 1:
            raise ValueError(f"topk must be at least 1, got {k}")
        values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
        return [
            [(self.classes[i], float(p)) for p, i in zip(vs, ix, strict=True)]
            for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)
        ]


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
    add_num_batches_tracked(state)  # files saved before PyTorch 0.4.1 have none
    fc = state.get("fc.weight")
    if fc is None or fc.ndim != 2:
        raise WeightsError(
            f"{str(weights_path)!r} has no 2-D fc.weight, so the class count is unknown; "
            "is it a ResNet/ResNeXt state dict with torchvision's parameter names?"
        )
    num_classes = int(fc.shape[0])
    # tensors left uninitialised: the checked load fills every one
    model = built_to_load(lambda: create_model(name, num_classes=num_classes))
    load_checked(model, state)
    if classes is None:
        classes = default_class_names(num_classes)
    classes = list(classes)
    if len(classes) != num_classes:
        raise WeightsError(
            f"{len(classes)} class names given but {str(weights_path)!r} has {num_classes} outputs"
        )
    base = Preprocess.for_input_size(default_input_size(name))
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
