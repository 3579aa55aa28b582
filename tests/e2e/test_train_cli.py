"""`resnext train` end to end on a tiny ResNeXt and a slice of the built-in digits:
the run folder, clear errors before training, and an exact resume after a real SIGKILL."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import tiny_checkpoint, tiny_run, torchrun_standalone
from resnext.checkpoint import load_checkpoint, model_from_checkpoint
from resnext.cli import main
from resnext.config import load_config
from resnext.engine import lr_factor_fn

# ~180 train images (10% of 1,797), 16 per batch: 12 steps per epoch, about 0.1 s each.
TINY = tiny_run(
    "data.test_fraction=0.8", "train.batch_size=16", "train.ema_decay=0.9", "train.log_every=1"
)


pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _train(tmp: Path, *extra: str, name: str = "r") -> int:
    return main(["train", *TINY, f"train.output_dir={tmp}", f"train.run_name={name}", *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short run (1 epoch) shared by the tests that inspect or resume a run folder."""
    tmp = tmp_path_factory.mktemp("runs")
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        assert _train(tmp, "train.epochs=1") == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    return tmp / "r"


def test_run_folder_holds_config_metrics_checkpoints_and_curves(finished_run: Path) -> None:
    files = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pt", "best.pt", "curves.png"} <= files
    cfg = load_config(finished_run / "config.yaml")
    assert cfg.model.name == "resnext29_2x4d" and cfg.train.epochs == 1
    records = [
        json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()
    ]
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 12 and kinds.count("epoch") == 1 and kinds[-1] == "test"
    test = records[-1]
    assert test["checkpoint"] == "best.pt" and test["weights"] == "ema"
    assert test["test_images"] == 1438  # 80% of 1,797, stratified per class
    ckpt = load_checkpoint(finished_run / "best.pt")
    # What evaluation reads: arch, weights, EMA, classes, preprocess, config.
    assert ckpt["classes"] == [str(i) for i in range(10)]
    assert ckpt["preprocess"]["image_size"] == 32 and len(ckpt["preprocess"]["mean"]) == 3
    assert ckpt["config"] == cfg.to_dict()
    model = model_from_checkpoint(ckpt, use_ema=True)
    assert torch.equal(model.fc.weight, ckpt["ema"]["fc.weight"])
    assert ckpt["metrics"]["selected"] == "ema" and ckpt["metrics"]["best_epoch"] == 1


def test_tensorboard_events_hold_the_logged_scalars(finished_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished_run / "tensorboard"))
    events.Reload()
    records = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    epoch = next(r for r in records if r["kind"] == "epoch")
    [val] = events.Scalars("epoch/val_top1")
    assert (val.step, val.value) == (epoch["step"], pytest.approx(epoch["val_top1"], rel=1e-6))
    assert len(events.Scalars("train/loss")) == 12
    [test] = events.Scalars("test/top1")
    assert test.value == pytest.approx(records[-1]["test_top1"], rel=1e-6)


def test_prints_a_results_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert _train(tmp_path, "train.epochs=1") == 0
    out = capsys.readouterr().out
    assert "resnext29_2x4d (block form c" in out
    for row in (
        "best val top-1",
        "test top-1 (best.pt, EMA weights, fp32)",
        "test top-5",
        "run folder",
    ):
        assert row in out
    assert re.search(r"steps / epochs +12 / 1\n", out)  # 180 images / batch 16 = 12 steps


def test_a_max_steps_stop_says_where_it_stopped(tmp_path: Path, capsys) -> None:
    """A stop mid-epoch is no epoch: nothing validated or selected, the summary says so."""
    assert _train(tmp_path, "train.epochs=1", "train.max_steps=2") == 0
    out = capsys.readouterr().out
    assert "2 steps: 0 epochs + 2/12 batches of epoch 1 (stopped by train.max_steps=2)" in out
    assert re.search(r"model selection +none: no epoch finished", out)
    assert "test top-1 (last.pt, EMA weights, fp32)" in out
    assert "steps / epochs" not in out and "best val" not in out
    ckpt = load_checkpoint(tmp_path / "r" / "last.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["epoch_step"]) == (2, 0, 2)
    assert ckpt["metrics"]["history"] == [] and ckpt["metrics"]["best_val_top1"] is None
    assert not (tmp_path / "r" / "best.pt").exists()


def _error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["train", *args]) == 2
    return capsys.readouterr().err


def test_missing_data_path_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    err = _error(
        capsys,
        *TINY,
        "data.name=cifar10",
        f"data.root={tmp_path / 'nope'}",
        f"train.output_dir={tmp_path}",
    )
    assert "data.root=" in err and "does not exist" in err
    assert list(tmp_path.iterdir()) == []  # no run folder left behind


def test_unwritable_output_folder_fails_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "file").write_text("not a folder")
    err = _error(capsys, *TINY, f"train.output_dir={tmp_path / 'file' / 'runs'}")
    assert "cannot create the run folder" in err and "is a file" in err


def test_existing_run_needs_resume(finished_run: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, *TINY, f"train.output_dir={finished_run.parent}", "train.run_name=r")
    assert "already holds a run" in err and "--resume" in err


def test_nothing_to_resume(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(capsys, *TINY, f"train.output_dir={tmp_path}", "--resume")
    assert "nothing to resume" in err


def test_resume_refuses_another_model(finished_run: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(
        capsys,
        *TINY,
        "model.name=resnext29_4x4d",
        f"train.resume={finished_run / 'last.pt'}",
        f"train.output_dir={finished_run.parent}",
    )
    assert "holds another model (cardinality: 2 (checkpoint) vs 4 (now))" in err


def test_resume_refuses_another_recipe(finished_run: Path, capsys: pytest.CaptureFixture) -> None:
    err = _error(
        capsys,
        *TINY,
        "optim.lr=0.05",
        f"train.resume={finished_run / 'last.pt'}",
        f"train.output_dir={finished_run.parent}",
    )
    assert "optim.lr: 0.1 (checkpoint) vs 0.05 (now)" in err


def _same_run(a_dir: Path, b_dir: Path) -> None:
    """Two run folders hold bitwise the same training state and the same epoch records."""
    a, b = load_checkpoint(a_dir / "last.pt"), load_checkpoint(b_dir / "last.pt")
    assert (a["epoch"], a["epoch_step"], a["step"]) == (b["epoch"], b["epoch_step"], b["step"])
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"
    for i, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    for key in ("best_val_top1", "best_epoch"):
        assert a["metrics"][key] == b["metrics"][key]

    def records(run: Path) -> list[dict]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        drop = ("seconds", "img_per_s")
        return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

    assert records(a_dir) == records(b_dir)


def test_a_max_steps_stop_resumes_exactly_as_the_uninterrupted_run(tmp_path: Path) -> None:
    """train.max_steps stops the recipe's schedule; it does not shorten it. Resumed without
    it (or with a later stop), the run continues bitwise as if never stopped."""
    recipe = ("train.epochs=2", "schedule.warmup_epochs=0.5")  # cosine over 24 steps
    assert _train(tmp_path, *recipe, "train.max_steps=5", name="stopped") == 0
    stopped = load_checkpoint(tmp_path / "stopped" / "last.pt")
    assert (stopped["step"], stopped["epoch"], stopped["epoch_step"]) == (5, 0, 5)
    assert _train(tmp_path, *recipe, "train.max_steps=17", "--resume", name="stopped") == 0
    # `--resume` alone: the run's own recipe, without the stop (a stop is not inherited).
    resume = ["train", f"train.output_dir={tmp_path}", "train.run_name=stopped", "--resume"]
    assert main(resume) == 0
    assert _train(tmp_path, *recipe, name="straight") == 0
    _same_run(tmp_path / "stopped", tmp_path / "straight")
    # The lr of every step is the full schedule's: cosine over 24 steps, never re-planned.
    lrs = [
        json.loads(x)["lr"]
        for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()
        if json.loads(x)["kind"] == "train"
    ]
    factor = lr_factor_fn(load_config(None, list(recipe)).schedule, 12, 24, 0.1)
    assert lrs == pytest.approx([0.1 * factor(i) for i in range(24)], rel=1e-12)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.epochs=3", "train.epochs: 1 (checkpoint) vs 3 (now), refused because the cosine"),
        ("train.eval_every=2", "train.eval_every: 1 (checkpoint) vs 2 (now), refused because"),
        ("data.on_bad_file=skip", "data.on_bad_file: 'error' (checkpoint) vs 'skip' (now)"),
    ],
)
def test_resume_refuses_changes_to_the_schedule_or_the_selection(
    finished_run: Path, capsys: pytest.CaptureFixture, override: str, named: str
) -> None:
    err = _error(
        capsys,
        *TINY,
        override,
        f"train.resume={finished_run / 'last.pt'}",
        f"train.output_dir={finished_run.parent}",
    )
    assert named in err and "Keys a resume may change: data.root" in err


def test_a_resume_past_its_stop_or_without_training_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _train(tmp_path, "train.epochs=1", "train.max_steps=2") == 0
    capsys.readouterr()
    err = _error(capsys, *TINY, f"train.output_dir={tmp_path}", "train.run_name=r",
                 "train.max_steps=2", "--resume")  # fmt: skip
    assert "already stopped at step 2 and train.max_steps is 2" in err
    # A checkpoint made for inference (no optimizer, no RNG) is no run to resume.
    model_only = tiny_checkpoint(tmp_path / "model.pt")
    err = _error(capsys, *TINY, f"train.resume={model_only}", f"train.output_dir={tmp_path}")
    assert "holds no training state (optimizer, scheduler, rng missing)" in err


def test_empty_val_or_test_split_is_said_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _train(tmp_path, "train.epochs=1", "data.val_fraction=0", "data.test_fraction=0") == 0
    out = capsys.readouterr().out
    assert "the val split of digits is empty: the last epoch is kept" in out
    assert "the test split of digits is empty: there is no final test" in out
    assert re.search(r"model selection +last epoch \(1\): no val split", out)
    assert "test top-1" not in out


def test_more_epochs_of_a_step_schedule_extend_the_run(tmp_path: Path) -> None:
    """Under a step schedule the lr of a step does not depend on train.epochs: extending
    a finished run is allowed and gives the run that had more epochs from the start."""
    step = ("schedule.name=step", "schedule.step_size=1", "schedule.warmup_epochs=0")
    assert _train(tmp_path, *step, "train.epochs=1", name="short") == 0
    assert _train(tmp_path, *step, "train.epochs=2", "--resume", name="short") == 0
    assert _train(tmp_path, *step, "train.epochs=2", name="long") == 0
    a, b = (
        load_checkpoint(tmp_path / "short" / "last.pt"),
        load_checkpoint(tmp_path / "long" / "last.pt"),
    )
    assert a["step"] == b["step"] == 24
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # The whole training state, not only the weights, is that of the longer run.
    assert a["ema"] is not None and b["ema"] is not None
    _assert_same(a["ema"], b["ema"], "ema")
    _assert_same(a["optimizer"], b["optimizer"], "optimizer")
    _assert_same(a["scheduler"], b["scheduler"], "scheduler")
    assert a["optimizer"]["state"], "the optimizer state (momentum buffers) is empty"


def _assert_same(a: object, b: object, where: str) -> None:
    """Recursive exact equality of two checkpoint entries (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_more_epochs_are_refused_when_not_every_epoch_is_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The last epoch is always validated: with eval_every 2, extending a 1-epoch run would
    validate epoch 1, which a 2-epoch run never does, and so could select another model."""
    step = ("schedule.name=step", "schedule.warmup_epochs=0", "train.eval_every=2")
    assert _train(tmp_path, *step, "train.epochs=1") == 0
    err = _error(capsys, *TINY, *step, "train.epochs=2", f"train.output_dir={tmp_path}",
                 "train.run_name=r", "--resume")  # fmt: skip
    assert (
        "train.epochs: 1 (checkpoint) vs 2 (now), refused because with train.eval_every > 1" in err
    )


def test_exploding_loss_stops_with_the_step_and_a_nonzero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = _train(
        tmp_path,
        "optim.lr=1.0e+30",
        "schedule.warmup_epochs=0",
        "train.checkpoint_every_steps=1",
        "train.epochs=1",
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "the loss became" in err and "at step" in err and "last good checkpoint" in err
    step = int(err.split("at step ")[1].split()[0])
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == step - 1


# -- exact resume after SIGKILL -----------------------------------------------------------
def _cli(tmp: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "resnext",
        "train",
        *TINY,
        "train.epochs=3",
        "train.threads=1",
        "train.checkpoint_every_steps=2",
        f"train.output_dir={tmp}",
        f"train.run_name={name}",
        *extra,
    ]


def _peek(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bitwise_equal(tmp_path: Path) -> None:
    """SIGKILL a real training run in the middle of an epoch, resume it, compare every tensor."""
    with (
        open(tmp_path / "full.log", "w") as full_log,
        open(tmp_path / "killed.log", "w") as killed_log,
        open(tmp_path / "resumed.log", "w") as resumed_log,
    ):
        full = subprocess.Popen(_cli(tmp_path, "full"), stdout=full_log, stderr=subprocess.STDOUT)
        victim = subprocess.Popen(
            _cli(tmp_path, "killed"), stdout=killed_log, stderr=subprocess.STDOUT
        )
        last = tmp_path / "killed" / "last.pt"
        deadline = time.monotonic() + 240
        killed_at = None
        while time.monotonic() < deadline and victim.poll() is None:
            ckpt = _peek(last)
            # Wait for a checkpoint in the middle of epoch 2 or 3 (so one epoch, best.pt and
            # its validation are behind it), freeze the process, and kill it if last.pt is
            # still mid-epoch; SIGSTOP makes this immune to how late this loop looks.
            if ckpt is not None and ckpt["epoch"] >= 1 and ckpt["epoch_step"] > 0:
                victim.send_signal(signal.SIGSTOP)
                frozen = _peek(last)
                if frozen is not None and frozen["epoch_step"] > 0:
                    victim.send_signal(signal.SIGKILL)
                    killed_at = frozen
                    break
                victim.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        assert killed_at is not None, "the run ended or timed out before a mid-epoch checkpoint"
        assert victim.wait() == -signal.SIGKILL
        at_kill = _peek(last)
        assert at_kill is not None and at_kill["step"] == killed_at["step"]
        assert 0 < at_kill["epoch_step"] < 12 and at_kill["step"] < 36, "not killed mid-epoch"

        resumed = subprocess.run(
            _cli(tmp_path, "killed", "--resume"), stdout=resumed_log, stderr=subprocess.STDOUT
        )
        assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()
        assert full.wait(timeout=240) == 0, (tmp_path / "full.log").read_text()
    assert "resuming" in (tmp_path / "resumed.log").read_text()

    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (3, 36)
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for i, state in a["optimizer"]["state"].items():
        mb = b["optimizer"]["state"][i]["momentum_buffer"]
        assert torch.equal(state["momentum_buffer"], mb)
    assert a["scheduler"] == b["scheduler"]

    # The logs agree too, once wall-clock fields are set aside.
    def records(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        drop = ("seconds", "img_per_s")
        return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]

    assert records("full") == records("killed")
    cfg = yaml.safe_load((tmp_path / "killed" / "config.yaml").read_text())
    assert cfg["train"]["resume"].endswith("last.pt")


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    """DDP under torchrun (gloo): two processes share the steps, rank 0 writes the files."""
    done = _torchrun(tmp_path, "ddp")  # asserts exit 0
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    # 180 images / 2 processes / batch 16 = 6 steps, lr scaled by nothing (lr_base_batch null).
    assert ckpt["metrics"]["world_size"] == 2 and ckpt["step"] == 6
    assert done.stdout.count("test top-1") == 1  # only rank 0 prints
    assert not any(k.startswith("module.") for k in ckpt["model"])


def _torchrun(tmp: Path, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = torchrun_standalone(
        "-m",
        "resnext",
        "train",
        *TINY,
        "train.epochs=1",
        "train.threads=1",
        f"train.output_dir={tmp}",
        f"train.run_name={name}",
        *extra,
    )
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_torchrun_stop_mid_epoch_and_resume_is_the_uninterrupted_run(tmp_path: Path) -> None:
    """Under DDP a mid-epoch last.pt holds the whole job's running sums of the epoch (rank 0
    takes them back, rank 1 starts from zero): the resumed epoch's train loss and accuracy,
    and every weight, equal the uninterrupted run's."""
    _torchrun(tmp_path, "stopped", "train.max_steps=4")
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["epoch_step"] == 4
    _torchrun(tmp_path, "stopped", "--resume")
    _torchrun(tmp_path, "straight")
    _same_run(tmp_path / "stopped", tmp_path / "straight")
