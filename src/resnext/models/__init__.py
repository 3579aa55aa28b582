"""ResNeXt models: the network, its three block forms, the registry, complexity."""

from .block_forms import convert_block_form
from .blocks import BLOCK_FORMS, GroupedBottleneck, SplitConcatBottleneck, SplitSumBottleneck
from .build import ModelSpec, build_model
from .complexity import Complexity, measure
from .registry import (
    arch_from_stages,
    create_model,
    default_input_size,
    depth_from_blocks,
    list_models,
    parse_name,
)
from .resnext import Architecture, ResNeXt

__all__ = [
    "BLOCK_FORMS",
    "Architecture",
    "Complexity",
    "GroupedBottleneck",
    "ModelSpec",
    "ResNeXt",
    "SplitConcatBottleneck",
    "SplitSumBottleneck",
    "arch_from_stages",
    "build_model",
    "convert_block_form",
    "create_model",
    "default_input_size",
    "depth_from_blocks",
    "list_models",
    "measure",
    "parse_name",
]
