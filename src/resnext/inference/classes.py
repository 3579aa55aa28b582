"""Class names for people: ImageNet-1k's, shipped with the package, for models that store
none, and readable names for classes that are WordNet ids (ImageNet-style folders)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
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
def _wnid_names() -> dict[str, str]:
    return dict(zip(_imagenet_wnids(), _imagenet_classes(), strict=True))


def readable_names(classes: Sequence[str]) -> list[str]:
    """What to show for each class: a WordNet id of ImageNet-1k (a class folder such as
    ``n01443537``, in ImageNet and Tiny ImageNet trees) becomes its names ("goldfish,
    Carassius auratus"); anything else is shown as it is. Two classes that would show the
    same name (the bird and the machine "crane") keep their id in brackets.

    Models keep the ids as their classes (checkpoints, exports): this is display only.
    """
    table = _wnid_names()
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
