"""Run configuration: frozen dataclasses <- YAML file <- ``key=value`` overrides.

Every field has a one-line comment, so this file is the reference for the config
files in ``configs/``: a recipe holds only what it sets over these defaults, and
:func:`~resnext.configdoc.format_config` prints the fully resolved config with each field's comment
(``resnext train --print-config``). Unknown keys and wrong types raise
:class:`ConfigError` naming the key and the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import signal
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import registry_names
from .errors import ConfigError
from .runtime import TRAIN_PRECISIONS


@dataclass(frozen=True)
class ModelConfig:
    name: str = "resnext29_8x4d"  # registry name, e.g. resnext50_32x4d or resnext29_8x64d
    num_classes: int | None = None  # classifier outputs; None = the dataset's class count
    block_form: str = "c"  # paper Fig. 3 form: a (summed paths), b (concatenated), c (grouped)
    zero_init_last_bn: bool = True  # start each block's last BN at gamma=0 (paper: False)
    stem_width: int = 32  # channels of the stem conv (64 in the paper)
    widths: tuple[int, ...] | None = (64, 128, 256)  # block output width per stage; None = paper's
    pretrained: str | None = None  # local weights file to start from (.pth/.pt/.safetensors)


@dataclass(frozen=True)
class DataConfig:
    # dataset reader: digits | cifar10 | cifar100 | mnist | fashion_mnist | imagefolder | imagelist
    # | tiny_imagenet (Tiny ImageNet-200 as distributed: wnids.txt, train/, val/)
    # | webdataset (the shards `resnext pack` writes; data.root = the packed folder)
    name: str = "digits"
    root: str | None = None  # dataset location on disk (digits needs none)
    val_fraction: float = 0.1  # share of train held out for model selection if no val split
    # share held out as the test split where a dataset has none: digits, and an imagefolder
    # root without split folders (root/<class>/*, carved with val_fraction per class)
    test_fraction: float = 0.2
    split_seed: int = 0  # seed of the train/val(/test) split; fixed, so splits never move
    image_size: int = 32  # training crop side (224 for ImageNet, 32 for CIFAR)
    eval_resize: int | None = None  # eval: resize shorter side to this, then centre crop
    augment: str = "crop"  # train augmentation: none | crop | cifar | imagenet | imagenet_scale
    interpolation: str = "bilinear"  # resize filter, the same in train and eval
    mean: tuple[float, ...] | None = None  # normalisation mean; None = the dataset's own
    std: tuple[float, ...] | None = None  # normalisation std; None = the dataset's own
    color_jitter: float = 0.4  # imagenet augment: brightness/contrast/saturation strength
    pca_lighting: float = 0.1  # imagenet augment: AlexNet PCA lighting noise std (0 = off)
    cifar_labels: str = "fine"  # cifar100: fine (100 classes) or coarse (20 superclasses)
    on_bad_file: str = "error"  # unreadable image: error (stop, naming it) or skip (log once)
    num_workers: int = 0  # DataLoader worker processes (0 = load in the main process)
    shuffle_buffer: int = 1000  # webdataset: samples each loader worker shuffles among (0 = none)
    train_dir: str = "train"  # imagefolder: train sub-folder of root (. = root is one class tree)
    val_dir: str | None = "val"  # imagefolder: val sub-folder (None = carve from train)
    val_labels: str | None = None  # imagefolder: "filename label" file for a flat val folder
    test_dir: str | None = None  # imagefolder: test sub-folder (None = no test split)
    test_labels: str | None = None  # imagefolder: "filename label" file for a flat test folder
    # imagefolder without split folders: a run's recorded split (splits.json) to use instead of
    # carving one; a resume and `resnext eval` use the run folder's own, so rarely set by hand
    split_file: str | None = None
    train_list: str | None = None  # imagelist: "path,label" file of the train split
    val_list: str | None = None  # imagelist: "path,label" file of the val split
    test_list: str | None = None  # imagelist: "path,label" file of the test split


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # optimizer; SGD as in the paper
    lr: float = 0.1  # learning rate at batch size lr_base_batch
    lr_base_batch: int | None = None  # linear scaling: lr * total_batch / this (None = off)
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = True  # Nesterov momentum (the paper's CIFAR recipe)
    weight_decay: float = 5e-4  # L2 weight decay (paper: 1e-4 ImageNet, 5e-4 CIFAR)
    no_decay_bn_bias: bool = False  # exempt BN parameters and biases from weight decay


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "cosine"  # step | multistep | cosine | constant
    step_size: int = 30  # step: epochs between decays
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # decay factor of step and multistep
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (fractions allowed)
    warmup_start_factor: float = 0.1  # lr at the first warm-up step, as a share of lr
    min_lr: float = 0.0  # cosine: final learning rate


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # passes over the train split
    batch_size: int = 32  # images per step on each process
    # images per optimizer step over all processes (batch x accumulation x processes); set, it
    # derives train.batch_size, which must then be left at its default or agree
    global_batch_size: int | None = None
    accumulate_steps: int = 1  # micro-batches per optimizer step (gradient accumulation)
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    clip_grad_norm: float | None = None  # clip the gradient's global norm (None = off)
    # auto: bf16 where the device computes it natively (AVX512_BF16/AMX CPUs, Ampere+ GPUs),
    # else fp32 (fp16 on older GPUs); the run records the choice and a resume keeps it
    precision: str = "auto"  # autocast: auto (bf16 where native) | fp32 | bf16 | fp16 (CUDA)
    channels_last: bool = True  # NHWC memory layout (faster convs on CPU and recent GPUs)
    sync_bn: bool = False  # SyncBatchNorm: BN batch statistics over all processes (CUDA DDP only)
    compile: bool = False  # torch.compile the model
    ema_decay: float | None = 0.98  # EMA of the weights: w_ema = d*w_ema + (1-d)*w (None = off)
    eval_ema: bool = True  # with an EMA: select the model and test with the EMA weights
    # recompute: measured for the averaged weights on train batches before each validation
    # and checkpoint; copy: the trained model's; average: averaged with the weights' decay, as
    # timm and torchvision do (early in a run they describe weights the EMA no longer has)
    ema_bn: str = "recompute"  # the EMA's BN statistics: recompute | copy | average
    ema_bn_batches: int = 16  # train batches that recompute measures the EMA's BN statistics on
    seed: int = 0  # seed of weights init, shuffling and augmentation
    deterministic: bool = True  # deterministic kernels (bitwise-exact resume on CPU)
    device: str = "auto"  # auto (CUDA if present, else CPU) | cpu | cuda | cuda:N
    output_dir: str = "runs"  # folder that holds run folders
    run_name: str | None = None  # run folder name (None = model name + timestamp)
    resume: str | None = None  # auto (this run folder's last checkpoint) | a checkpoint path
    eval_every: int = 1  # validate every this many epochs
    log_every: int = 10  # write a metrics line every this many steps
    checkpoint_every_steps: int | None = 500  # also write last.pt mid-epoch every N steps
    keep_checkpoints: int = 2  # newest step checkpoints kept (step-N.pt, each with its SHA-256)
    # seconds a collective waits for a peer before every waiting rank stops with an error
    dist_timeout_s: float = 1800.0  # a hung or dead process fails the job after this long
    max_steps: int | None = None  # stop after this many optimizer steps (smoke tests)
    # signals that stop the run at the next step, last.pt written (preemption; [] = none)
    stop_signals: tuple[str, ...] = ("SIGTERM", "SIGUSR1")
    threads: int | None = None  # CPU threads for torch (None = torch's default)
    progress: bool = True  # show a progress bar
    tensorboard: bool | None = None  # TensorBoard event files; None = on if it is installed


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)  # the network (resnext.models)
    data: DataConfig = field(default_factory=DataConfig)  # dataset and transforms (resnext.data)
    optim: OptimConfig = field(default_factory=OptimConfig)  # the optimizer (resnext.engine)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # lr per optimizer step
    train: TrainConfig = field(default_factory=TrainConfig)  # the training loop (resnext.engine)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# Values each string field accepts; checked at load time, before any work starts. The
# names of a registry come from it (through the light registry_names).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.block_form": ("a", "b", "c"),
    "data.name": registry_names.READERS,
    "data.augment": registry_names.AUGMENTATIONS,
    "data.interpolation": registry_names.INTERPOLATIONS,
    "data.cifar_labels": ("fine", "coarse"),
    "data.on_bad_file": ("error", "skip"),
    "optim.name": registry_names.OPTIMIZERS,
    "schedule.name": registry_names.SCHEDULES,
    "train.precision": TRAIN_PRECISIONS,
    "train.ema_bn": registry_names.EMA_BN_MODES,
}

# Keys of earlier versions, read from stored configs (checkpoints) and old recipes:
# old key -> (new key, old value -> new value).
RENAMED: dict[str, tuple[str, dict[Any, Any]]] = {
    "train.amp": ("train.precision", {"none": "fp32", "bf16": "bf16", "fp16": "fp16"}),
}
# Keys added since checkpoints were first written, with the value that does what a run written
# before them did: a stored config that lacks one reads it so (a resume then goes on as it was).
ADDED: dict[str, Any] = {"train.ema_bn": "average"}


def _to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_plain(v) for v in obj]
    return obj


def _nearest(key: str, options: list[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(key, options, n=1, cutoff=0.4)
    if near:
        return f"; did you mean {prefix + near[0]!r}?"
    return f"; valid keys: {', '.join(prefix + o for o in options)}"


def _coerce(path: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type, converting only the safe cases."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{path}: got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, got {value!r} ({type(value).__name__})")
        return tuple(_coerce(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path} must be an integer, got {value!r} ({type(value).__name__})")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it spells.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path} must be a number, got {value!r} ({type(value).__name__})")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path} must be a string, got {value!r} ({type(value).__name__})")
    raise ConfigError(f"{path}: unsupported type {annotation!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if path in RENAMED:
            new_path, values = RENAMED[path]
            key, path = new_path.rsplit(".", 1)[1], new_path
            value = values.get(value, value)
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}" + _nearest(key, names, prefix))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} must be a mapping of its keys, got {value!r}")
            kwargs[key] = _build(hint, value, f"{path}.")
        else:
            kwargs[key] = _coerce(path, value, hint)
            if path in CHOICES and kwargs[key] not in CHOICES[path]:
                raise ConfigError(
                    f"{path} must be one of {', '.join(CHOICES[path])}, got {kwargs[key]!r}"
                )
    return cls(**kwargs)


def from_stored(data: dict[str, Any] | None) -> Config:
    """A checkpoint's stored config as today's :class:`Config`: renamed keys under today's
    names, and keys added since it was written (:data:`ADDED`) as that run had them."""
    if not isinstance(data, dict) or not data:
        return from_dict(data or {})  # refuses what is not a mapping, with its message
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in ADDED.items():
        section, name = key.split(".")
        if isinstance(data.setdefault(section, {}), dict):
            data[section].setdefault(name, value)
    return from_dict(data)


def from_dict(data: dict[str, Any]) -> Config:
    """Validate a nested dict (as read from YAML) into a :class:`Config`."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(data).__name__}")
    cfg = _build(Config, data, "")
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    positive = {
        "train.epochs": cfg.train.epochs,
        "train.batch_size": cfg.train.batch_size,
        "train.accumulate_steps": cfg.train.accumulate_steps,
        "train.eval_every": cfg.train.eval_every,
        "train.keep_checkpoints": cfg.train.keep_checkpoints,
        "data.image_size": cfg.data.image_size,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be at least 1, got {value}")
    for name in cfg.train.stop_signals:  # catchable signals only: SIGKILL and SIGSTOP are not
        if name not in signal.Signals.__members__ or name in ("SIGKILL", "SIGSTOP"):
            raise ConfigError(
                f"train.stop_signals: {name!r} is not a signal a run can catch; use names "
                "such as SIGTERM, SIGUSR1, SIGUSR2, SIGINT (or [] for none)"
            )
    if cfg.train.global_batch_size is not None and cfg.train.global_batch_size < 1:
        raise ConfigError(
            f"train.global_batch_size must be at least 1, got {cfg.train.global_batch_size}"
        )
    if cfg.train.dist_timeout_s <= 0:
        raise ConfigError(f"train.dist_timeout_s must be positive, got {cfg.train.dist_timeout_s}")
    if cfg.data.shuffle_buffer < 0:
        raise ConfigError(
            f"data.shuffle_buffer must be 0 (no shuffling) or more, got {cfg.data.shuffle_buffer}"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr must be positive, got {cfg.optim.lr}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")
    if not 0.0 <= cfg.data.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction must be in [0, 1), got {cfg.data.test_fraction}")
    if cfg.data.name == "digits" and cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError(
            f"data.val_fraction + data.test_fraction = {cfg.data.val_fraction} + "
            f"{cfg.data.test_fraction} leaves no images to train on; their sum must be below 1"
        )
    if cfg.train.ema_decay is not None and not 0.0 < cfg.train.ema_decay < 1.0:
        raise ConfigError(
            f"train.ema_decay must be in (0, 1), e.g. 0.9999, got {cfg.train.ema_decay}"
        )
    if cfg.train.ema_bn_batches < 1:
        raise ConfigError(
            f"train.ema_bn_batches must be at least 1 (e.g. 16), got {cfg.train.ema_bn_batches}"
        )
    if not 0.0 <= cfg.train.label_smoothing < 1.0:
        raise ConfigError(
            f"train.label_smoothing must be in [0, 1), got {cfg.train.label_smoothing}"
        )


def resolve_batch_size(cfg: Config, world_size: int) -> Config:
    """The config with ``train.batch_size`` derived from ``train.global_batch_size`` (if set)
    for a job of ``world_size`` processes: global / (processes x accumulation steps).

    Raises :class:`ConfigError` where the global batch does not divide evenly, or where
    ``train.batch_size`` was set to another value than the one derived.
    """
    tc = cfg.train
    if tc.global_batch_size is None:
        return cfg
    share = world_size * tc.accumulate_steps
    per, rest = divmod(tc.global_batch_size, share)
    if rest or per < 1:
        near = sorted({m for m in (per * share, (per + 1) * share) if m >= share})
        raise ConfigError(
            f"train.global_batch_size={tc.global_batch_size} does not divide into "
            f"{world_size} process(es) x {tc.accumulate_steps} accumulation step(s) = {share} "
            f"equal batches; use a multiple of {share} (e.g. {' or '.join(map(str, near))}), "
            "or set train.batch_size (per process) instead"
        )
    default = next(f.default for f in fields(TrainConfig) if f.name == "batch_size")
    if tc.batch_size not in (default, per):
        raise ConfigError(
            f"train.batch_size={tc.batch_size} and train.global_batch_size="
            f"{tc.global_batch_size} disagree: {tc.global_batch_size} images over "
            f"{world_size} process(es) x {tc.accumulate_steps} accumulation step(s) is {per} "
            "per process; set only one of them (a resumed run also needs its number of "
            "processes)"
        )
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, batch_size=per))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.epochs=5"`` -> (["train", "epochs"], 5); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} must look like section.key=value, e.g. train.epochs=5"
        )
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override key {key!r} must be section.key (sections: "
            f"{', '.join(f.name for f in fields(Config))})"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from e
    return parts, value


def merge_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for text in overrides:
        (section, key), value = parse_override(text)
        if not isinstance(out.get(section, {}), dict):
            raise ConfigError(f"section {section!r} must be a mapping")
        out.setdefault(section, {})[key] = value
    return out


def read_recipe(path: str | Path | None) -> dict[str, Any]:
    """The mapping a recipe file holds ({} for no file, or one that holds only comments)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; configs/ lists the recipes")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of sections")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from the defaults) and apply ``key=value`` overrides."""
    return from_dict(merge_overrides(read_recipe(path), overrides or []))
