"""Image datasets on disk: class-folder trees (ImageNet's layout) and ``path,label`` lists.

ImageFolder (``data.name=imagefolder``)::

    root/train/<class>/*.jpg      classes = the sorted sub-folder names of train/
    root/val/<class>/*.jpg        the same class names (a subset is fine)
    root/val/*.jpg + val_labels   or a flat folder and a "filename label" file per line,
                                  label a class name or an int index into the classes

``data.val_dir=null`` carves the val split from train instead (stratified, seeded);
``data.test_dir`` (optional, class folders or flat with ``data.test_labels``) is the
test split. Files without an image extension are ignored; files with one that do not
decode are bad files (``data.on_bad_file``).

One folder of classes, no splits (Caltech-101/256 style)::

    root/<class>/*.jpg            classes = the sorted sub-folder names of root

is what ``data.root`` holds when ``root/<data.train_dir>`` does not exist (timm's folder
datasets make the same choice: no split folder, the root is the dataset), or is the root
itself (``data.train_dir=.``: the same folder, read the same way). Val and test are
then carved from each class, ``data.val_fraction`` and ``data.test_fraction`` of its images
(``data.split_seed``), and recorded: the run writes the file lists to ``splits.json`` in
its folder, and a resume and ``resnext eval`` read them back (``data.split_file``) instead
of carving again (:mod:`resnext.data.splitting`). A root without ``train/`` but with a
``val/`` or ``test/`` folder is neither layout and is refused.

Image list (``data.name=imagelist``): ``data.train_list`` (and optionally ``val_list``,
``test_list``) are files of ``path,label`` lines. Image paths are relative to the list
file's folder, or to ``data.root`` if the list's first image is not found there. Labels
are all int indices (classes ``"0".."K-1"``) or all class names (classes = the sorted
names of the train list).
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from ..errors import DataError
from .base import Splits
from .digits import stratified_split
from .images import ImageFiles, is_image_file, list_images
from .splitting import SPLIT_NAMES, SplitRecord, apply_record, carve_one_folder
from .transforms import IMAGENET_MEAN, IMAGENET_STD

Samples = list[tuple[str, int]]  # (image path, label) pairs of one split


def _folder_classes(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_class_tree(folder: Path, classes: list[str], what: str) -> list[tuple[str, int]]:
    """(path, label) of every image under ``folder/<class>/``, labels indexing ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    for name in _folder_classes(folder):
        if name not in index:
            raise DataError(
                f"{what} folder {str(folder)!r} has class folder {name!r}, which the train "
                f"folder lacks; the {len(classes)} train classes are e.g. {classes[:5]}"
            )
        files = list_images(folder / name)
        if not files and what == "train":
            raise DataError(
                f"class folder {str(folder / name)!r} holds no images (extensions: .jpg, "
                ".jpeg, .png, ...); remove it or add its images"
            )
        samples.extend((str(p), index[name]) for p in files)
    return samples


def _parse_label(text: str, classes: list[str], where: str) -> int:
    # A class name wins over an index, so numeric class folders ("0".."10") mean themselves.
    if text in classes:
        return classes.index(text)
    try:
        label = int(text)
    except ValueError:
        raise DataError(
            f"{where}: label {text!r} is neither a class name nor an int index; classes are "
            f"e.g. {classes[:5]}"
        ) from None
    if not 0 <= label < len(classes):
        raise DataError(f"{where}: label {label} is outside 0..{len(classes) - 1}")
    return label


def _read_label_file(
    folder: Path, label_file: Path, classes: list[str], what: str
) -> list[tuple[str, int]]:
    """A flat image folder with a ``filename label`` file (ImageNet's val as often shipped)."""
    if not label_file.is_file():
        raise DataError(
            f"{what} label file {str(label_file)!r} does not exist; it must list "
            '"filename label" per line (label a class name or an int index)'
        )
    samples: list[tuple[str, int]] = []
    missing: list[str] = []
    for n, line in enumerate(label_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{label_file}:{n}: expected 'filename label', got {line!r}")
        name, label_text = parts
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        samples.append((str(path), _parse_label(label_text, classes, f"{label_file}:{n}")))
    if missing:
        raise DataError(
            f"{len(missing)} file(s) listed in {str(label_file)!r} are not in "
            f"{str(folder)!r}, e.g. {missing[:3]}"
        )
    return samples


def _resolve(root: Path | None, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() or root is None else root / p


def _read_split_dir(
    root: Path, sub: str, labels: str | None, classes: list[str], what: str
) -> list[tuple[str, int]]:
    folder = _resolve(root, sub)
    key = f"data.{what}_dir"
    if not folder.is_dir():
        hint = " or data.val_dir=null to carve val from train" if what == "val" else ""
        raise DataError(f"{key}: folder {str(folder)!r} does not exist; set {key}{hint}")
    if labels is not None:
        return _read_label_file(folder, _resolve(root, labels), classes, what)
    if not _folder_classes(folder):
        flat = [p for p in folder.iterdir() if is_image_file(p.name)]
        if flat:
            raise DataError(
                f"{what} folder {str(folder)!r} holds images but no class folders; set "
                f"data.{what}_labels to a file of 'filename label' lines"
            )
    samples = _scan_class_tree(folder, classes, what)
    if not samples:
        raise DataError(f"{what} folder {str(folder)!r} holds no images")
    return samples


def _carve(
    samples: list[tuple[str, int]], fraction: float, seed: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    keep, val = stratified_split([y for _, y in samples], (fraction,), seed)
    return [samples[i] for i in keep], [samples[i] for i in val]


def imagefolder_splits(cfg: DataConfig) -> Splits:
    """Train/val(/test) image-folder splits, ImageNet mean/std (PAPER.md)."""
    if cfg.root is None:
        raise DataError(
            "data.root is not set; give the folder holding train/<class>/*.jpg (and val/), "
            "or one folder of class folders, <class>/*.jpg"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={cfg.root!r} is not a folder")
    train_dir = _resolve(root, cfg.train_dir)
    if not train_dir.exists():
        return _one_folder_splits(cfg, root)
    if train_dir.resolve() == root.resolve():
        # The root is the train folder: one folder of classes, whose val and test splits are
        # carved (data.val_fraction, data.test_fraction) as when it has no train folder, not
        # a split tree with no test split that would pass over data.test_fraction unsaid.
        return _one_folder_splits(cfg, root)
    if not train_dir.is_dir():
        raise DataError(f"train folder {str(train_dir)!r} is not a folder (data.train_dir)")
    if cfg.split_file is not None:
        raise DataError(
            f"data.split_file={cfg.split_file!r} records a split carved from one folder of "
            f"classes, but data.root={cfg.root!r} has the train folder {str(train_dir)!r}, so "
            "its splits are its folders; set data.split_file=null"
        )
    classes = _folder_classes(train_dir)
    if not classes:
        raise DataError(
            f"train folder {str(train_dir)!r} has no class sub-folders; expected "
            "<train>/<class>/<image>, one folder per class"
        )
    train = _scan_class_tree(train_dir, classes, "train")
    info: dict = {"source": str(root), "classes_from": str(train_dir)}
    if cfg.val_dir is None:
        if cfg.val_fraction > 0:
            train, val = _carve(train, cfg.val_fraction, cfg.split_seed)
            info["val"] = f"{len(val)} images ({cfg.val_fraction:g}) carved from train"
        else:
            val = []
            info["val"] = "none"
    else:
        val = _read_split_dir(root, cfg.val_dir, cfg.val_labels, classes, "val")
        info["val"] = str(_resolve(root, cfg.val_dir))
    test = None
    if cfg.test_dir is not None:
        test = _read_split_dir(root, cfg.test_dir, cfg.test_labels, classes, "test")
    return _image_splits(train, val, test, classes, cfg.on_bad_file, info)


def _one_folder_splits(cfg: DataConfig, root: Path) -> Splits:
    """``root/<class>/*`` with no split folders (no train folder, or ``data.train_dir=.``):
    train, val and test carved per class, or read back from a recorded split
    (``data.split_file``)."""
    classes = _folder_classes(root)
    train_dir = _resolve(root, cfg.train_dir)
    if train_dir.exists():
        why = f"is its own train folder (data.train_dir={cfg.train_dir!r})"
        lead = f"data.root={cfg.root!r} {why}, and it holds"
    else:
        why = f"has no train folder ({cfg.train_dir}/)"
        lead = f"train folder {str(train_dir)!r} does not exist, but data.root={cfg.root!r} holds"
    split_like = sorted(
        {cfg.train_dir, "train", "val", "test", *(d for d in (cfg.val_dir, cfg.test_dir) if d)}
        & set(classes)
    )
    if split_like:
        raise DataError(
            f"{lead} {split_like}: a split tree needs its train folder (set data.train_dir to "
            "its name), and one folder of classes must not have folders named like splits "
            "(rename them)"
        )
    if not classes:
        raise DataError(
            f"data.root={cfg.root!r} has neither a train folder ({cfg.train_dir}/, set "
            "data.train_dir) nor class folders: expected root/train/<class>/<image> or "
            "root/<class>/<image>"
        )
    given = {"data.test_dir": cfg.test_dir, "data.val_labels": cfg.val_labels}
    given["data.test_labels"] = cfg.test_labels
    if cfg.val_dir is not None and _resolve(root, cfg.val_dir).is_dir():  # not the default's
        given["data.val_dir"] = cfg.val_dir
    clash = [f"{k}={v!r}" for k, v in given.items() if v is not None]
    if clash:
        raise DataError(
            f"{', '.join(clash)} names a split file or folder, but data.root={cfg.root!r} "
            f"{why}: it is read as one folder of classes whose val and test splits are carved "
            "(data.val_fraction, data.test_fraction); unset "
            f"{', '.join(k for k, v in given.items() if v is not None)}, or add the train folder"
        )
    samples = _scan_class_tree(root, classes, "train")
    if cfg.split_file is None:
        record = carve_one_folder(
            samples, classes, root, cfg.val_fraction, cfg.test_fraction, cfg.split_seed
        )
        notes: list[str] = []
        origin = f"carved per class with split_seed {cfg.split_seed}"
    else:
        record = SplitRecord.read(Path(cfg.split_file).expanduser())
        gone = sorted(set(record.classes) - set(classes))
        if gone:
            raise DataError(
                f"data.root={cfg.root!r} lacks the class folder(s) {gone[:5]} of the split "
                f"recorded in {cfg.split_file!r}; point data.root at the dataset the run used"
            )
        on_disk = [Path(p).relative_to(root).as_posix() for p, _ in samples]
        notes = apply_record(record, on_disk, repr(cfg.split_file))
        origin = f"read from {cfg.split_file}"
    parts = {s: [(str(root / p), y) for p, y in record.samples(s)] for s in SPLIT_NAMES}
    counts = " / ".join(f"{len(v)} {s}" for s, v in parts.items())
    info = {
        "source": str(root),
        "classes_from": str(root),
        "split": f"one folder of classes: {counts}, {origin}",
        "split_record": record,  # the run writes it to its folder (splits.json)
        "notes": notes,  # what the user should know (files on disk the record lacks)
    }
    return _image_splits(
        parts["train"], parts["val"], parts["test"], record.classes, cfg.on_bad_file, info
    )


def _read_list(list_path: Path, root: Path | None) -> list[tuple[str, str]]:
    """``(image path, label text)`` rows of a ``path,label`` file, paths resolved."""
    if not list_path.is_file():
        raise DataError(
            f"list file {str(list_path)!r} does not exist; it must hold 'path,label' lines"
        )
    rows: list[tuple[str, str]] = []
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#") or line.lower().replace(" ", "") == "path,label":
            continue
        if "," not in line:
            raise DataError(f"{list_path}:{n}: expected 'path,label', got {line!r}")
        path, label = (s.strip() for s in line.rsplit(",", 1))
        rows.append((path, label))
    if not rows:
        raise DataError(f"list file {str(list_path)!r} has no 'path,label' lines")
    base = list_path.parent
    first = Path(rows[0][0]).expanduser()
    if not first.is_absolute() and not (base / first).is_file():
        if root is not None and (root / first).is_file():
            base = root
        else:
            tried = [str(base / first)] + ([str(root / first)] if root is not None else [])
            raise DataError(
                f"{list_path}: first image {rows[0][0]!r} not found (tried {tried}); paths "
                "are relative to the list file's folder or to data.root"
            )
    return [(str(base / Path(p).expanduser()), y) for p, y in rows]


def imagelist_splits(cfg: DataConfig) -> Splits:
    """Splits from ``path,label`` list files; val carved from train if no val list."""
    if cfg.train_list is None:
        raise DataError("data.train_list is not set; give a file of 'path,label' lines")
    root = Path(cfg.root).expanduser() if cfg.root is not None else None
    lists = {"train": cfg.train_list, "val": cfg.val_list, "test": cfg.test_list}
    rows = {k: _read_list(_resolve(root, v), root) for k, v in lists.items() if v is not None}
    all_labels = [y for r in rows.values() for _, y in r]
    n_int = sum(_is_int(y) for y in all_labels)
    if n_int == len(all_labels):
        n = 1 + max(int(y) for y in all_labels)
        if min(int(y) for y in all_labels) < 0:
            raise DataError("list labels must be int indices >= 0 or class names")
        classes = [str(i) for i in range(n)]
        to_label = {k: [(p, int(y)) for p, y in r] for k, r in rows.items()}
    elif n_int == 0:
        classes = sorted({y for _, y in rows["train"]})
        index = {c: i for i, c in enumerate(classes)}
        to_label = {}
        for k, r in rows.items():
            unknown = sorted({y for _, y in r} - index.keys())
            if unknown:
                raise DataError(
                    f"data.{k}_list has class names not in the train list: {unknown[:5]}"
                )
            to_label[k] = [(p, index[y]) for p, y in r]
    else:
        raise DataError(
            f"list labels must be all int indices or all class names; found {n_int} int and "
            f"{len(all_labels) - n_int} name labels"
        )
    train, val = to_label["train"], to_label.get("val")
    info: dict = {"source": str(_resolve(root, cfg.train_list))}
    if val is None and cfg.val_fraction > 0:
        train, val = _carve(train, cfg.val_fraction, cfg.split_seed)
        info["val"] = f"{len(val)} images ({cfg.val_fraction:g}) carved from train"
    test = to_label.get("test")
    return _image_splits(train, val, test, classes, cfg.on_bad_file, info)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _image_splits(
    train: Samples,
    val: Samples | None,
    test: Samples | None,
    classes: list[str],
    policy: str,
    info: dict,
) -> Splits:
    """Image-file splits with the bad-file policy, normalised with ImageNet's statistics."""
    return Splits(
        ImageFiles(train, policy, "train"),
        ImageFiles(val, policy, "val") if val else None,
        ImageFiles(test, policy, "test") if test else None,
        classes,
        IMAGENET_MEAN,
        IMAGENET_STD,
        info,
    )
