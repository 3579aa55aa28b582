"""WebDataset shards: `resnext pack` (the index, the bytes stored) and the shard streams
(`data.name=webdataset`): equal to the source where order is kept, exact epoch lengths for
every process, an exact replay after a mid-epoch resume, and a clear error for every way a
pack can be wrong."""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import re
import shutil
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnext.cli import main
from resnext.config import ConfigError, DataConfig
from resnext.data import (
    BadImageError,
    LoaderOrder,
    bad_file_report,
    build_splits,
    make_loader,
    set_loader_epoch,
)
from resnext.data.pack import pack_dataset, parse_size
from resnext.data.shards import (
    ShardError,
    ShardSplit,
    plan_epoch,
    read_shard,
    shard_order,
    webdataset_splits,
)
from resnext.errors import DataError

BATCH = 32


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits (1259 train / 179 val / 359 test) in shards of at most 100."""
    out = tmp_path_factory.mktemp("pack") / "digits"
    pack_dataset(DataConfig(), out, shard_samples=100, progress=False, say=lambda _: None)
    return out


def _shards(root: Path, **data) -> object:
    return build_splits(DataConfig(name="webdataset", root=str(root), **data))


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def _batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x, torch.as_tensor(y)) for x, y in loader]


def _samples(images: torch.Tensor, labels: torch.Tensor | None = None) -> Counter:
    """Each sample named by its bytes (and label): a multiset two passes can be compared by."""
    ys = labels.tolist() if labels is not None else [None] * len(images)
    return Counter(
        (hashlib.sha1(x.contiguous().numpy().tobytes()).hexdigest(), y)
        for x, y in zip(images, ys, strict=True)
    )


# -- pack -----------------------------------------------------------------------------------
def test_pack_writes_each_split_with_counts_classes_and_shard_sizes(packed: Path) -> None:
    index = json.loads((packed / "index.json").read_text())
    source = build_splits(DataConfig())
    assert index["format"] == "resnext-webdataset" and index["version"] == 1
    assert index["classes"] == source.classes and index["source"]["name"] == "digits"
    assert index["mean"] == list(source.mean) and index["std"] == list(source.std)
    for name in ("train", "val", "test"):
        raw = getattr(source, name).base
        entry = index["splits"][name]
        assert entry["count"] == len(raw)
        assert entry["class_counts"] == np.bincount(raw.labels, minlength=10).tolist()
        assert len(entry["shards"]) == math.ceil(len(raw) / 100)  # 1259 -> 13 shards
        for shard in entry["shards"]:
            path = packed / shard["file"]
            assert path.stat().st_size == shard["bytes"]
            names = [m.name for m in _members(path)]
            assert len(names) == 2 * shard["count"]  # one image and one label each
            assert all(n.endswith((".png", ".cls")) for n in names)
    # val and test in the reader's order; train shuffled with the packing seed (0).
    keys = [
        int(m.name.split(".")[0])
        for s in index["splits"]["train"]["shards"]
        for m in _members(packed / s["file"])
        if m.name.endswith(".png")
    ]
    order = list(range(1259))
    random.Random(0).shuffle(order)
    assert keys == order
    first_val = _members(packed / index["splits"]["val"]["shards"][0]["file"])
    names = [m.name for m in first_val[:4]]
    assert names == ["00000000.cls", "00000000.png", "00000001.cls", "00000001.png"]


def test_packing_twice_gives_the_same_bytes(packed: Path, tmp_path: Path) -> None:
    pack_dataset(
        DataConfig(), tmp_path, shard_samples=100, splits=["val"], progress=False, say=print
    )
    assert (tmp_path / "val-000001.tar").read_bytes() == (packed / "val-000001.tar").read_bytes()


def test_another_packing_seed_has_another_fingerprint(tmp_path: Path, capsys) -> None:
    """One shard holding the same images in another order has the same size (tar pads to
    10 KiB records): the fingerprint hashes each shard's SHA-256, recorded while packing."""
    fingerprints, sizes = [], []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        args = ["pack", "data.name=digits", "-o", str(out), "--splits", "train", "--no-progress"]
        assert main([*args, "--shard-samples", "5000", "--seed", str(seed)]) == 0
        [shard] = json.loads((out / "index.json").read_text())["splits"]["train"]["shards"]
        assert shard["sha256"] == hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest()
        sizes.append(shard["bytes"])
        fingerprints.append(_shards(out).train.base.fingerprint)
    assert sizes[0] == sizes[1]  # names, counts and sizes alone cannot tell the packs apart
    assert fingerprints[0] != fingerprints[1]


def test_a_pack_without_shard_digests_keeps_its_fingerprint(copy: Path) -> None:
    """Packs written before the digests were recorded still read, fingerprinted as then (by
    names, counts and sizes), so their runs' checkpoints still resume."""
    index = json.loads((copy / "index.json").read_text())
    for entry in index["splits"].values():
        for shard in entry["shards"]:
            del shard["sha256"]
    (copy / "index.json").write_text(json.dumps(index))
    train = _shards(copy).train.base
    listing = [(s["file"], s["count"], s["bytes"]) for s in index["splits"]["train"]["shards"]]
    assert train.fingerprint == hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]


def test_pack_command_prints_its_table_and_refuses_a_used_folder(tmp_path: Path, capsys) -> None:
    args = ["pack", "data.name=digits", "-o", str(tmp_path), "--splits", "test", "--no-progress"]
    assert main([*args, "--shard-size", "200k"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^test +359 ", out, re.M) and "data.name=webdataset data.root=" in out
    index = json.loads((tmp_path / "index.json").read_text())
    assert list(index["splits"]) == ["test"]
    assert all(s["bytes"] <= 200 * 1024 for s in index["splits"]["test"]["shards"])
    assert main(args) == 2
    assert "already holds a pack" in capsys.readouterr().err


def test_shard_sizes_parse() -> None:
    assert parse_size("256MB") == 256 * 1024**2 and parse_size("1GiB") == 1024**3
    assert parse_size("500k") == 512_000 and parse_size("1000") == 1000
    for text in ("big", "inf", "nan", "-inf", "1e999", "infMB"):
        with pytest.raises(ConfigError, match="not a size"):
            parse_size(text)


# -- reading in order -------------------------------------------------------------------------
def test_val_and_test_from_shards_equal_the_source_bitwise(packed: Path) -> None:
    """PNG is lossless and each sample keeps its index as its key (and its seed): one process
    reads val and test in the source's order, the same tensors bit for bit."""
    source, shards = build_splits(DataConfig()), _shards(packed)
    assert shards.classes == source.classes and shards.preprocess == source.preprocess
    for name in ("val", "test"):
        a = _batches(make_loader(getattr(source, name), BATCH))
        b = _batches(make_loader(getattr(shards, name), BATCH))
        assert len(a) == len(b) == math.ceil(len(getattr(source, name)) / BATCH)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_evaluation_under_ddp_reads_every_sample_exactly_once(packed: Path) -> None:
    """Unshuffled (as evaluation reads), padding asked for or not: the three processes'
    shares together hold every test image exactly once."""
    test = _shards(packed).test
    whole = torch.cat([x for x, _ in make_loader(test, BATCH)])
    parts = [
        torch.cat(
            [x for x, _ in make_loader(test, BATCH, LoaderOrder(rank=r, world_size=3, pad=r == 0))]
        )
        for r in range(3)
    ]
    assert sum(len(p) for p in parts) == len(whole) == 359
    key = lambda t: sorted(t.flatten(1).sum(1).tolist())  # noqa: E731 (an image's fingerprint)
    assert key(torch.cat(parts)) == key(whole)
    # Sums can coincide; the bytes name the sample: the same multiset of images, exactly.
    assert _samples(torch.cat(parts)) == _samples(whole)
    assert len(_samples(whole)) > 0.95 * len(whole)  # the bytes tell the digits apart


# -- training streams -----------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("workers", [1, 2])
def test_every_process_gets_the_same_batches_and_every_shard_is_dealt_once(
    world: int, workers: int
) -> None:
    counts = [100] * 12 + [59]  # 1259 samples
    plans = [
        plan_epoch(
            counts,
            BATCH,
            LoaderOrder(shuffle=True, seed=3, epoch=7, rank=r, world_size=world, pad=True),
            workers=workers,
        )
        for r in range(world)
    ]
    per_rank = math.ceil(1259 / world)
    for rank_plans in plans:
        ids = sorted(j for p in rank_plans for j in p.batch_ids)
        assert ids == list(range(math.ceil(per_rank / BATCH)))  # batch j from stream j mod W
        assert sum(sum(p.batch_sizes) for p in rank_plans) == per_rank
        assert all(p.shards for p in rank_plans)
    dealt = sorted(i for rank_plans in plans for p in rank_plans for i in p.shards)
    assert dealt == list(range(13))


def test_the_stream_makes_the_batches_the_trainer_counts(packed: Path) -> None:
    """Under 3 processes each makes ceil(ceil(1259 / 3) / 32) = 14 batches, the last short:
    what the trainer's batches_per_epoch and the map-style padded sampler give."""
    train = _shards(packed).train
    for rank in range(3):
        loader = make_loader(
            train, BATCH, LoaderOrder(shuffle=True, seed=0, rank=rank, world_size=3)
        )
        sizes = [len(y) for _, y in loader]
        assert len(loader) == len(sizes) == 14
        assert sizes == [32] * 13 + [420 - 13 * 32]


def test_too_few_shards_for_the_streams_is_a_clear_error(packed: Path) -> None:
    train = _shards(packed).train
    with pytest.raises(ShardError, match=r"13 shard\(s\).*4 process\(es\) x 4 loader stream"):
        make_loader(train, BATCH, LoaderOrder(shuffle=True, rank=0, world_size=4), num_workers=4)


@pytest.mark.usefixtures("restore_torch_globals")
def test_training_with_too_few_shards_stops_before_making_a_run_folder(
    packed: Path, tmp_path: Path, capsys
) -> None:
    args = ["train", "data.name=webdataset", f"data.root={packed}", "data.num_workers=16"]
    assert main([*args, f"train.output_dir={tmp_path / 'runs'}"]) == 2
    assert "pack it into at least 16 shards" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_resume_mid_epoch_replays_the_epoch_exactly(packed: Path) -> None:
    """Process 1 of 2 with 2 workers: a pass started at batch 7 (a resume) gives exactly the
    rest of the full pass; the epoch and the seed decide the order, nothing else does."""
    train = _shards(packed, shuffle_buffer=64).train
    loader = make_loader(
        train,
        BATCH,
        LoaderOrder(shuffle=True, seed=5, epoch=1, rank=1, world_size=2),
        num_workers=2,
    )
    full = _batches(loader)
    assert len(full) == math.ceil(630 / BATCH)
    set_loader_epoch(loader, 1, start=7 * BATCH)
    assert len(loader) == len(full) - 7
    rest = _batches(loader)
    assert len(rest) == len(full) - 7
    for (xa, ya), (xb, yb) in zip(full[7:], rest, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    set_loader_epoch(loader, 2)
    other = _batches(loader)
    assert not torch.equal(other[0][1], full[0][1])  # another epoch, another order
    set_loader_epoch(loader, 1)
    again = _batches(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again, full, strict=True))


def test_the_shuffle_buffer_mixes_the_shards(packed: Path) -> None:
    train = _shards(packed, shuffle_buffer=0).train
    packed_order = torch.cat([y for _, y in make_loader(train, 100, LoaderOrder(pad=False))])
    buffered = _shards(packed, shuffle_buffer=200).train
    mixed = torch.cat(
        [y for _, y in make_loader(buffered, 100, LoaderOrder(shuffle=True, pad=False))]
    )
    assert len(mixed) == len(packed_order) == 1259
    assert sorted(mixed.tolist()) == sorted(packed_order.tolist())  # each sample once
    assert not torch.equal(mixed, packed_order)
    # Each sample once, named by its bytes and label (not only by the label counts). The
    # augmentation is seeded by the sample's key, so a sample is the same tensor in any order.
    plain = _batches(make_loader(train, 100, LoaderOrder(pad=False)))
    shuffled = _batches(make_loader(buffered, 100, LoaderOrder(shuffle=True, pad=False)))
    before = _samples(torch.cat([x for x, _ in plain]), torch.cat([y for _, y in plain]))
    after = _samples(torch.cat([x for x, _ in shuffled]), torch.cat([y for _, y in shuffled]))
    assert sum(after.values()) == 1259 and after == before
    assert len(after) > 0.95 * 1259


def test_the_training_streams_read_through_the_shuffle_buffer(packed: Path) -> None:
    """The training path (shuffled and padded, as the trainer reads; one process, so one
    stream holding every shard): without a buffer the labels come shard by shard in the
    epoch's shard order, each sample once; a buffer of 200 mixes them. Either way every
    epoch has exactly ceil(1259 / 32) batches, the last short, and (the buffer drained at the
    end of each pass over the shards) holds every sample once."""
    n = 1259
    labels: dict[int, list[torch.Tensor]] = {}
    images: dict[int, list[Counter]] = {}
    for buffer in (0, 200):
        train = _shards(packed, shuffle_buffer=buffer).train
        loader = make_loader(train, BATCH, LoaderOrder(shuffle=True, seed=3))  # pad: the trainer's
        for epoch in (0, 1):
            set_loader_epoch(loader, epoch)
            batches = _batches(loader)
            assert len(loader) == len(batches) == math.ceil(n / BATCH) == 40
            assert [len(y) for _, y in batches] == [BATCH] * 39 + [n - 39 * BATCH]
            labels.setdefault(buffer, []).append(torch.cat([y for _, y in batches]))
            images.setdefault(buffer, []).append(
                _samples(torch.cat([x for x, _ in batches]), labels[buffer][-1])
            )
    split = train.base
    for epoch in (0, 1):
        order = shard_order(len(split.shards), 3, epoch, shuffle=True)
        stored = [s.label for i in order for s in read_shard(split.shards[i], 10)]
        assert labels[0][epoch].tolist() == stored
        assert Counter(labels[200][epoch].tolist()) == Counter(stored)  # each sample once
        assert not torch.equal(labels[200][epoch], labels[0][epoch])
        # The same samples, by bytes: each of the 1259 once in either stream.
        assert images[200][epoch] == images[0][epoch]
        assert sum(images[0][epoch].values()) == n and len(images[0][epoch]) > 0.95 * n
    assert not torch.equal(labels[200][0], labels[200][1])  # each epoch its own mix


# -- a pack that is wrong -------------------------------------------------------------------
@pytest.fixture
def copy(packed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(packed, tmp_path / "copy"))


def test_a_missing_or_truncated_shard_is_named_before_training(copy: Path) -> None:
    (copy / "val-000001.tar").unlink()
    with pytest.raises(ShardError, match=r"val-000001.tar is missing"):
        _shards(copy)
    shutil.copy(copy / "val-000000.tar", copy / "val-000001.tar")
    with pytest.raises(ShardError, match=r"val-000001.tar has \d+ bytes but index.json records"):
        _shards(copy)


def test_a_damaged_shard_of_the_right_size_is_named_when_read(copy: Path) -> None:
    path = copy / "test-000002.tar"
    data = bytearray(path.read_bytes())
    data[40 * 1024 : 40 * 1024 + 2048] = bytes(2048)  # a run of zeros over headers and data
    path.write_bytes(bytes(data))
    test = _shards(copy).test
    with pytest.raises(ShardError, match=r"test-000002\.tar"):
        _batches(make_loader(test, BATCH))


def test_an_index_that_does_not_match_its_shards_is_an_error(copy: Path) -> None:
    index = json.loads((copy / "index.json").read_text())
    index["splits"]["val"]["shards"][0]["count"] -= 1
    index["splits"]["val"]["count"] -= 1
    (copy / "index.json").write_text(json.dumps(index))
    val = _shards(copy).val
    with pytest.raises(ShardError, match=r"holds 100 samples but index\.json says 99"):
        _batches(make_loader(val, BATCH))
    index["splits"]["val"]["count"] += 5
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardError, match="is damaged"):
        _shards(copy)


def test_a_corrupt_image_inside_a_shard_follows_on_bad_file(copy: Path) -> None:
    path = copy / "val-000000.tar"
    with tarfile.open(path) as tar:
        member = tar.getmember("00000003.png")
    data = bytearray(path.read_bytes())
    start = member.offset_data + 40
    data[start : start + 64] = bytes(64)  # the PNG's pixel data, not the tar structure
    path.write_bytes(bytes(data))
    with pytest.raises(BadImageError, match=r"00000003.png in shard .*val-000000.tar"):
        _batches(make_loader(_shards(copy).val, BATCH))
    batches = _batches(make_loader(_shards(copy, on_bad_file="skip").val, BATCH))
    assert [len(y) for _, y in batches] == [32] * 5 + [19]  # replaced, not dropped
    # Counted for the trainer's epoch line (bad_file_report), from a loader worker too, and
    # once however often it is read.
    val = _shards(copy, on_bad_file="skip").val
    assert bad_file_report(val).count == 0
    loader = make_loader(val, BATCH, num_workers=1)
    for _ in range(2):
        _batches(loader)
    report = bad_file_report(val)
    assert report.count == 1 and re.search(r"val-000000\.tar sample 00000003$", report.paths[0])


def test_an_index_of_the_wrong_shape_is_named(copy: Path) -> None:
    index = json.loads((copy / "index.json").read_text())
    for splits in (["train"], {"train": "train-000000.tar"}, {"val": {"shards": ["x.tar"]}}):
        (copy / "index.json").write_text(json.dumps({**index, "splits": splits}))
        with pytest.raises(ShardError, match=r"index\.json is damaged .*run resnext pack again"):
            _shards(copy)
    (copy / "index.json").write_text(json.dumps({**index, "source": ["digits"]}))
    with pytest.raises(ShardError, match=r"index\.json is damaged"):
        _shards(copy)


def test_folders_that_are_not_packs_say_so(tmp_path: Path, copy: Path) -> None:
    with pytest.raises(ShardError, match="is not a pack"):
        webdataset_splits(DataConfig(name="webdataset", root=str(tmp_path)))
    (copy / "index.json").rename(copy / "old.json")
    with pytest.raises(ShardError, match="the pack did not finish"):
        webdataset_splits(DataConfig(name="webdataset", root=str(copy)))
    index = json.loads((copy / "old.json").read_text())
    (copy / "index.json").write_text(json.dumps({**index, "version": 99}))
    with pytest.raises(ShardError, match="version 99; this resnext reads version 1"):
        webdataset_splits(DataConfig(name="webdataset", root=str(copy)))
    with pytest.raises(ShardError, match=r"data\.root is not set"):
        webdataset_splits(DataConfig(name="webdataset"))


def test_without_the_webdataset_package_the_error_says_what_to_install(
    packed: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r"pip install 'resnext\[shards\]'"):
        _shards(packed)


def test_a_shard_split_has_no_random_access(packed: Path) -> None:
    train = _shards(packed).train.base
    assert isinstance(train, ShardSplit) and len(train) == 1259
    with pytest.raises(ValueError, match="read in sequence"):
        train[0]


# -- image files --------------------------------------------------------------------------
def _jpeg_folder(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for c in ("cat", "dog"):
        for i in range(5):
            path = root / "train" / c / f"{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (48 + i, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=85)
            paths.append(path)
    return paths


def test_image_files_are_stored_as_their_own_bytes(tmp_path: Path) -> None:
    paths = _jpeg_folder(tmp_path / "src")
    cfg = DataConfig(
        name="imagefolder",
        root=str(tmp_path / "src"),
        val_dir=None,
        val_fraction=0.2,
        image_size=32,
    )
    index = pack_dataset(cfg, tmp_path / "pack", progress=False, say=lambda _: None)
    assert (index["splits"]["train"]["count"], index["splits"]["val"]["count"]) == (8, 2)
    stored = []
    for name in ("train-000000.tar", "val-000000.tar"):
        with tarfile.open(tmp_path / "pack" / name) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpeg"):  # the extension, lower-cased
                    stored.append(tar.extractfile(m).read())  # type: ignore[union-attr]
    assert sorted(stored) == sorted(p.read_bytes() for p in paths)
    # The eval pipeline gives the same tensors from the pack as from the folder.
    source = build_splits(cfg)
    shards = _shards(tmp_path / "pack", image_size=32)
    a = _batches(make_loader(source.val, 4))
    b = _batches(make_loader(shards.val, 4))
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )


def test_a_broken_file_stops_the_pack_or_is_left_out(tmp_path: Path) -> None:
    paths = _jpeg_folder(tmp_path / "src")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # a truncated JPEG
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "src"), val_dir=None, val_fraction=0.0)
    with pytest.raises(BadImageError, match=r"cannot pack image .*cat/3.JPEG'.*truncated"):
        pack_dataset(cfg, tmp_path / "a", progress=False, say=lambda _: None)
    assert not list((tmp_path / "a").glob("*.tar"))  # nothing half-written is left
    skip = DataConfig(**{**cfg.__dict__, "on_bad_file": "skip"})
    index = pack_dataset(skip, tmp_path / "b", workers=1, progress=False, say=lambda _: None)
    assert index["splits"]["train"]["count"] == 9
    assert index["splits"]["train"]["skipped"] == [str(paths[3])]


def test_a_packed_dataset_is_not_packed_again(packed: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="already a pack"):
        pack_dataset(DataConfig(name="webdataset", root=str(packed)), tmp_path, progress=False)


def test_png_keeps_one_channel_images_exactly() -> None:
    from resnext.data.pack import encode_png

    gray = torch.randint(0, 256, (1, 9, 7), dtype=torch.uint8)
    back = np.array(Image.open(io.BytesIO(encode_png(gray))))
    assert back.shape == (9, 7) and torch.equal(torch.from_numpy(back), gray[0])
