"""``resnext quantize`` from Python: a model made int8 (onnxruntime static quantization,
:mod:`resnext.export.to_int8`), calibrated on real images through the model's own eval
preprocessing, and kept only if an accuracy gate passes.

The gate evaluates the fp32 export and the int8 file on the same images: labelled ones (the
checkpoint's validation split by default) give top-1, top-5 and their agreement; without
labels, agreement with fp32 on images held out from calibration stands in for accuracy (the
top-1 drop can be no larger than the share of images whose answer changed).

Example::

    q = Quantization(QuantizeOptions("runs/demo/best.pt", "demo-int8.onnx"))
    gate = q.gate()        # quantizes, then evaluates fp32 and int8
    print(gate.drop_pt)    # top-1 points lost (or disagreement without labels)
    q.write()              # refused (AccuracyError) past max_drop unless force
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import is_model_file, load_checkpoint, model_from_checkpoint, selected_ema
from ..config import from_dict, load_config
from ..data.build import build_raw_splits
from ..data.class_names import default_class_names
from ..data.images import ImageFiles, list_images
from ..data.preprocess import Preprocess
from ..data.splitting import recorded_split
from ..errors import AccuracyError, ConfigError, DataError, WeightsError
from ..export import check_output_path, export_onnx, onnx_session
from ..export.onnx_runtime import INPUT_NAME
from ..export.to_int8 import (
    Int8Settings,
    choose_settings,
    finish_int8,
    quantize_file,
    settings_record,
)
from .classifier import model_from_weights

SEED = 0  # which images calibrate and which are held out: the same on every run


@dataclass(frozen=True)
class QuantizeOptions:
    """Every choice of ``resnext quantize``, written once."""

    model: str | Path  # a checkpoint, a model file, or a plain state dict (with ``arch``)
    output: str | Path  # the int8 .onnx to write
    arch: str | None = None  # registry name for a plain state dict (``--model``)
    calibration: str | Path | None = None  # image folder or data config; None: training split
    images: int = 300  # calibration images
    method: str = "minmax"  # minmax | entropy | percentile
    eval_data: str | Path | None = None  # image folder or data config; None: validation split
    eval_images: int | None = None  # at most this many gate images (None: all)
    eval_split: str = "val"  # the split of the checkpoint's dataset (or --eval-data config)
    max_drop: float = 1.0  # top-1 points the int8 model may lose
    force: bool = False  # write even past max_drop, figures in the metadata
    ema: bool | None = None  # EMA weights (None: those the training run selected)
    settings: Int8Settings | None = None  # None: choose_settings() for this CPU
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"--images must be at least 1, got {self.images}")
        if self.eval_split not in ("val", "test"):
            raise ConfigError(f"the gate's split must be val or test, not {self.eval_split!r}")
        if self.eval_images is not None and self.eval_images < 1:
            raise ConfigError(f"--eval-images must be at least 1, got {self.eval_images}")


@dataclass
class Images:
    """Images for calibration or the gate: a raw reader, the indices used, and whether its
    labels mean the model's classes."""

    what: str  # e.g. "digits train split"
    reader: Any  # raw samples: (PIL image or uint8 tensor, label)
    indices: list[int]
    labelled: bool

    def batches(self, pre: Preprocess, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 images, int labels) through the model's eval preprocessing."""
        transform = pre.transform()
        for start in range(0, len(self.indices), size):
            samples = [self.reader[i] for i in self.indices[start : start + size]]
            x = torch.stack([transform(img) for img, _ in samples]).numpy()
            yield x, np.array([y for _, y in samples])


@dataclass
class Scores:
    """One model's figures on the gate images (percent)."""

    top1: float | None
    top5: float | None
    agreement: float  # top-1 answers equal to fp32's


@dataclass
class Gate:
    """What the accuracy gate measured and decided."""

    images: str  # what they were
    count: int
    labelled: bool
    topk: int  # the k of "top-5" (fewer classes: all of them)
    fp32: Scores
    int8: Scores
    max_drop: float
    drop_pt: float = field(init=False)  # top-1 points lost, or disagreement without labels

    def __post_init__(self) -> None:
        if self.labelled:
            self.drop_pt = float(self.fp32.top1 or 0.0) - float(self.int8.top1 or 0.0)
        else:
            self.drop_pt = 100.0 - self.int8.agreement

    @property
    def passed(self) -> bool:
        return self.drop_pt <= self.max_drop

    def record(self, forced: bool) -> dict[str, Any]:
        """As stored in the metadata."""
        return {
            "images": self.images,
            "count": self.count,
            "labelled": self.labelled,
            "topk": self.topk,
            "fp32": vars(self.fp32),
            "int8": vars(self.int8),
            "drop_pt": round(self.drop_pt, 4),
            "measure": "top-1 drop" if self.labelled else "disagreement with fp32",
            "max_drop_pt": self.max_drop,
            "passed": self.passed,
            "forced": forced and not self.passed,
        }


class Quantization:
    """One ``resnext quantize`` run: :meth:`gate` quantizes and measures, :meth:`write` keeps
    the file (or refuses). The fp32 export and the int8 file live in a temporary folder until
    then (:meth:`close`, or use it as a context manager)."""

    def __init__(self, options: QuantizeOptions) -> None:
        self.options = o = options
        self.output = check_output_path(o.output, "onnx")  # refuse a bad path before work
        self._tmp = tempfile.TemporaryDirectory(prefix="resnext-quantize-")
        self.model, self.classes, self.preprocess, self.source, self._data = _load(o)
        self._run = Path(o.model).parent
        self.settings, self.why = (
            (o.settings, "given") if o.settings is not None else choose_settings(o.method)
        )
        self.calibration, self.eval = self._images()
        self.quantize_seconds: float | None = None
        self.result: Gate | None = None

    def __enter__(self) -> Quantization:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._tmp.cleanup()

    def _images(self) -> tuple[Images, Images]:
        o = self.options
        cal = _source(o.calibration, self._data, self._run, "train", self.classes, "--calibration")
        rng = np.random.default_rng(SEED)
        order = [cal.indices[i] for i in rng.permutation(len(cal.indices))]
        if o.eval_data is None and self._data is None:
            # No labelled split to judge by: hold images out of the calibration set.
            if len(order) < 2:
                raise DataError(f"{cal.what}: need at least 2 images (calibrate and hold out)")
            held = max(1, min(len(order) // 4, o.eval_images or len(order)))
            ev = Images(f"{cal.what}, held out from calibration", cal.reader, order[:held], False)
            cal.indices, ev.labelled = order[held:][: o.images], cal.labelled
            return cal, ev
        cal.indices = order[: o.images]
        ev = _source(o.eval_data, self._data, self._run, o.eval_split, self.classes, "--eval-data")
        if o.eval_images is not None and len(ev.indices) > o.eval_images:
            pick = np.random.default_rng(SEED + 1).permutation(len(ev.indices))[: o.eval_images]
            ev.indices = [ev.indices[i] for i in sorted(pick)]
        return cal, ev

    def gate(self) -> Gate:
        """Export fp32 (checked), quantize, evaluate both on the gate images."""
        tmp = Path(self._tmp.name)
        self.fp32_path, self.int8_path = tmp / "fp32.onnx", tmp / "int8.onnx"
        self.export = export_onnx(
            self.model,
            self.fp32_path,
            classes=self.classes,
            preprocess=self.preprocess,
            source=self.source,
        )
        cal = (x for x, _ in self.calibration.batches(self.preprocess, self.options.batch_size))
        self.quantize_seconds = quantize_file(self.fp32_path, self.int8_path, cal, self.settings)
        self.result = _evaluate(self.fp32_path, self.int8_path, self.eval, self)
        return self.result

    def write(self) -> tuple[Path, Path]:
        """Keep the int8 file (and its JSON) if the gate passed or ``force``; else raise
        :class:`AccuracyError` saying by how much it missed. Returns (file, sidecar)."""
        gate = self.result if self.result is not None else self.gate()
        o = self.options
        if not gate.passed and not o.force:
            what = "top-1 drop" if gate.labelled else "disagreement with fp32"
            raise AccuracyError(
                f"int8 {what} {gate.drop_pt:.2f} pt > --max-drop {o.max_drop:g} pt (missed by "
                f"{gate.drop_pt - o.max_drop:.2f} pt); nothing was written. Try another "
                "--method or more --images, or --force to write it anyway"
            )
        description = _description(self)
        int8 = {
            "settings": settings_record(self.settings, self.why),
            "calibration": {
                "images": self.calibration.what,
                "count": len(self.calibration.indices),
                "method": self.settings.method,
                "seed": SEED,
                "preprocess": "the model's eval preprocessing",
            },
            "gate": gate.record(o.force),
            "fp32_export": self.export.exporter,
            "quantize_seconds": round(self.quantize_seconds or 0.0, 1),
        }
        side = finish_int8(self.int8_path, self.output, description, int8)
        return self.output, side


def _description(q: Quantization) -> dict[str, Any]:
    from ..checkpoint import model_description

    return model_description(
        q.model, classes=q.classes, preprocess=q.preprocess.to_dict(), source=q.source
    )


def _load(
    o: QuantizeOptions,
) -> tuple[torch.nn.Module, list[str], Preprocess, dict[str, Any], dict[str, Any] | None]:
    """(model, classes, preprocessing, source, the checkpoint's data config section)."""
    path = str(o.model)
    if o.arch is not None:
        model, classes, pre = model_from_weights(o.arch, path)
        source = {"format": "state-dict", "file": Path(path).name, "model": o.arch}
        return model, classes, pre, source, None
    if Path(path).suffix == ".onnx":
        raise WeightsError(
            f"{path!r} is already an ONNX file; quantize the checkpoint or model file it was "
            "exported from (the gate compares against its fp32 export)"
        )
    ckpt = load_checkpoint(path)
    use_ema = selected_ema(ckpt) if o.ema is None else o.ema
    model = model_from_checkpoint(ckpt, use_ema=use_ema)
    classes = ckpt.get("classes") or default_class_names(model.arch.num_classes)
    if ckpt.get("preprocess") is None:
        raise WeightsError(
            f"{path!r} stores no preprocess entry, so calibration images could "
            "not be prepared as the model expects"
        )
    source = {
        "format": "resnext-model" if is_model_file(path) else "resnext-checkpoint",
        "file": Path(path).name,
        "weights": "ema" if use_ema else "model",
    }
    data = (ckpt.get("config") or {}).get("data")
    return model, list(classes), Preprocess.from_dict(ckpt["preprocess"]), source, data


def _source(
    given: str | Path | None,
    data: dict[str, Any] | None,
    run: Path,
    split: str,
    classes: Sequence[str],
    flag: str,
) -> Images:
    """The images ``flag`` names: a folder, a data config (YAML), or (None) the
    checkpoint's own ``split`` (val falls back to test where a dataset has none)."""
    if given is None:
        if data is None:
            raise ConfigError(
                f"this model stores no data config; give {flag} (an image folder or a data "
                "config YAML)"
            )
        # A run that carved its splits from one folder recorded them beside its checkpoints.
        cfg = recorded_split(from_dict({"data": dict(data)}).data, run)
        return _split(cfg, split, classes)
    path = Path(given)
    if path.is_dir():
        return _folder(path, classes)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return _split(load_config(path).data, split, classes)
    raise ConfigError(f"{flag} {str(given)!r} is neither an image folder nor a data config YAML")


def _split(cfg: Any, split: str, classes: Sequence[str]) -> Images:
    raw = build_raw_splits(cfg)
    reader = {"train": raw.train, "val": raw.val, "test": raw.test}[split]
    name = split
    if reader is None and split == "val":
        reader, name = raw.test, "test"
    if reader is None or len(reader) == 0:
        raise DataError(f"dataset {cfg.name!r} has no {split} split to use")
    labelled = raw.num_classes == len(classes)
    return Images(f"{cfg.name} {name} split", reader, list(range(len(reader))), labelled)


def _folder(path: Path, classes: Sequence[str]) -> Images:
    """A folder of images: labelled where its sub-folders are the model's class names."""
    files = list_images(path)
    if not files:
        raise DataError(f"no images under {str(path)!r}")
    index = {c: i for i, c in enumerate(classes)}
    labels = [
        index.get(f.relative_to(path).parts[0], -1) if f.parent != path else -1 for f in files
    ]
    labelled = all(y >= 0 for y in labels)
    reader = ImageFiles([(str(f), max(y, 0)) for f, y in zip(files, labels, strict=True)])
    return Images(f"{len(files)} images under {path}", reader, list(range(len(files))), labelled)


def _evaluate(fp32: Path, int8: Path, images: Images, q: Quantization) -> Gate:
    """Both models on the gate images: top-1, top-k, agreement (percent)."""
    sessions = [onnx_session(fp32), onnx_session(int8)]
    k = min(5, len(q.classes))
    hits = np.zeros((2, 2))  # model x (top-1, top-k)
    agree, n = 0, 0
    for x, y in images.batches(q.preprocess, q.options.batch_size):
        logits = [s.run(None, {INPUT_NAME: x})[0] for s in sessions]
        top = [np.argsort(-z, axis=1)[:, :k] for z in logits]
        for m in range(2):
            hits[m, 0] += (top[m][:, 0] == y).sum()
            hits[m, 1] += (top[m] == y[:, None]).any(axis=1).sum()
        agree += int((top[0][:, 0] == top[1][:, 0]).sum())
        n += len(y)
    if n == 0:
        raise DataError(f"{images.what}: no images to evaluate the int8 model on")

    def scores(m: int) -> Scores:
        pct = 100.0 * hits[m] / n
        top1, topk = (float(pct[0]), float(pct[1])) if images.labelled else (None, None)
        return Scores(top1, topk, 100.0 if m == 0 else 100.0 * agree / n)

    return Gate(images.what, n, images.labelled, k, scores(0), scores(1), q.options.max_drop)
