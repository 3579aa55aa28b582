"""ImageNet-1k's class names and WordNet ids, shipped with the package (pure data): the names
a model that stores none gets, and the table that names WordNet-id classes for people.

Below inference, export and convert, so that every writer of a model file names its classes
the same way; :mod:`resnext.inference.classes` shows them."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

#: A WordNet noun synset id as ImageNet names its class folders: "n" and 8 digits.
WNID = re.compile(r"n\d{8}")


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names (WordNet synset lemmas), in class-index order.

    Index 0 is "tench, Tinca tinca", 999 "toilet tissue, toilet paper, bathroom tissue".
    The list was taken from timm's ``imagenet_synsets.txt`` + ``imagenet_synset_to_lemma.txt``
    (synsets sorted: the standard ILSVRC-2012 label order) and checked against torchvision's
    short category names: the first lemma equals them at 998 indices; at the other two
    torchvision disambiguates ("crane bird" at 134, the machine "crane" being 517;
    "maillot tank suit" at 639).
    """
    return list(_imagenet_classes())


@cache
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("resnext").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet_classes.txt holds {len(names)} names, not 1000")
    return names


def default_class_names(num_classes: int) -> list[str]:
    """Names for a model that stores none: ImageNet-1k's for 1,000 classes, else the indices."""
    if num_classes == 1000:
        return imagenet_classes()
    return [str(i) for i in range(num_classes)]


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k WordNet ids in class-index order: index 0 is n01440764 (tench).

    Sorted ids are the standard ILSVRC-2012 label order, so the list pairs 1:1 with
    :func:`imagenet_classes`. Taken from timm's ``imagenet_synsets.txt`` (Apache-2.0).
    """
    return list(_imagenet_wnids())


@cache
def _imagenet_wnids() -> tuple[str, ...]:
    text = resources.files("resnext").joinpath("imagenet_wnids.txt").read_text("utf-8")
    ids = tuple(s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#"))
    if len(ids) != 1000 or list(ids) != sorted(ids):
        raise RuntimeError(f"imagenet_wnids.txt holds {len(ids)} ids, not 1000 sorted ones")
    return ids


@cache
def wnid_names() -> dict[str, str]:
    """ImageNet-1k's WordNet id -> class names: ``n01443537`` -> "goldfish, Carassius auratus".
    Cached: read it, do not change it."""
    return dict(zip(_imagenet_wnids(), _imagenet_classes(), strict=True))
