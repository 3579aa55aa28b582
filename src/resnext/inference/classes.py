"""Class names for models that store none: ImageNet-1k's, shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib import resources


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
