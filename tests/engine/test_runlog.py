"""The run log: metrics.jsonl lines, TensorBoard scalars read back from the event files,
resume cutting both back to the checkpoint's step, rank-0-only writing, a missing package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resnext.engine.runlog import RunLog
from resnext.errors import ConfigError


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``log_dir`` as (step, value) pairs, as TensorBoard shows them."""
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _lines(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(step: int, loss: float) -> dict[str, Any]:
    return {"kind": "train", "epoch": 1, "step": step, "loss": loss, "lr": 0.5, "img_per_s": 64.0}


def _age_event_files(log_dir: Path) -> None:
    """Give the event files a timestamp older than any new one's.

    TensorBoard reads a folder's files in name order, and names start with the creation
    second: a resumed process (started later) sorts after the killed one. Two writers in
    one test can share a second, where the names' counter suffix sorts 10 before 9.
    """
    for path in log_dir.glob("events.out.tfevents.*"):
        path.rename(log_dir / f"events.out.tfevents.0000000000.{path.name}")


def test_records_become_jsonl_lines_and_scalars_by_kind(tmp_path: Path) -> None:
    """Each record is one jsonl line; the table's keys become tags at the record's step, while
    other kinds, keys not in the table and non-numeric or bool values stay in the jsonl."""
    records: list[dict[str, Any]] = [
        _train(10, 2.5),
        {"kind": "train", "epoch": 1, "step": 20, "loss": "NaN", "lr": True, "img_per_s": 8.0},
        {"kind": "error", "epoch": 1, "step": 21, "loss": "NaN"},
        {
            "kind": "epoch",
            "epoch": 1,
            "step": 30,
            "partial": False,
            "train_loss": 2.25,
            "train_top1": 12.5,
            "val_loss": 2.0,
            "val_top1": 25.0,
            "val_top5": 75.0,
            "lr": 0.25,
            "seconds": 3.0,
        },
        {
            "kind": "test",
            "step": 30,
            "checkpoint": "best.pt",
            "test_loss": 1.75,
            "test_top1": 37.5,
            "test_top5": 87.5,
            "test_images": 8,
        },
        {"kind": "stop", "step": 30, "reason": "max_steps"},
    ]
    with RunLog(tmp_path, tensorboard=True) as log:
        assert log.tensorboard_dir == tmp_path / "tensorboard"
        for record in records:
            log.write(record)
    assert _lines(tmp_path) == records
    assert _scalars(tmp_path / "tensorboard") == {
        "train/loss": [(10, 2.5)],
        "train/lr": [(10, 0.5)],
        "train/img_per_s": [(10, 64.0), (20, 8.0)],
        "epoch/train_loss": [(30, 2.25)],
        "epoch/train_top1": [(30, 12.5)],
        "epoch/val_loss": [(30, 2.0)],
        "epoch/val_top1": [(30, 25.0)],
        "epoch/val_top5": [(30, 75.0)],
        "epoch/lr": [(30, 0.25)],
        "test/loss": [(30, 1.75)],
        "test/top1": [(30, 37.5)],
        "test/top5": [(30, 87.5)],
    }


def test_events_are_on_disk_before_close(tmp_path: Path) -> None:
    """Each write reaches the event file at once: a kill must not lose logged steps."""
    log = RunLog(tmp_path, tensorboard=True)
    log.write(_train(1, 3.0))
    assert _scalars(tmp_path / "tensorboard") == {
        "train/loss": [(1, 3.0)],
        "train/lr": [(1, 0.5)],
        "train/img_per_s": [(1, 64.0)],
    }
    log.close()
    log.close()  # a second close is harmless
    with pytest.raises(RuntimeError, match="after close"):
        log.write(_train(2, 2.0))


def test_resume_cuts_jsonl_back_to_the_checkpoint(tmp_path: Path) -> None:
    """Kept: records with step <= the resume step, except test and stop (the resumed run writes
    them again); dropped: later steps and a line cut short by the kill."""
    with RunLog(tmp_path, tensorboard=False) as log:
        for step in (1, 2, 3):
            log.write(_train(step, 1.0 / step))
        log.write({"kind": "epoch", "epoch": 1, "step": 3, "train_loss": 0.5})
        log.write({"kind": "test", "step": 3, "test_top1": 50.0})
        log.write({"kind": "stop", "step": 3, "reason": "max_steps"})
        log.write(_train(4, 0.25))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "epoch": 1, "st')  # the kill, mid-line
    with RunLog(tmp_path, tensorboard=False, resume_step=3) as log:
        assert _lines(tmp_path) == [
            _train(1, 1.0),
            _train(2, 0.5),
            _train(3, 1.0 / 3),
            {"kind": "epoch", "epoch": 1, "step": 3, "train_loss": 0.5},
        ]
        log.write(_train(4, 0.125))
    assert _lines(tmp_path)[-1] == _train(4, 0.125)
    assert len(_lines(tmp_path)) == 5


def test_resume_purges_events_after_the_checkpoint(tmp_path: Path) -> None:
    """Events the killed run wrote past the resume step are gone; the resumed ones replace them."""
    with RunLog(tmp_path, tensorboard=True) as log:
        for step in range(1, 11):
            log.write(_train(step, float(step)))
    _age_event_files(tmp_path / "tensorboard")
    with RunLog(tmp_path, tensorboard=True, resume_step=5) as log:
        for step in range(6, 9):
            log.write(_train(step, 100.0 + step))
    loss = _scalars(tmp_path / "tensorboard")["train/loss"]
    assert loss == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 5.0), (6, 106.0), (7, 107.0),
                    (8, 108.0)]  # fmt: skip
    assert [r["step"] for r in _lines(tmp_path)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_test_written_at_the_stop_step_is_gone_after_resume(tmp_path: Path) -> None:
    """A max_steps stop at step 5 writes a test record at 5; resumed from 5, TensorBoard keeps
    the step-5 train point (the jsonl keeps it) and drops that test point (the jsonl does)."""
    with RunLog(tmp_path, tensorboard=True) as log:
        for step in range(1, 6):
            log.write(_train(step, float(step)))
        log.write({"kind": "stop", "epoch": 1, "step": 5})
        log.write({"kind": "test", "step": 5, "test_top1": 50.0, "test_loss": 1.0})
    _age_event_files(tmp_path / "tensorboard")
    with RunLog(tmp_path, tensorboard=True, resume_step=5) as log:
        log.write(_train(6, 6.0))
        log.write({"kind": "test", "step": 6, "test_top1": 60.0, "test_loss": 0.5})
    scalars = _scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(s, float(s)) for s in range(1, 7)]
    assert scalars["test/top1"] == [(6, 60.0)]
    assert [r["kind"] for r in _lines(tmp_path)] == ["train"] * 6 + ["test"]


def test_new_run_starts_the_log_afresh(tmp_path: Path) -> None:
    """Without resume_step an earlier run's jsonl lines and event files are dropped."""
    with RunLog(tmp_path, tensorboard=True) as log:
        for step in range(1, 11):
            log.write(_train(step, float(step)))
    _age_event_files(tmp_path / "tensorboard")
    with RunLog(tmp_path, tensorboard=True) as log:
        log.write(_train(1, 9.0))
    assert _lines(tmp_path) == [_train(1, 9.0)]
    assert len(list((tmp_path / "tensorboard").iterdir())) == 1
    assert _scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 9.0)]


@pytest.mark.parametrize("resume_step", [None, 3])
@pytest.mark.parametrize("tensorboard", [None, True])
def test_disabled_rank_creates_nothing(
    tmp_path: Path, tensorboard: bool | None, resume_step: int | None
) -> None:
    """enabled=False (DDP ranks other than 0): no folder, no file, and nothing left to close."""
    run_dir = tmp_path / "run"
    with RunLog(run_dir, enabled=False, tensorboard=tensorboard, resume_step=resume_step) as log:
        assert log.tensorboard_dir is None
        log.write(_train(1, 1.0))
        log.curves([{"epoch": 1, "train_loss": 1.0, "train_top1": 50.0}], val_label="val",
                   train_label="train")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_tensorboard_false_writes_no_events(tmp_path: Path) -> None:
    with RunLog(tmp_path, tensorboard=False) as log:
        assert log.tensorboard_dir is None
        log.write(_train(1, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_curves_png_from_epoch_records(tmp_path: Path) -> None:
    """curves.png is drawn from the history; an empty history draws nothing."""
    history = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_top1": 10.0 * e,
            "val_loss": 1.5,
            "val_top1": 5.0,
        }
        for e in (1, 2)
    ]
    with RunLog(tmp_path, tensorboard=False) as log:
        log.curves([], val_label="val", train_label="train")
        assert not (tmp_path / "curves.png").exists()
        log.curves(history, val_label="val (EMA weights)", train_label="train")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_true_without_the_package_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for and missing: a ConfigError naming the extra, raised before anything is written,
    on every rank (so no DDP process is left waiting for rank 0)."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    for enabled in (True, False):
        with pytest.raises(ConfigError, match=r"resnext\[tensorboard\]") as err:
            RunLog(tmp_path / "run", enabled=enabled, tensorboard=True)
        assert "train.tensorboard=false" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_tensorboard_default_without_the_package_writes_only_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with RunLog(tmp_path) as log:
        assert log.tensorboard_dir is None
        log.write(_train(1, 1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_tensorboard_default_with_the_package_writes_events(tmp_path: Path) -> None:
    with RunLog(tmp_path) as log:
        assert log.tensorboard_dir == tmp_path / "tensorboard"
        log.write(_train(7, 1.5))
    assert _scalars(tmp_path / "tensorboard")["train/loss"] == [(7, 1.5)]


def test_import_does_not_load_tensorboard() -> None:
    """The module imports TensorBoard only when a log turns it on (it is an optional extra)."""
    code = (
        "import sys, resnext.engine.runlog; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorboard' "
        "or m.startswith('torch.utils.tensorboard')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
