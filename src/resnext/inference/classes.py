"""Class names for people: readable names for classes that are WordNet ids (ImageNet-style
folders), and a class's name with its id. The tables themselves (ImageNet-1k's names and ids,
the default names of a model that stores none) are pure data in
:mod:`resnext.data.class_names`, below every package that writes a model file."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ..data.class_names import (
    WNID,
    default_class_names,
    imagenet_classes,
    imagenet_wnids,
    wnid_names,
)

__all__ = [
    "WNID",
    "default_class_names",
    "imagenet_classes",
    "imagenet_wnids",
    "readable_names",
    "with_id",
]


def readable_names(classes: Sequence[str]) -> list[str]:
    """What to show for each class: a WordNet id of ImageNet-1k (a class folder such as
    ``n01443537``, in ImageNet and Tiny ImageNet trees) becomes its names ("goldfish,
    Carassius auratus"); anything else is shown as it is. Two classes that would show the
    same name (the bird and the machine "crane") keep their id in brackets.

    Models keep the ids as their classes (checkpoints, exports): this is display only.
    """
    table = wnid_names()
    shown = [table.get(c, c) if WNID.fullmatch(c) else c for c in classes]
    twice = {n for n, k in Counter(shown).items() if k > 1}
    return [
        f"{n} ({c})" if n in twice and n != c else n for n, c in zip(shown, classes, strict=True)
    ]


def with_id(name: str, class_id: str) -> str:
    """A class's name with its id where they differ, for a line people read:
    ``goldfish, Carassius auratus (n01443537)``; a name that already ends in its id (two
    classes sharing a name) or is the id is left as it is."""
    if name == class_id or name.endswith(f"({class_id})"):
        return name
    return f"{name} ({class_id})"
