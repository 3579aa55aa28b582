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
from .writing import atomic_write, refuse_overwriting, save_safetensors

__all__ = [
    "CHECKPOINT_FORMAT",
    "MODEL_FORMAT",
    "STATE_DICT_PREFIXES",
    "TRAINING_KEYS",
    "VERSION",
    "WRAPPER_KEYS",
    "WeightsError",
    "add_num_batches_tracked",
    "atomic_write",
    "built_to_load",
    "checkpoint_record",
    "copy_checkpoint",
    "extract_state_dict",
    "is_model_file",
    "load_checked",
    "load_checkpoint",
    "load_model_file",
    "make_checkpoint",
    "model_description",
    "model_from_checkpoint",
    "read_file",
    "refuse_overwriting",
    "save_checkpoint",
    "save_model_file",
    "save_safetensors",
    "selected_ema",
    "sidecar_path",
    "strip_prefixes",
]
