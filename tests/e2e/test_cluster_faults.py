"""Training that survives the cluster, tried with real processes and real signals: a stop
signal mid-epoch (also sent again and again while last.pt is written), a stop signal to one
of two DDP workers, a SIGKILLed worker under ``torchrun --max-restarts 1`` (the group
restarts and resumes by itself), and two torchrun launchers as two "nodes" on loopback. Each
run ends bitwise equal (model, EMA, optimizer, schedule, metrics.jsonl) to an uninterrupted
run of the same job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import (
    TORCHRUN,
    assert_same_training_state,
    run_records,
    tiny_run,
    torchrun_standalone,
    torchrun_workers,
)
from resnext.checkpoint import load_checkpoint
from resnext.cli import main

# ~180 train images, 16 per batch: 12 steps per epoch in one process, 6 in two.
TINY = tiny_run(
    "data.test_fraction=0.8",
    "train.batch_size=16",
    "train.ema_decay=0.9",
    "train.log_every=1",
    "train.threads=1",
    "train.epochs=2",
    "train.tensorboard=false",
)
BOUND = 240  # seconds any one process of these tests may take

pytestmark = pytest.mark.usefixtures("restore_torch_globals")


def _args(tmp: Path, name: str, *extra: str) -> list[str]:
    return ["train", *TINY, f"train.output_dir={tmp}", f"train.run_name={name}", *extra]


def _cli(tmp: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "resnext", *_args(tmp, name, *extra)]


def _steps_logged(run: Path) -> int:
    """The newest optimizer step metrics.jsonl records (0 before the first)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(x).get("step", 0) for x in lines if x.endswith("}")), default=0)


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int) -> int:
    """Freeze ``proc`` (SIGSTOP) once it has logged ``step``; the step it had logged."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline and proc.poll() is None:
        if _steps_logged(run) >= step:
            proc.send_signal(signal.SIGSTOP)
            return _steps_logged(run)
        time.sleep(0.01)
    raise AssertionError(f"the run ended or took over {BOUND} s before step {step}")


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-process run (2 epochs, 24 steps)."""
    tmp = tmp_path_factory.mktemp("straight")
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        assert main(_args(tmp, "straight")) == 0
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
    return tmp / "straight"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "again", "group"),
    [
        (signal.SIGTERM, None, False),
        (signal.SIGUSR1, signal.SIGTERM, False),
        (signal.SIGTERM, None, True),
    ],
    ids=[
        "SIGTERM",
        "SIGUSR1-then-SIGTERM-again-and-again",
        "SIGTERM-to-the-process-group-with-2-loader-workers",
    ],
)
def test_stop_signal_mid_epoch_then_resume_is_the_uninterrupted_run(
    tmp_path: Path,
    straight: Path,
    sig: signal.Signals,
    again: signal.Signals | None,
    group: bool,
) -> None:
    """The run finishes the step in progress, writes last.pt there, logs a stop record and
    exits 128 + the signal; ``again``, sent every 2 ms from then until the run says it stopped
    (a line printed once last.pt is written), changes nothing. --resume ends bitwise equal.

    ``group``: the run has two DataLoader worker processes and the signal goes to its whole
    process group (as ``scancel``, ``pkill -f`` and a shell's job control send it): the workers
    get it too, and the run still stops cleanly; then no process of the group is left."""
    run = tmp_path / "stopped"
    log = tmp_path / "stopped.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines in the log as they are printed
    workers = ("data.num_workers=2",) if group else ()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _cli(tmp_path, "stopped", *workers),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=group,  # its own process group, the loader workers in it
        )
        try:
            logged = _wait_for_step(proc, run, 2)  # frozen in epoch 1 (12 steps)
            assert logged < 10, "frozen too late for a mid-epoch stop"
            if group:
                os.killpg(proc.pid, sig)  # the workers get it at once; the frozen run on SIGCONT
            else:
                proc.send_signal(sig)  # delivered on SIGCONT: the process then stops within a step
            proc.send_signal(signal.SIGCONT)
            sent = 0
            while again is not None and proc.poll() is None and "stopped at" not in log.read_text():
                proc.send_signal(again)  # through the whole checkpoint write
                sent += 1
                time.sleep(0.002)
            assert again is None or sent > 1
            code = proc.wait(timeout=BOUND)
            if group:
                _wait_for_group_to_end(proc.pid)
        finally:
            proc.kill()
    text = log.read_text()
    assert code == 128 + sig, text
    assert f"stopped by {sig.name}; --resume continues it" in text and "test top-1" not in text
    stop = run_records(run)[-1]
    assert stop == {
        "kind": "stop", "epoch": 1, "step": stop["step"], "batch": stop["step"],
        "reason": "signal", "signal": sig.name,
    }  # fmt: skip
    assert logged <= stop["step"] <= logged + 1 < 12  # the step in progress, no step lost
    ckpt = load_checkpoint(run / "last.pt")  # whole, however many signals came
    assert (ckpt["epoch"], ckpt["step"]) == (0, stop["step"])

    assert main(_args(tmp_path, "stopped", "--resume", "data.num_workers=0")) == 0
    assert_same_training_state(run, straight)


def _wait_for_group_to_end(pgid: int) -> None:
    """Wait until no process of group ``pgid`` is left (the loader workers exit after the
    run); fail, killing the stragglers, after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.killpg(pgid, signal.SIGKILL)
    raise AssertionError(f"processes of the run's group {pgid} were left 30 s after it ended")


# -- two processes: torchrun -------------------------------------------------------------
def _torchrun(tmp: Path, name: str, *extra: str, launch: tuple[str, ...] = ()) -> list[str]:
    if not launch:
        return torchrun_standalone("-m", "resnext", *_args(tmp, name, *extra))
    return [*TORCHRUN, *launch, "-m", "resnext", *_args(tmp, name, *extra)]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=BOUND)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _worker(agent: subprocess.Popen, rank: int) -> int:
    """The pid of the torchrun worker of ``rank`` (a child of the agent), once it is there."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        pid = torchrun_workers(agent.pid).get(rank)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under torchrun")


@pytest.fixture(scope="module")
def straight2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted two-process run (2 epochs, 12 steps), one torchrun launcher."""
    tmp = tmp_path_factory.mktemp("straight2")
    _run(_torchrun(tmp, "straight"))
    return tmp / "straight"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigterm_to_one_of_two_workers_stops_both_at_one_step(
    tmp_path: Path, straight2: Path
) -> None:
    """Only rank 1 gets SIGTERM: the flag, all-reduced at each step, stops both ranks after the
    same step (no hang), last.pt is written there, and a resume equals the straight run."""
    run = tmp_path / "stopped"
    agent = subprocess.Popen(
        _torchrun(tmp_path, "stopped"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        rank1 = _worker(agent, 1)
        deadline = time.monotonic() + BOUND
        while _steps_logged(run) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(rank1, signal.SIGTERM)
        out, _ = agent.communicate(timeout=BOUND)
    finally:
        agent.kill()
    assert agent.returncode != 0, out  # torchrun: workers exited 143, no restart allowed
    assert "exitcode: 143" in out and "SIGTERM: stopped at step" in out, out
    stop = run_records(run)[-1]
    assert stop["kind"] == "stop" and stop["signal"] == "SIGTERM", stop
    assert load_checkpoint(run / "last.pt")["step"] == stop["step"]
    done = _run(_torchrun(tmp_path, "stopped", "--resume"))
    assert f"(step {stop['step']})" in done.stdout
    assert_same_training_state(run, straight2)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_sigkilled_worker_torchrun_restarts_the_group_and_it_resumes_by_itself(
    tmp_path: Path, straight2: Path
) -> None:
    """torchrun --max-restarts 1, rank 1 SIGKILLed once a mid-run last.pt exists: the group
    restarts, resumes from last.pt without being told, and ends as the straight run."""
    run = tmp_path / "killed"
    cmd = _torchrun(
        tmp_path, "killed", "train.checkpoint_every_steps=2",
        launch=("--standalone", "--nproc-per-node", "2", "--max-restarts", "1"),
    )  # fmt: skip
    agent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        rank1 = _worker(agent, 1)
        deadline = time.monotonic() + BOUND
        while not (run / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(rank1, signal.SIGKILL)
        out, _ = agent.communicate(timeout=BOUND)
    finally:
        agent.kill()
    assert agent.returncode == 0, out
    assert "exitcode: -9" in out, out  # the kill happened while the job ran
    assert f"restart 1 by torchrun: resuming by itself from {run / 'last.pt'}" in out, out
    assert "resuming" in out and out.count("test top-1") == 1
    assert_same_training_state(run, straight2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_launchers_as_two_nodes_equal_one_launcher(tmp_path: Path, straight2: Path) -> None:
    """Two torchrun launchers, one process each, meet through c10d rendezvous on loopback
    (as two machines would): the run equals the one-launcher two-process run bitwise."""
    launch = (
        "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "two-nodes",
    )  # fmt: skip
    cmd = _torchrun(tmp_path, "nodes", launch=launch)
    nodes = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        outs = [node.communicate(timeout=BOUND)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(outs)
    assert sum(out.count("test top-1") for out in outs) == 1  # one rank 0 in the job
    assert load_checkpoint(tmp_path / "nodes" / "last.pt")["metrics"]["world_size"] == 2
    assert_same_training_state(tmp_path / "nodes", straight2)
