"""What the tests share, so that no test module imports another: paths, the tiny model and
its training runs, hand-made checkpoints, and dataset files written in their official layouts.
"""

from __future__ import annotations

import gzip
import json
import pickle
import struct
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from resnext.checkpoint import (
    load_checkpoint,
    make_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from resnext.config import Config, from_dict
from resnext.data import DIGITS_CLASSES, Preprocess, build_splits
from resnext.data.digits import DIGITS_MEAN, DIGITS_STD
from resnext.models import create_model

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"  # data files the tests read (pinned numbers)

# --- the tiny model and its training runs ---------------------------------------------

TINY = {"widths": (16, 32, 64), "stem_width": 16}  # a ResNeXt-29 that runs in milliseconds
# TINY as `resnext train` overrides, progress bar off: where every tiny training run starts.
TINY_RUN = (
    "model.name=resnext29_2x4d",
    f"model.widths=[{','.join(map(str, TINY['widths']))}]",
    f"model.stem_width={TINY['stem_width']}",
    "train.progress=false",
)


def tiny_run(*overrides: str) -> list[str]:
    """`resnext train` overrides for a run of the tiny ResNeXt-29: TINY_RUN, then ``overrides``
    (the last value given for a key wins, so a test can change any of TINY_RUN's)."""
    return [*TINY_RUN, *overrides]


def run_records(run: Path) -> list[dict]:
    """A run folder's metrics.jsonl, without its wall-clock fields."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(x).items() if k not in ("seconds", "img_per_s")} for x in lines
    ]


#: torchrun, as the tests launch it (this interpreter's torch.distributed.run)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def torchrun_standalone(*args: str, nproc: int = 2) -> list[str]:
    """The command line of a one-machine torchrun job of ``nproc`` processes running ``args``
    (``-m resnext train ...``, or a script and its arguments)."""
    return [*TORCHRUN, "--standalone", "--nproc-per-node", str(nproc), *args]


def torchrun_workers(launcher: int) -> dict[int, int]:
    """The worker processes of the torchrun launcher ``launcher`` (Linux): rank -> pid, read
    from the launcher's children and their RANK environment variable. Children that end while
    they are read are left out."""
    children: list[int] = []
    for task in Path(f"/proc/{launcher}/task").iterdir():
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # a thread that ended meanwhile
            continue
    ranks = {}
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[int(rank)] = pid
    return ranks


def assert_same_training_state(a_dir: Path, b_dir: Path) -> None:
    """Two run folders' last.pt hold bitwise the same training state at the same place (model,
    EMA, SGD momentum, schedule) and their metrics.jsonl the same records: an interrupted run
    that was resumed against the uninterrupted one."""
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert (a["epoch"], a["epoch_step"], a["step"]) == (b["epoch"], b["epoch_step"], b["step"])
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    momenta = a["optimizer"]["state"], b["optimizer"]["state"]
    assert momenta[0].keys() == momenta[1].keys() and momenta[0]
    for i, state in momenta[0].items():
        assert torch.equal(state["momentum_buffer"], momenta[1][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    assert run_records(a_dir) == run_records(b_dir)


# --- checkpoints and evaluation ---------------------------------------------------------

# The preprocessing `resnext train` stores for the built-in digits (the demo's data config).
DIGITS_PRE = Preprocess.from_config(Config().data, DIGITS_MEAN, DIGITS_STD).to_dict()


def tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    num_classes: int = 10,
    classes: list[str] | None = None,
    data: dict[str, Any] | None = None,
    ema: dict[str, torch.Tensor] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """A checkpoint of a tiny ResNeXt-29 (weights seeded by ``seed``), written by the same
    ``make_checkpoint``/``save_checkpoint`` that ``resnext train`` uses. Digits classes and
    preprocessing by default; ``data`` is the stored data config section."""
    torch.manual_seed(seed)
    model = create_model("resnext29_2x4d", num_classes=num_classes, **TINY)
    if classes is None:
        classes = list(DIGITS_CLASSES) if num_classes == 10 else []
    payload = make_checkpoint(
        model,
        classes=classes,
        preprocess=DIGITS_PRE,
        config=from_dict({"data": data or {"name": "digits"}}).to_dict(),
        ema=ema,
        training={"epoch": 1, "epoch_step": 0, "step": 1},
        metrics=metrics,
    )
    save_checkpoint(path, payload)
    return path


def train_tiny_digits(folder: Path, epochs: int = 5) -> Path:
    """``best.pt`` of the tiny ResNeXt-29 trained on digits by ``resnext train`` (in this
    process), for tests that need a model that has learnt something; no EMA or label
    smoothing, so a few epochs suffice."""
    from resnext.cli import main

    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    argv = tiny_run(
        f"train.epochs={epochs}", "train.ema_decay=null", "train.label_smoothing=0",
        "optim.lr=0.2", "data.val_fraction=0.05", "train.tensorboard=false",
        f"train.output_dir={folder}", "train.run_name=digits",
    )  # fmt: skip
    try:
        rc = main(["train", *argv])
    finally:  # `resnext train` sets process-wide torch flags
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    if rc != 0:
        raise RuntimeError(f"resnext train {' '.join(argv)} exited {rc}")
    return folder / "digits" / "best.pt"


SMALL_TEST = "data.test_fraction=0.03"  # 50 of the 1,797 digits: keeps the tests fast


def direct_probs(ckpt: Path, test_fraction: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax of the checkpoint's model on the digits test split, computed by hand."""
    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    test = build_splits(from_dict({"data": {"test_fraction": test_fraction}}).data).test
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        return model(x).softmax(1), y


# --- dataset files in their official layouts -------------------------------------------

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def _cifar_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def dump_pickle(obj: dict, path: Path) -> None:
    """``obj`` pickled with protocol 2, as CIFAR's originals (Python 2 cPickle) are."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root: Path, per_batch: int = 20, n_test: int = 20) -> Path:
    """``root/cifar-10-batches-py/`` with data_batch_1..5, test_batch, batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(k + i) % 10 for k in range(per_batch)]
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels,
            b"data": _cifar_images(per_batch, i),
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)],
        }
        dump_pickle(batch, folder / f"data_batch_{i}")
    test = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [k % 10 for k in range(n_test)],
        b"data": _cifar_images(n_test, 99),
        b"filenames": [f"test_{k}.png".encode() for k in range(n_test)],
    }
    dump_pickle(test, folder / "test_batch")
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_vis": 3072,
    }
    dump_pickle(meta, folder / "batches.meta")
    (folder / "readme.html").write_text("<html></html>")
    return folder


def write_cifar100(root: Path, n_train: int = 200, n_test: int = 50) -> Path:
    """``root/cifar-100-python/`` with train, test, meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        fine = [k % 100 for k in range(n)]
        batch = {
            b"filenames": [f"{split}_{k}.png".encode() for k in range(n)],
            b"batch_label": f"{split} batch".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [y // 5 for y in fine],
            b"data": _cifar_images(n, len(split)),
        }
        dump_pickle(batch, folder / split)
    meta = {
        b"fine_label_names": [f"fine{k:02d}".encode() for k in range(100)],
        b"coarse_label_names": [f"coarse{k:02d}".encode() for k in range(20)],
    }
    dump_pickle(meta, folder / "meta")
    return folder


def tar_gz(folder: Path, archive: Path) -> Path:
    """Pack ``folder`` as the distributed archive does (top folder name kept)."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An MNIST IDX file of unsigned bytes (``path`` + ``.gz``, gzipped, when ``gz``)."""
    magic = 0x00000800 | array.ndim  # 0x08 = unsigned byte, then the number of dimensions
    raw = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def write_mnist(root: Path, n_train: int = 100, n_test: int = 20, gz: bool = True) -> Path:
    """MNIST's four IDX files (train-*, t10k-*) in ``root``, random pixels, labels 0..9."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


def write_jpeg(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """A JPEG of seeded noise, ``size`` as (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


def write_image_tree(root: Path, classes: list[str], per_class: int, seed: int = 0) -> None:
    """``root/<class>/<class>_<k>.jpg``: an image folder, ``per_class`` JPEGs a class."""
    for ci, c in enumerate(classes):
        for k in range(per_class):
            write_jpeg(root / c / f"{c}_{k}.jpg", seed=seed + 100 * ci + k)


def _noise_jpeg(path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path, quality=90)


def make_truncated_jpeg(path: Path) -> None:
    """A JPEG cut to 70% of its bytes: it opens, then fails while decoding."""
    _noise_jpeg(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])  # header intact, scan data cut


# --- Tiny ImageNet-200, as its official zip extracts -----------------------------------

# Three real Tiny ImageNet classes, deliberately not in sorted order in wnids.txt.
WNIDS = ["n03126707", "n01443537", "n02124075"]  # crane (machine), goldfish, Egyptian cat
WORDS = {
    "n01443537": "goldfish, Carassius auratus",
    "n02124075": "Egyptian cat",
    "n03126707": "crane",
    "n00001740": "entity",  # words.txt lists all of WordNet, not only the 200 classes
}
TRAIN_PER_CLASS = 4
# val/val_annotations.txt: file, wnid and a box, tab-separated, in the zip's order.
VAL = [("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n03126707"), ("val_2.JPEG", "n01443537")]
VAL += [("val_3.JPEG", "n02124075"), ("val_4.JPEG", "n01443537")]


def write_tiny_imagenet(root: Path) -> Path:
    """A Tiny ImageNet-200 tree as the official zip extracts it (64x64 JPEGs)."""
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in WORDS.items()))
    for ci, wnid in enumerate(WNIDS):
        boxes = []
        for k in range(TRAIN_PER_CLASS):
            name = f"{wnid}_{k}.JPEG"
            write_jpeg(root / "train" / wnid / "images" / name, (64, 64), seed=10 * ci + k)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    for k, (name, _) in enumerate(VAL):
        write_jpeg(root / "val" / "images" / name, (64, 64), seed=500 + k)
    lines = [
        f"{name}\t{wnid}\t{k}\t{k + 1}\t{40 + k}\t{50 + k}\n" for k, (name, wnid) in enumerate(VAL)
    ]
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    for k in range(2):
        write_jpeg(root / "test" / "images" / f"test_{k}.JPEG", (64, 64), seed=900 + k)
    return root
