"""``build_model(cfg.model, num_classes)``: the network a config's model section describes.

This package imports only torch, so the section is taken by its shape (:class:`ModelSpec`,
which :class:`resnext.config.ModelConfig` satisfies), not by importing the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .registry import create_model
from .resnext import ResNeXt


class ModelSpec(Protocol):
    """The keys of a config's ``model`` section that fix the network (``model.*``)."""

    @property
    def name(self) -> str: ...
    @property
    def block_form(self) -> str: ...
    @property
    def zero_init_last_bn(self) -> bool: ...
    @property
    def stem_width(self) -> int: ...
    @property
    def widths(self) -> Sequence[int] | None: ...


def build_model(spec: ModelSpec, num_classes: int) -> ResNeXt:
    """A freshly initialised network of ``spec`` with ``num_classes`` outputs (the
    dataset's count, which ``model.num_classes`` may only confirm).

    Raises:
        ValueError: an unknown name or a shape the name does not allow (the caller says
            which config key was wrong).
    """
    return create_model(
        spec.name,
        num_classes=num_classes,
        block_form=spec.block_form,
        zero_init_last_bn=spec.zero_init_last_bn,
        stem_width=spec.stem_width,
        widths=spec.widths,
    )
