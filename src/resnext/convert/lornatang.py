"""Import Lornatang/ResNetXt-PyTorch checkpoints (``epoch_N.pth.tar``, ``best.pth.tar``).

Their ``train.py`` saves, once an epoch, ``torch.save({"epoch", "best_acc1", "state_dict",
"ema_state_dict", "optimizer", "scheduler"})`` (utils.save_checkpoint), and ``test.py``
evaluates ``checkpoint["state_dict"]`` of the released
``ResNetXt50_32x4d-ImageNet_1K-7a64b822.pth.tar`` files. Their ``model.py`` names every parameter as
torchvision does (``conv1``, ``bn1``, ``layer1``..``layer4`` of ``_Bottleneck`` blocks with
``conv1``..``bn3`` and ``downsample.0/1``, ``fc``), and builds the same network (stride on
the grouped 3x3, group width ``planes * d / 64 * C``), so no key is renamed.

Their EMA is inverted. ``build_model`` wraps the model in
``torch.optim.swa_utils.AveragedModel(model, avg_fn=lambda avg, new, n: (1 - decay) * avg
+ decay * new)`` with ``model_ema_decay = 0.99998`` (config.py): the *new* weights get the
weight 0.99998 and the running average 0.00002, the reverse of an EMA
(``decay * avg + (1 - decay) * new``), so their "EMA" is the last step's weights, barely
averaged. ``AveragedModel`` averages parameters only (``use_buffers=False``): before
PyTorch 2.0 (pytorch/pytorch#84054, merged October 2022) it never touched the EMA's buffers,
so a checkpoint of that time holds the BatchNorm statistics the model had when it was wrapped
(at initialisation: mean 0, variance 1); from 2.0 on they are the model's, copied at each
update. Hence the trained weights (``state_dict``) are the default; ``ema=True`` takes
``ema_state_dict`` (``module.``-prefixed, plus ``n_averaged``) and says in the source notes
when its BN statistics are still the initial ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import add_num_batches_tracked, load_checked, read_file, strip_prefixes
from ..data import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..errors import WeightsError
from ..models import ResNeXt
from .base import Imported, repairs
from .state_dict import infer_architecture

# Their evaluation (test.py -> dataset.ImageDataset, mode "Test"): cv2 read, BGR -> RGB, PIL
# image, transforms.Resize(256) (PIL bilinear), CenterCrop(224) (torchvision's rounded offset),
# ConvertImageDtype, Normalize with config.py's ImageNet mean/std. ResNetXt-PyTorch's own
# dataset.py was not available to read; this is the dataset.py of their ResNet-PyTorch, built
# from the same template (same config.py, test.py and CUDAPrefetcher). inference.py instead
# resizes straight to 224x224 without a crop (a single-image demo, not their accuracy).
LORNATANG_EVAL = Preprocess(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD, "round")


def _bn_untouched(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether every BN's running statistics are still PyTorch's initial 0 / 1."""
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    return (
        bool(means)
        and all(bool((m == 0).all()) for m in means)
        and all(bool((v == 1).all()) for v in variances)
    )


def import_lornatang(path: str | Path, *, ema: bool = False) -> Imported:
    """Read a Lornatang/ResNetXt-PyTorch ``.pth.tar`` checkpoint (``weights_only=True``).

    Args:
        path: their checkpoint; any file name (the reader looks at the file's first bytes).
        ema: take ``ema_state_dict`` instead of ``state_dict``. Their EMA update is inverted
            (see the module docstring), so the trained weights are the default.
    """
    p = Path(path)
    obj = read_file(p)
    entries = ", ".join(sorted(map(str, obj))[:8])
    if not isinstance(obj.get("state_dict"), Mapping):
        raise WeightsError(
            f"{p.name} is not a Lornatang/ResNetXt-PyTorch checkpoint: it has no 'state_dict' "
            f"entry (its entries: {entries}); give a plain state dict to the state_dict importer"
        )
    key = "ema_state_dict" if ema else "state_dict"
    if not isinstance(obj.get(key), Mapping):
        raise WeightsError(f"{p.name} has no {key!r} to take (its entries: {entries})")
    raw = {k: v for k, v in obj[key].items()}
    not_tensors = sorted(k for k, v in raw.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise WeightsError(f"{p.name}: {key} holds non-tensor entries {not_tensors[:4]}")
    notes: list[str] = []
    n_averaged = None
    if ema:
        # AveragedModel's state dict: its counter, then the wrapped model under "module.".
        if "n_averaged" not in raw:
            raise WeightsError(
                f"{p.name}: ema_state_dict has no n_averaged, so it was not written by "
                "torch.optim.swa_utils.AveragedModel as their train.py does"
            )
        n_averaged = int(raw.pop("n_averaged").item())
        bare = sorted(k for k in raw if not k.startswith("module."))
        if bare:
            raise WeightsError(
                f"{p.name}: ema_state_dict keys without AveragedModel's 'module.' prefix: "
                f"{', '.join(bare[:4])}"
            )
        raw = {k[len("module.") :]: v for k, v in raw.items()}
        notes.append(
            "their EMA update is inverted ((1 - 0.99998) * average + 0.99998 * new weights): "
            "it holds roughly the last step's weights"
        )
    state = strip_prefixes(raw)
    added = add_num_batches_tracked(state)
    try:
        arch = infer_architecture(state)
    except WeightsError as e:
        raise WeightsError(f"{p.name} ({key}): {e}") from e
    model = ResNeXt(**arch)
    try:
        load_checked(model, state)
    except WeightsError as e:
        raise WeightsError(f"{p.name} ({key}): {e}") from e
    model.eval()
    if ema and _bn_untouched(state):
        notes.append(
            "the EMA's BatchNorm statistics are the initial 0 / 1 (AveragedModel with "
            "use_buffers=False before PyTorch 2.0 never updated them): re-estimate them "
            "before evaluating"
        )
    source: dict[str, Any] = {
        "format": "lornatang",
        "file": p.name,
        "weights": "ema" if ema else "model",
        "entry": key,
        "epoch": obj.get("epoch") if isinstance(obj.get("epoch"), int) else None,
        "best_acc1": _number(obj.get("best_acc1")),
        "preprocess_from": "their dataset.py Valid/Test: Resize(256) bilinear, CenterCrop(224)",
        "notes": notes,
        **repairs(n_averaged, added),
    }
    return Imported(model=model, preprocess=LORNATANG_EVAL, classes=None, source=source)


def _number(v: Any) -> float | None:
    """A plain float from a Python number or a one-element tensor (``best_acc1`` is either)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return float(v.item())
    return float(v) if isinstance(v, (int, float)) else None
