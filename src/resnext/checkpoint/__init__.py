"""Checkpoints and model files: their formats, safe reading, checked loading, averaging.

This package sits below the training engine (which writes checkpoints), inference (which
reads them), export and convert (which write model files), so none of those needs another.
It imports only :mod:`resnext.models`, :mod:`resnext.data` (the preprocessing record) and
:mod:`resnext.errors`.
"""

from ..errors import WeightsError
from .checked_load import built_to_load, load_checked
from .checkpoints import (
    copy_checkpoint,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    selected_ema,
)
from .keep import (
    LAST,
    DamagedCheckpointError,
    check_intact,
    has_checkpoint,
    load_named,
    load_newest_intact,
    save_step_checkpoint,
    step_checkpoints,
)
from .model_file import is_model_file, load_model_file, save_model_file, sidecar_path
from .records import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    TRAINING_KEYS,
    VERSION,
    checkpoint_record,
    model_description,
)
from .safe_read import (
    STATE_DICT_PREFIXES,
    WRAPPER_KEYS,
    add_num_batches_tracked,
    extract_state_dict,
    read_file,
    strip_prefixes,
)
from .writing import DiskFullError, atomic_write, refuse_overwriting, save_safetensors

__all__ = [
    "CHECKPOINT_FORMAT",
    "LAST",
    "MODEL_FORMAT",
    "STATE_DICT_PREFIXES",
    "TRAINING_KEYS",
    "VERSION",
    "WRAPPER_KEYS",
    "DamagedCheckpointError",
    "DiskFullError",
    "WeightsError",
    "add_num_batches_tracked",
    "atomic_write",
    "built_to_load",
    "check_intact",
    "checkpoint_record",
    "copy_checkpoint",
    "extract_state_dict",
    "has_checkpoint",
    "is_model_file",
    "load_checked",
    "load_checkpoint",
    "load_model_file",
    "load_named",
    "load_newest_intact",
    "make_checkpoint",
    "model_description",
    "model_from_checkpoint",
    "read_file",
    "refuse_overwriting",
    "save_checkpoint",
    "save_model_file",
    "save_safetensors",
    "save_step_checkpoint",
    "selected_ema",
    "sidecar_path",
    "step_checkpoints",
    "strip_prefixes",
]
