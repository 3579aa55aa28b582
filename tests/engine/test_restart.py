"""What a (re)started job resolves before any work: the run folder named after the job, the
resume a torchrun or SLURM restart makes by itself, the stop signals a config may name, and
the signal flag itself (a real signal sent to this process)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from helpers import tiny_checkpoint
from resnext.config import load_config
from resnext.engine.distributed import DistInfo
from resnext.engine.preemption import StopSignals, exit_status
from resnext.engine.restart import Job, resolve_restart
from resnext.errors import ConfigError

TORCHRUN = {"TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RUN_ID": "job7"}


def _cfg(tmp: Path, *overrides: str):
    return load_config(None, ["model.name=resnext29_2x4d", f"train.output_dir={tmp}", *overrides])


def test_a_first_start_outside_a_job_changes_nothing(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert resolve_restart(cfg, ["a=1"], env={}) == (cfg, ["a=1"], None)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLURM_JOB_ID": "4242"}, "resnext29_2x4d-slurm4242"),
        (TORCHRUN, "resnext29_2x4d-job7"),
        ({**TORCHRUN, "SLURM_JOB_ID": "4242"}, "resnext29_2x4d-slurm4242"),  # SLURM's survives
        ({**TORCHRUN, "TORCHELASTIC_RUN_ID": "a/b c"}, "resnext29_2x4d-a-b-c"),
    ],
)
def test_the_run_folder_is_named_after_the_job(tmp_path: Path, env: dict, name: str) -> None:
    cfg, overrides, note = resolve_restart(_cfg(tmp_path), [], env=env)
    assert cfg.train.run_name == name and overrides == [f"train.run_name={name}"]
    assert cfg.train.resume is None and note is None


def test_an_explicit_run_name_or_resume_is_kept(tmp_path: Path) -> None:
    env = {"SLURM_JOB_ID": "4242"}
    cfg, _, _ = resolve_restart(_cfg(tmp_path, "train.run_name=mine"), [], env=env)
    assert cfg.train.run_name == "mine"
    cfg, _, _ = resolve_restart(_cfg(tmp_path, "train.resume=auto"), [], env=env)
    assert cfg.train.run_name is None  # --resume finds the newest run, as without SLURM


def test_torchrun_restarts_without_a_stable_folder_are_refused(tmp_path: Path) -> None:
    env = {"TORCHELASTIC_MAX_RESTARTS": "2", "TORCHELASTIC_RUN_ID": "none"}
    with pytest.raises(ConfigError, match=r"set train.run_name, or give torchrun --rdzv-id"):
        resolve_restart(_cfg(tmp_path), [], env=env)
    # torchrun that never restarts keeps the timestamped folder
    cfg, _, _ = resolve_restart(_cfg(tmp_path), [], env={"TORCHELASTIC_RUN_ID": "x"})
    assert cfg.train.run_name is None


@pytest.mark.parametrize(
    ("env", "launcher"),
    [
        ({**TORCHRUN, "TORCHELASTIC_RESTART_COUNT": "1"}, "restart 1 by torchrun"),
        ({"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "2"}, "restart 2 by SLURM"),
    ],
)
def test_a_restart_resumes_its_run_folder_by_itself(
    tmp_path: Path, env: dict, launcher: str
) -> None:
    run = tmp_path / Job.from_env(env).run_name("resnext29_2x4d")  # type: ignore[operator]
    cfg, overrides, note = resolve_restart(_cfg(tmp_path), ["x=1"], env=env)
    assert cfg.train.resume is None  # no checkpoint yet: the run starts again
    assert note == f"{launcher}: no checkpoint in {run} yet, so the run starts again at step 0"

    run.mkdir()
    tiny_checkpoint(run / "last.pt")
    cfg, overrides, note = resolve_restart(_cfg(tmp_path), ["x=1"], env=env)
    assert cfg.train.resume == "auto" and cfg.train.run_name == run.name
    assert overrides == ["x=1", f"train.run_name={run.name}", "train.resume=auto"]
    assert note == f"{launcher}: resuming by itself from {run / 'last.pt'}"


@pytest.mark.parametrize("names", [["SIGKILL"], ["SIGTERM", "TERM"], ["SIGSTOP"]])
def test_stop_signals_must_be_catchable_signal_names(names: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"train\.stop_signals: '(SIGKILL|TERM|SIGSTOP)'"):
        load_config(None, [f"train.stop_signals=[{','.join(names)}]"])
    assert load_config(None, ["train.stop_signals=[]"]).train.stop_signals == ()


def test_a_signal_only_sets_the_flag_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    cpu = torch.device("cpu")
    try:
        with StopSignals(["SIGUSR1"], DistInfo(), cpu) as stop:
            assert signal.getsignal(signal.SIGUSR1) != before and stop.poll() is None
        assert signal.getsignal(signal.SIGUSR1) == before  # no stop: the handler it had
        with StopSignals(["SIGUSR1"], DistInfo(), cpu) as stop:
            os.kill(os.getpid(), signal.SIGUSR1)  # handled at once, in this (main) thread
            os.kill(os.getpid(), signal.SIGUSR1)  # a second one changes nothing
            assert stop.received == signal.SIGUSR1 and stop.poll() == signal.SIGUSR1
        assert signal.getsignal(signal.SIGUSR1) == before  # after a stop too
    finally:
        signal.signal(signal.SIGUSR1, before)
    assert exit_status(signal.SIGTERM) == 143 and exit_status(signal.SIGUSR1) == 138
