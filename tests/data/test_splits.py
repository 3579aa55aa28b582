"""One folder of classes without split folders (Caltech-101/256 style, root/<class>/*):
val and test carved per class with a fixed seed, recorded in the run folder (splits.json),
and read back by a resume and by `resnext eval` instead of carving again."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from helpers import tiny_run, write_image_tree, write_jpeg
from resnext import EvalOptions, RuntimeOptions
from resnext.cli import main
from resnext.config import ConfigError, DataConfig, load_config
from resnext.data import DataError, build_raw_splits, splitting
from resnext.data.splitting import SPLITS_FILE, SplitRecord
from resnext.inference import prepare_evaluation

CLASSES = ["BACKGROUND_Google", "accordion", "airplanes"]  # Caltech-101 folder names
PER_CLASS = 10
TINY = tiny_run(
    "data.name=imagefolder",
    "data.val_fraction=0.2",
    "data.test_fraction=0.3",
    "model.stem_width=8",
    "train.batch_size=8",
    "train.epochs=1",
    "train.tensorboard=false",
)

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="imagefolder", root=str(root), **{"val_fraction": 0.2, **kw})


def _rel(paths: list[str], root: Path) -> list[str]:
    return sorted(Path(p).relative_to(root).as_posix() for p in paths)


def test_one_folder_is_split_per_class_with_a_fixed_seed(tmp_path: Path) -> None:
    write_image_tree(tmp_path, CLASSES, PER_CLASS)
    s = build_raw_splits(_cfg(tmp_path, test_fraction=0.3))
    assert s.classes == CLASSES  # sorted folder names, as torchvision's ImageFolder
    # stratified: of each class's 10 images, 2 go to val, 3 to test, 5 to train
    assert Counter(s.train.labels) == {0: 5, 1: 5, 2: 5}
    assert Counter(s.val.labels) == {0: 2, 1: 2, 2: 2}
    assert Counter(s.test.labels) == {0: 3, 1: 3, 2: 3}
    parts = [set(s.train.paths), set(s.val.paths), set(s.test.paths)]
    assert sum(len(p) for p in parts) == len(set.union(*parts)) == 3 * PER_CLASS
    for split in (s.train, s.val, s.test):  # each file keeps its folder's label
        assert all(
            CLASSES[y] == Path(p).parent.name
            for p, y in zip(split.paths, split.labels, strict=True)
        )
    record = s.info["split_record"]
    assert record.files["test"] == _rel(s.test.paths, tmp_path)
    # the same seed gives the same split; another seed another one
    assert build_raw_splits(_cfg(tmp_path, test_fraction=0.3)).test.paths == s.test.paths
    other = build_raw_splits(_cfg(tmp_path, test_fraction=0.3, split_seed=1))
    assert set(other.test.paths) != set(s.test.paths)
    # test_fraction=0: no test split; the record says so too
    none = build_raw_splits(_cfg(tmp_path, test_fraction=0.0))
    assert none.test is None and none.info["split_record"].files["test"] == []


def test_layouts_and_values_that_cannot_be_split_are_refused(tmp_path: Path) -> None:
    write_image_tree(tmp_path, CLASSES, PER_CLASS)
    # data.test_dir (or a label file) names a split the one-folder tree does not have
    with pytest.raises(DataError, match=r"data.test_dir='test' names a split .* no train folder"):
        build_raw_splits(_cfg(tmp_path, test_dir="test"))
    # fractions that leave nothing to train on
    with pytest.raises(ConfigError, match=r"0.6 \+ 0.4 leaves no images to train on"):
        build_raw_splits(_cfg(tmp_path, val_fraction=0.6, test_fraction=0.4))
    with pytest.raises(ConfigError, match=r"data.test_fraction must be in \[0, 1\), got 1.5"):
        load_config(overrides=["data.test_fraction=1.5"])
    with pytest.raises(ConfigError, match="leaves no images to train on"):
        load_config(overrides=["data.val_fraction=0.5", "data.test_fraction=0.5"])  # digits
    # a class too small to have an image in train, val and test
    write_image_tree(tmp_path, ["zebra"], 2)
    with pytest.raises(
        DataError, match=r"1 class folder\(s\) .* 'zebra' \(2\); each class needs 3"
    ):
        build_raw_splits(_cfg(tmp_path, test_fraction=0.3))
    shutil.rmtree(tmp_path / "zebra")
    # val/ without train/: neither a split tree nor one folder of classes
    write_image_tree(tmp_path / "val", ["accordion"], 1)
    with pytest.raises(DataError, match=r"train folder .* does not exist, but .* holds \['val'\]"):
        build_raw_splits(_cfg(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"neither a train folder .* nor class folders"):
        build_raw_splits(_cfg(empty))


def test_a_record_that_lists_a_file_twice_is_refused() -> None:
    record = SplitRecord(
        ["a", "b"], {"train": ["a/1.jpg", "b/2.jpg"], "val": [], "test": ["a/1.jpg"]}, 0, 0.2,
        0.3, "/data",
    ).to_dict()  # fmt: skip
    with pytest.raises(DataError, match=r"'a/1.jpg' is listed in test and in train"):
        SplitRecord.from_dict(record, "splits.json")
    record["test"], record["train"] = [], ["a/1.jpg", "b/2.jpg", "b/2.jpg"]
    with pytest.raises(DataError, match=r"'b/2.jpg' is listed in train twice"):
        SplitRecord.from_dict(record, "splits.json")


def _counted_smallest_class(fractions: tuple[float, float]) -> int:
    n = 1
    while not splitting._enough(splitting._part_sizes(n, fractions), fractions):
        n += 1
    return n


def test_the_smallest_class_is_computed_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The error's "each class needs N images" equals counting up for ordinary shares, and
    a share of 1e-6 (N about 500,000) takes a bounded number of tries, not N."""
    for fractions in [(0.2, 0.3), (0.1, 0.0), (0.0, 0.0), (0.5, 0.49), (0.05, 0.01), (0.9, 0.05)]:
        assert splitting._smallest_class(fractions) == _counted_smallest_class(fractions)
    enough, tries = splitting._enough, []
    monkeypatch.setattr(splitting, "_enough", lambda *a: tries.append(1) or enough(*a))
    n = splitting._smallest_class((1e-6, 0.0))
    assert len(tries) <= 1000
    assert enough(splitting._part_sizes(n, (1e-6, 0.0)), (1e-6, 0.0))
    assert not enough(splitting._part_sizes(n - 1, (1e-6, 0.0)), (1e-6, 0.0))
    # train's share tiny: a bound that surely leaves train an image, found at once
    tries.clear()
    n = splitting._smallest_class((1 - 1e-9, 0.0))
    assert len(tries) <= 1010 and enough(splitting._part_sizes(n, (1 - 1e-9, 0.0)), (1 - 1e-9, 0))


def _train(runs: Path, root: Path, *extra: str, name: str = "r") -> int:
    return main(
        [
            "train",
            *TINY,
            f"data.root={root}",
            f"train.output_dir={runs}",
            f"train.run_name={name}",
            *extra,
        ]
    )


def _eval_json(tmp: Path, *args: str) -> dict:
    out = tmp / "eval.json"
    assert main(["eval", *args, "--backend", "eager", "--no-progress", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_the_run_records_its_split_and_eval_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = tmp_path / "caltech"
    write_image_tree(data, CLASSES, PER_CLASS)
    assert _train(tmp_path / "runs", data) == 0
    run = tmp_path / "runs" / "r"
    out = capsys.readouterr().out
    assert f"recorded in {run / SPLITS_FILE}" in out and "15 train / 6 val / 9 test" in out
    record = SplitRecord.read(run / SPLITS_FILE)
    assert record.classes == CLASSES and record.split_seed == 0
    assert [len(record.files[s]) for s in ("train", "val", "test")] == [15, 6, 9]
    assert load_config(run / "config.yaml").data.split_file is None  # the recipe is unchanged

    best = str(run / "best.pt")
    ev = prepare_evaluation(
        EvalOptions(best, runtime=RuntimeOptions(device="cpu", backend="eager"))
    )
    assert _rel(ev.dataset.paths, data) == record.files["test"]
    assert _eval_json(tmp_path, best)["members"][0]["num_images"] == 9

    # Images added later: a new carve would move files between splits; eval keeps the record.
    for k in range(5):
        write_jpeg(data / "accordion" / f"new_{k}.jpg", seed=700 + k)
    assert build_raw_splits(_cfg(data, test_fraction=0.3)).info["split_record"] != record
    ev = prepare_evaluation(
        EvalOptions(best, runtime=RuntimeOptions(device="cpu", backend="eager"))
    )
    assert _rel(ev.dataset.paths, data) == record.files["test"]
    assert any("5 image(s) under data.root are in no split recorded" in n for n in ev.notes)
    capsys.readouterr()
    assert _eval_json(tmp_path, best)["members"][0]["num_images"] == 9
    assert "note: 5 image(s) under data.root are in no split" in capsys.readouterr().err

    # A recorded test file is gone: the split cannot be reproduced, and eval says so.
    gone = record.files["test"][0]
    (data / gone).unlink()
    assert main(["eval", best, "--backend", "eager", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no longer match the split recorded in" in err and SPLITS_FILE in err
    assert "1 recorded file(s) are gone (1 of test)" in err and gone in err

    # A checkpoint copied away from its run folder: carved again, with a note saying so.
    write_jpeg(data / gone, seed=999)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(best, alone / "best.pt")
    ev = prepare_evaluation(
        EvalOptions(str(alone / "best.pt"), runtime=RuntimeOptions(device="cpu", backend="eager"))
    )
    assert any(re.search(r"no splits.json next to .* carved again", n) for n in ev.notes)
    # ... and data.split_file names the record explicitly
    ev = prepare_evaluation(
        EvalOptions(
            str(alone / "best.pt"),
            data={"split_file": str(run / SPLITS_FILE)},
            runtime=RuntimeOptions(device="cpu", backend="eager"),
        )
    )
    assert _rel(ev.dataset.paths, data) == record.files["test"]


def test_resume_reads_the_recorded_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "caltech"
    write_image_tree(data, CLASSES, PER_CLASS)
    runs = tmp_path / "runs"
    # 3 epochs of 2 steps; stops inside the first
    assert _train(runs, data, "train.epochs=3", "train.max_steps=1") == 0
    record = SplitRecord.read(runs / "r" / SPLITS_FILE)
    # Another split of the same files, as large: only the records tell them apart.
    other = build_raw_splits(_cfg(data, test_fraction=0.3, split_seed=1)).info["split_record"]
    assert other.files != record.files and len(other.files["train"]) == 15
    other.write(tmp_path / "other.json")
    for k in range(5):  # a carve now would give train 18 images, not 15
        write_jpeg(data / "airplanes" / f"new_{k}.jpg", seed=800 + k)
    # Without the record the resume is refused, saying what to do: never carved again.
    kept = tmp_path / "kept.json"
    (runs / "r" / SPLITS_FILE).rename(kept)
    capsys.readouterr()
    assert _train(runs, data, "train.epochs=3", "train.max_steps=2", "--resume") == 2
    err = capsys.readouterr().err
    assert f"its record {runs / 'r' / SPLITS_FILE} is missing" in err
    assert "Restore splits.json into the run folder" in err and "data.split_file=PATH" in err
    # data.split_file may name the record on resume; the run continues on its files.
    argv = ["train", "--resume", f"train.output_dir={runs}", "train.run_name=r"]
    assert main([*argv, f"data.split_file={kept}", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "note: 5 image(s) under data.root are in no split recorded" in out
    assert f"read from {kept}" in out
    assert SplitRecord.read(runs / "r" / SPLITS_FILE) == record  # the run folder has it again
    # A given record is read, not replaced by the run folder's: another split is refused.
    assert main([*argv, f"data.split_file={tmp_path / 'other.json'}"]) == 2
    err = capsys.readouterr().err
    assert "records another split than the run's own" in err
    # With the run folder's record, the run continues on the files it started with.
    assert _train(runs, data, "train.epochs=3", "--resume") == 0
    out = capsys.readouterr().out
    assert "note: 5 image(s) under data.root are in no split recorded" in out
    assert SplitRecord.read(runs / "r" / SPLITS_FILE) == record


def test_train_dir_dot_carves_the_test_split_as_the_bare_root_does(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Issue #17, defect 1: ``data.train_dir=.`` names the root itself as the train folder.
    It used to be read as a split tree with no test split, training on 48/12 of 60 images
    and passing over the explicit data.test_fraction=0.2 unsaid; it is one folder of
    classes, carved 36/12/12 as the same folder is without train_dir=., and recorded."""
    flat = tmp_path / "flat"
    write_image_tree(flat, CLASSES, 20)
    keys = {"val_dir": None, "val_fraction": 0.2, "test_fraction": 0.2}
    dot = build_raw_splits(_cfg(flat, train_dir=".", **keys))
    bare = build_raw_splits(_cfg(flat, **keys))
    assert [len(s) for s in (dot.train, dot.val, dot.test)] == [36, 12, 12]
    for a, b in ((dot.train, bare.train), (dot.val, bare.val), (dot.test, bare.test)):
        assert a.paths == b.paths and a.labels == b.labels
    assert Counter(dot.test.labels) == {0: 4, 1: 4, 2: 4}
    record = dot.info["split_record"]
    assert [len(record.files[s]) for s in ("train", "val", "test")] == [36, 12, 12]
    # The run records it: splits.json lists the carved test split.
    args = ["data.train_dir=.", "data.val_dir=null", "data.test_fraction=0.2"]
    assert _train(tmp_path / "runs", flat, *args) == 0
    assert "36 train / 12 val / 12 test" in capsys.readouterr().out
    saved = SplitRecord.read(tmp_path / "runs" / "r" / SPLITS_FILE)
    assert saved == record
    # A val folder given beside data.train_dir=. is refused, not passed over.
    (tmp_path / "val" / CLASSES[0]).mkdir(parents=True)
    with pytest.raises(DataError, match=r"data\.val_dir=.* names a split file or folder"):
        build_raw_splits(_cfg(flat, train_dir=".", val_dir=str(tmp_path / "val")))
