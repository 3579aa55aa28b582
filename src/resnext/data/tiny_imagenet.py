"""Tiny ImageNet-200 as distributed (``tiny-imagenet-200.zip``, Stanford CS231n), read in place.

``data.root`` is the extracted ``tiny-imagenet-200/`` folder (or the folder holding it)::

    wnids.txt                          the 200 WordNet ids, one a line
    words.txt                          WordNet id <TAB> its names (all of WordNet; not needed)
    train/<wnid>/images/<wnid>_<k>.JPEG     500 64x64 images a class
    train/<wnid>/<wnid>_boxes.txt      bounding boxes (not used: classification)
    val/images/val_<k>.JPEG            10,000 images
    val/val_annotations.txt            file <TAB> wnid <TAB> x0 <TAB> y0 <TAB> x1 <TAB> y1
    test/images/test_<k>.JPEG          10,000 images without labels

Classes are the wnids sorted (label order as torchvision's ImageFolder on ``train/``);
``val`` is the validation split. There is **no test split**: the test images carry no
labels, so they cannot be scored; the run keeps the model selected on val and says there
is no final test. A ``val/<wnid>/...`` tree (what the common "reorganise val" scripts
make) is read as well. The 200 classes are ImageNet-1k classes, so predictions name them
from the package's ImageNet table (:func:`resnext.inference.classes.readable_names`),
the same WordNet names words.txt holds. Normalised with ImageNet's mean/std.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import Splits
from .images import ImageFiles, is_image_file, list_images
from .transforms import IMAGENET_MEAN, IMAGENET_STD

FOLDER = "tiny-imagenet-200"  # the folder the official zip extracts to


def _dataset_folder(root: str | None) -> Path:
    """The folder holding wnids.txt: ``root`` itself or ``root/tiny-imagenet-200``."""
    layout = "wnids.txt, train/<wnid>/images/*.JPEG and val/val_annotations.txt"
    if root is None:
        raise DataError(f"data.root is not set; give the tiny-imagenet-200 folder ({layout})")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"data.root={root!r} is not a folder; give the tiny-imagenet-200 folder")
    for folder in (base, base / FOLDER):
        if (folder / "wnids.txt").is_file():
            return folder
    found = sorted(p.name for p in base.iterdir())[:8]
    raise DataError(
        f"data.root={root!r} has no wnids.txt (it holds {found or 'nothing'}); give the "
        f"extracted {FOLDER} folder, which holds {layout}"
    )


def _read_lines(path: Path) -> list[str]:
    """The lines of one of the dataset's text files, or a :class:`DataError` naming it."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text (byte {e.start}: {e.reason}); restore it from "
            "the Tiny ImageNet zip"
        ) from None
    except OSError as e:
        raise DataError(f"cannot read {str(path)!r}: {e.strerror or e}") from None


def _read_wnids(path: Path) -> list[str]:
    wnids = [line.strip() for line in _read_lines(path) if line.strip()]
    if not wnids:
        raise DataError(f"{str(path)!r} lists no WordNet ids; it must hold one id a line")
    dup = sorted(w for w, n in Counter(wnids).items() if n > 1)
    if dup:
        raise DataError(f"{str(path)!r} lists {dup[:5]} more than once")
    return sorted(wnids)


def _train_samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    train = folder / "train"
    if not train.is_dir():
        raise DataError(f"{str(train)!r} does not exist; expected train/<wnid>/images/*.JPEG")
    extra = sorted({d.name for d in train.iterdir() if d.is_dir()} - set(classes))
    if extra:
        raise DataError(
            f"{str(train)!r} has class folder(s) {extra[:5]} that wnids.txt does not list; "
            "add them to wnids.txt or remove the folders"
        )
    samples: list[tuple[str, int]] = []
    for label, wnid in enumerate(classes):
        files = list_images(train / wnid) if (train / wnid).is_dir() else []
        if not files:
            raise DataError(
                f"wnids.txt lists {wnid!r} but {str(train / wnid / 'images')!r} holds no "
                "images; restore the class folder or remove the id from wnids.txt"
            )
        samples.extend((str(p), label) for p in files)
    return samples


def _val_samples(folder: Path, classes: list[str]) -> list[tuple[str, int]]:
    val = folder / "val"
    notes = val / "val_annotations.txt"
    index = {w: i for i, w in enumerate(classes)}
    if not notes.is_file():
        if val.is_dir() and any(d.name in index for d in val.iterdir() if d.is_dir()):
            return _val_class_folders(val, index)
        raise DataError(
            f"{str(notes)!r} does not exist; Tiny ImageNet's val split is val/images/*.JPEG "
            "with val/val_annotations.txt (file, wnid, box per line, tab-separated)"
        )
    images = val / "images"
    samples: list[tuple[str, int]] = []
    named: set[str] = set()
    for n, line in enumerate(_read_lines(notes), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{notes}:{n}: expected 'file<TAB>wnid<TAB>x0<TAB>y0<TAB>x1<TAB>y1', got {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise DataError(
                f"{notes}:{n}: {name} is labelled {wnid!r}, which wnids.txt does not list; "
                "is this the val folder of this dataset?"
            )
        if name in named:
            raise DataError(f"{notes}:{n}: {name} is annotated a second time")
        named.add(name)
        samples.append((str(images / name), index[wnid]))
    on_disk = (
        {p.name for p in images.iterdir() if is_image_file(p.name)} if images.is_dir() else set()
    )
    missing = sorted(named - on_disk)
    if missing:
        raise DataError(
            f"{len(missing)} image(s) that {str(notes)!r} annotates are not in "
            f"{str(images)!r}, e.g. {missing[:3]}; restore them (the zip's val/images)"
        )
    unlabelled = sorted(on_disk - named)
    if unlabelled:
        raise DataError(
            f"{len(unlabelled)} image(s) in {str(images)!r} have no line in "
            f"{str(notes)!r}, e.g. {unlabelled[:3]}; an unlabelled image cannot be scored: "
            "remove it or annotate it"
        )
    if not samples:
        raise DataError(f"{str(notes)!r} annotates no images")
    return sorted(samples)


def _val_class_folders(val: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """``val/<wnid>/**`` (val reorganised into class folders)."""
    samples: list[tuple[str, int]] = []
    for d in sorted(p for p in val.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.name not in index:
            raise DataError(
                f"val folder {str(d)!r} is not a class of wnids.txt; remove it, or restore "
                "val/images with val/val_annotations.txt"
            )
        samples.extend((str(p), index[d.name]) for p in list_images(d))
    return samples


def tiny_imagenet_splits(cfg: DataConfig) -> Splits:
    """Train (100,000 images) and val (10,000): the labelled splits; no test split."""
    folder = _dataset_folder(cfg.root)
    classes = _read_wnids(folder / "wnids.txt")
    train = _train_samples(folder, classes)
    val = _val_samples(folder, classes)
    info = {
        "source": str(folder),
        "val": str(folder / "val"),
        "notes": [
            "Tiny ImageNet's test images have no labels, so there is no test split: the "
            "model is selected on val, and there is no final test"
        ],
    }
    return Splits(
        ImageFiles(train, cfg.on_bad_file, "train"),
        ImageFiles(val, cfg.on_bad_file, "val"),
        None,
        classes,
        IMAGENET_MEAN,
        IMAGENET_STD,
        info,
    )
