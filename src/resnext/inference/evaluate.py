"""Evaluation callable from Python: ``prepare_evaluation(EvalOptions(...)).run()`` is what
``resnext eval`` runs; :class:`EvalOptions` holds every choice, written once.

Test modes of the paper (Sec. 4): one centre crop (resize R -> crop S), the 10-crop test
and a larger crop (resize scaled by the same ratio). Several checkpoints form an ensemble:
their softmax outputs are averaged. Each member keeps the preprocessing its checkpoint
stores, changed only by what the caller asks for.

Example::

    from resnext import EvalOptions, evaluate

    report = evaluate(EvalOptions("runs/demo/best.pt"))     # its own dataset, test split
    report = evaluate(EvalOptions(["a.pt", "b.pt"], ten_crop=True, data={"root": "/data/cifar"}))
    print(report.final.top1)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, selected_ema
from ..config import ConfigError, DataConfig, from_dict
from ..data.base import TransformedDataset
from ..data.preprocess import Preprocess
from ..data.splitting import SPLITS_FILE, recorded_split
from ..errors import DataError
from ..runtime import RuntimeOptions
from .classes import readable_names
from .classifier import Classifier, model_from_weights
from .explain import cam_head
from .metrics import EvalReport, run_metrics

# DataConfig keys that do not change which images and labels a split holds; members of an
# ensemble must agree on every other key (name, root, fractions, split seed, folders, ...).
NOT_DATASET_KEYS = {
    *Preprocess.field_names(),
    "augment",
    "color_jitter",
    "pca_lighting",
    "on_bad_file",
    "num_workers",
}


@dataclass(frozen=True)
class EvalOptions:
    """What to evaluate and how: the one list of ``resnext eval``'s choices, which
    :func:`prepare_evaluation` takes whole.

    ``checkpoints`` may be one path or several (an ensemble); ``model`` with ``weights``
    replaces them by a registry name and a plain state dict.
    """

    checkpoints: str | Path | Sequence[str | Path] = ()  # resnext train checkpoints, model files
    model: str | None = None  # a registry name, with ``weights`` instead of checkpoints
    weights: str | Path | None = None  # a plain state dict (.pth/.safetensors) for ``model``
    # ``data`` keys (no ``data.`` prefix) over the first member's own data section, e.g.
    # {"root": "/data/cifar"}; preprocessing keys (image_size, eval_resize, interpolation,
    # mean, std) change every member's.
    data: Mapping[str, Any] = field(default_factory=dict)
    split: str = "test"  # test | val
    ten_crop: bool = False  # the 10-crop test: 4 corners and the centre, and their flips
    crop: int | None = None  # another test crop; alone it keeps the resize/crop ratio
    resize: int | None = None  # the shorter side before cropping
    ema: bool | None = None  # True/False: the EMA/trained weights; None: what training selected
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # device, precision, back-end
    batch_size: int = 128  # images per batch
    workers: int | None = None  # DataLoader workers (None: data.num_workers)
    # a folder for the gallery of class activation maps (None = none): the explain_count most
    # confident mistakes and least confident right answers (resnext.inference.gallery)
    explain: str | Path | None = None
    explain_count: int = 8

    def __post_init__(self) -> None:
        paths = self.checkpoints
        paths = (paths,) if isinstance(paths, (str, Path)) else tuple(paths)
        object.__setattr__(self, "checkpoints", paths)
        object.__setattr__(self, "data", dict(self.data or {}))
        if self.split not in ("test", "val"):
            raise ConfigError(f"split must be test or val, got {self.split!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.explain_count < 1:
            raise ConfigError(f"explain count must be at least 1, got {self.explain_count}")


@dataclass
class Member:
    """One model of the evaluation with what it was trained on."""

    name: str
    classifier: Classifier
    data: dict[str, Any] | None  # the checkpoint's data config section (None for weights)
    ema: bool = False  # evaluated with the EMA weights


class PerMember:
    """Applies each distinct preprocessing once; returns one tensor per member."""

    def __init__(self, transforms: list[Callable[[Any], torch.Tensor]], index: list[int]) -> None:
        self.transforms, self.index = transforms, index

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        outs = [t(image) for t in self.transforms]
        return tuple(outs[i] for i in self.index)


@dataclass
class Evaluation:
    """A prepared evaluation: members, the split, each member's preprocessing, the loader.
    :meth:`describe` says what will run; :meth:`run` runs it."""

    members: list[Member]
    data: DataConfig
    split: str
    dataset: Any
    classes: list[str]
    preprocess: list[Preprocess]
    ten_crop: bool
    precision: str
    loader: Any
    notes: list[str] = field(default_factory=list)  # things the user should know
    explain: Path | None = None  # the gallery's folder (EvalOptions.explain)
    explain_count: int = 8

    def describe(self) -> list[str]:
        """One line for the data, one per member: what is evaluated and how."""
        mode = "10-crop" if self.ten_crop else "centre crop"
        lines = [
            f"dataset: {self.data.name}, {self.split} split: {len(self.dataset)} images, "
            f"{len(self.classes)} classes"
        ]
        for m, p in zip(self.members, self.preprocess, strict=True):
            lines.append(
                f"{m.name}: {p.describe().replace('crop', mode, 1)}, {self.precision}, "
                f"{'EMA' if m.ema else 'trained'} weights, {m.classifier.backend_line}"
            )
        return lines

    def run(self, progress: bool = False) -> EvalReport:
        """Evaluate every member and (for several) their ensemble in one pass."""
        report = run_metrics(
            [m.classifier.runner for m in self.members],
            self.loader,
            len(self.classes),
            names=[m.name for m in self.members],
            device=self.members[0].classifier.device,
            precision=self.precision,
            progress=progress,
            keep_probs=self.explain is not None,
        )
        report.info = {
            "dataset": {"name": self.data.name, "root": self.data.root, "split": self.split},
            "classes": list(self.classes),
            "class_names": readable_names(self.classes),  # what people read (WordNet ids named)
            "mode": {"ten_crop": self.ten_crop, "precision": self.precision},
            "backends": [m.classifier.backend for m in self.members],
            "members": [
                {"name": m.name, "preprocess": p.to_dict(), "ema": m.ema}
                for m, p in zip(self.members, self.preprocess, strict=True)
            ],
        }
        if self.explain is not None:
            from .gallery import write_gallery  # matplotlib, only for a gallery

            final = report.final
            assert final.probs is not None and final.labels is not None  # kept: keep_probs
            notes = ["10-crop test: confidences of the 10 crops, maps of the centre crop"]
            page = write_gallery(
                self.explain, self.members[0].classifier, self.preprocess[0], self.dataset,
                final.probs, final.labels, self.explain_count,
                notes=notes if self.ten_crop else (),
            )  # fmt: skip
            report.info["gallery"] = str(page)
        return report


def evaluate(options: EvalOptions, progress: bool = False) -> EvalReport:
    """Top-1/top-k accuracy, loss and per-class counts of checkpoints (an ensemble if several)
    or of a registry model with plain weights: the report ``resnext eval`` prints.
    ``prepare_evaluation(options).run(progress)``."""
    return prepare_evaluation(options).run(progress=progress)


def prepare_evaluation(options: EvalOptions) -> Evaluation:
    """Load the members and the data split, and build the loader (see :class:`EvalOptions`)."""
    o = options
    split, batch_size, workers, ten_crop = o.split, o.batch_size, o.workers, o.ten_crop
    paths, data = list(o.checkpoints), dict(o.data)
    members = _load_members(paths, o.model, o.weights, o.ema, o.runtime)
    if o.explain is not None:
        if len(members) > 1:
            raise ConfigError(
                "explain draws one model's class activation maps; give one checkpoint, not "
                f"an ensemble of {len(members)}"
            )
        cam_head(members[0].classifier.model)  # a model without exact maps: refused now
    cfg = _data_config(members[0].data, data)
    if members[0].data is not None and "split_file" not in data:
        # A run that carved its splits from one folder recorded them next to its checkpoints.
        cfg = recorded_split(cfg, Path(paths[0]).parent)
    from ..data.build import build_raw_splits, make_loader  # the readers import torchvision

    raw = build_raw_splits(cfg)
    dataset = raw.test if split == "test" else raw.val
    if dataset is None or len(dataset) == 0:
        other = "val" if split == "test" else "test"
        raise DataError(f"dataset {cfg.name!r} has no {split} split; evaluate the {other} split")
    classes = members[0].classifier.classes
    if raw.num_classes != len(classes):
        raise DataError(
            f"the model has {len(classes)} classes but dataset {cfg.name!r} has "
            f"{raw.num_classes}; evaluate on the dataset the model was trained for"
        )
    notes = list(raw.info.get("notes", ()))
    if raw.info.get("split_record") is not None and cfg.split_file is None:
        notes.append(
            f"no {SPLITS_FILE} next to {paths[0]}: the splits were carved again from the files "
            f"under {cfg.root} (split_seed {cfg.split_seed}); they are the training run's only "
            f"if no file was added or removed since. data.split_file=RUN/{SPLITS_FILE} reads "
            "the recorded ones"
        )
    if raw.classes != classes:
        notes.append(
            f"the dataset's class names ({_preview(raw.classes)}) differ from the model's "
            f"({_preview(classes)}); labels are matched by index"
        )
    # The caller's preprocessing keys, validated by the config (mean/std None = the dataset's).
    own = Preprocess.from_config(cfg, raw.mean, raw.std)
    changes = {k: getattr(own, k) for k in Preprocess.field_names() if k in data}
    pres = [_member_preprocess(m.classifier.preprocess, changes, o.crop, o.resize) for m in members]
    distinct = list(dict.fromkeys(pres))
    if ten_crop and any(p.eval_resize in (None, p.image_size) for p in distinct):
        notes.append(
            "ten-crop with resize == crop: the five crops coincide and only the flip differs; "
            "give a resize larger than the crop for distinct corners"
        )
    transforms = [p.transform(ten_crop=ten_crop) for p in distinct]
    transform = (
        transforms[0]
        if len(distinct) == 1
        else PerMember(transforms, [distinct.index(p) for p in pres])
    )
    loader = make_loader(
        TransformedDataset(dataset, transform),
        batch_size,
        num_workers=cfg.num_workers if workers is None else workers,
    )
    precision = o.runtime.precision
    return Evaluation(
        members, cfg, split, dataset, list(classes), pres, ten_crop, precision, loader, notes,
        explain=None if o.explain is None else Path(o.explain), explain_count=o.explain_count,
    )  # fmt: skip


def _load_members(
    paths: list[str | Path],
    model: str | None,
    weights: str | Path | None,
    ema: bool | None,
    runtime: RuntimeOptions,
) -> list[Member]:
    """Every checkpoint (or the model/weights pair) as a :class:`Member`."""
    if weights is not None or model is not None:
        if weights is None or model is None:
            raise ConfigError("model and weights go together: a registry name and a state dict")
        if paths:
            raise ConfigError("give either checkpoints or a model with weights, not both")
        clf = Classifier(*model_from_weights(model, weights), runtime)
        return [Member(f"{model} ({Path(weights).name})", clf, None)]
    if not paths:
        raise ConfigError("give a checkpoint to evaluate (or a model name with weights)")
    members = []
    for p in paths:
        if Path(p).suffix == ".onnx":  # an exported model: no data section, one set of weights
            members.append(Member(str(p), Classifier.from_checkpoint(p, runtime=runtime), None))
            continue
        ckpt = load_checkpoint(p)
        use_ema = selected_ema(ckpt) if ema is None else ema
        clf = Classifier.from_checkpoint_dict(ckpt, use_ema, runtime, path=p)
        members.append(Member(str(p), clf, (ckpt.get("config") or {}).get("data"), use_ema))
    _check_same_dataset(members)
    return members


def _check_same_dataset(members: list[Member]) -> None:
    """An ensemble's members must share the class list and the dataset split."""
    first = members[0]
    for m in members[1:]:
        if m.classifier.classes != first.classifier.classes:
            raise ConfigError(
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
            raise ConfigError(
                f"{first.name} and {m.name} were trained on different datasets or splits "
                f"({shown}); an ensemble is evaluated on one test split, so they must match"
            )


def _data_config(base: Mapping[str, Any] | None, data: Mapping[str, Any]) -> DataConfig:
    """The first member's data section (or the defaults) with the caller's keys over it."""
    return from_dict({"data": {**dict(base or {}), **dict(data)}}).data


def _member_preprocess(
    pre: Preprocess, changes: Mapping[str, Any], crop: int | None, resize: int | None
) -> Preprocess:
    """The member's stored preprocessing, changed only by what the caller asked for."""
    try:
        if changes:
            pre = replace(pre, **changes)
        return pre.with_crop(crop, resize)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _preview(names: Sequence[str], n: int = 3) -> str:
    head = ", ".join(names[:n])
    return head + (", ..." if len(names) > n else "")
