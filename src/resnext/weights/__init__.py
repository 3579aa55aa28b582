"""Weights: safe reading, checked loading, and the checkpoint format.

This package sits below both the training engine (which writes checkpoints) and inference
(which reads them), so neither needs the other.
"""

from ..errors import WeightsError
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_write,
    copy_checkpoint,
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
    selected_ema,
)
from .files import (
    STATE_DICT_PREFIXES,
    WRAPPER_KEYS,
    add_num_batches_tracked,
    built_to_load,
    extract_state_dict,
    load_checked,
    read_file,
    refuse_overwriting,
    save_safetensors,
    strip_prefixes,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "STATE_DICT_PREFIXES",
    "WRAPPER_KEYS",
    "WeightsError",
    "add_num_batches_tracked",
    "atomic_write",
    "built_to_load",
    "copy_checkpoint",
    "extract_state_dict",
    "load_checked",
    "load_checkpoint",
    "make_checkpoint",
    "model_from_checkpoint",
    "read_file",
    "refuse_overwriting",
    "save_checkpoint",
    "save_safetensors",
    "selected_ema",
    "strip_prefixes",
]
