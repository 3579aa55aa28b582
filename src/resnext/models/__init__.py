"""ResNeXt models: the network, its three block forms, the registry, complexity."""

from .blocks import BLOCK_FORMS, GroupedBottleneck, SplitConcatBottleneck, SplitSumBottleneck
from .build import ModelSpec, build_model
from .complexity import Complexity, measure
from .convert import convert_block_form
from .registry import create_model, default_input_size, list_models, parse_name
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
    "build_model",
    "convert_block_form",
    "create_model",
    "default_input_size",
    "list_models",
    "measure",
    "parse_name",
]
