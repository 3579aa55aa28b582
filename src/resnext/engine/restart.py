"""Restarts: a run its launcher starts again resumes by itself from its own run folder.

``torchrun --max-restarts N`` starts the whole worker group again after a worker fails
(``TORCHELASTIC_RESTART_COUNT`` counts the restarts), and SLURM requeues a job after a node
failure or ``scontrol requeue`` (``SLURM_RESTART_COUNT``). Either way every process runs the
same command from the beginning. So that it finds the run it belongs to, the run folder is
stable across restarts: ``train.run_name``, else one named after the job (the SLURM job id, or
torchrun's rendezvous id where torchrun may restart the workers), never a new timestamp. A
restarted process then resumes as ``--resume`` would (:func:`~resnext.engine.setup.find_resume`
on that folder); where no checkpoint was written yet, the run starts again from step 0.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, from_dict, merge_overrides
from ..errors import ConfigError
from .setup import find_resume


def _count(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env.get(key, "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Job:
    """What the launcher tells this process about the job, from the environment."""

    restarts: int  # how many times the launcher has started the job again
    launcher: str  # who restarted it: "torchrun" or "SLURM" (or "" before any restart)
    job_id: str | None  # an id that stays the same across restarts, if there is one
    may_restart: bool  # torchrun was given --max-restarts > 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Job:
        env = os.environ if env is None else env
        torchrun, slurm = (
            _count(env, "TORCHELASTIC_RESTART_COUNT"),
            _count(env, "SLURM_RESTART_COUNT"),
        )
        may_restart = _count(env, "TORCHELASTIC_MAX_RESTARTS") > 0
        job_id = None
        if env.get("SLURM_JOB_ID"):  # kept by a requeue; torchrun's id may not be
            job_id = f"slurm{env['SLURM_JOB_ID']}"
        elif may_restart and env.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
            job_id = env["TORCHELASTIC_RUN_ID"]
        launcher = "torchrun" if torchrun else "SLURM" if slurm else ""
        return cls(torchrun or slurm, launcher, job_id, may_restart)

    def run_name(self, model: str) -> str | None:
        """The job's run folder name, or None where nothing identifies the job."""
        if self.job_id is None:
            return None
        return f"{model}-{re.sub(r'[^A-Za-z0-9._-]', '-', self.job_id)}"


def resolve_restart(
    cfg: Config, overrides: list[str], env: Mapping[str, str] | None = None
) -> tuple[Config, list[str], str | None]:
    """The config and overrides this start of the job runs with, and the line that says
    what a restart does (None on a first start).

    A run without ``train.run_name`` (and not resuming a given checkpoint) takes the job's
    name (:meth:`Job.run_name`); a restarted one (``train.resume`` unset) resumes its folder.
    The added keys go into the overrides too, so a resume with the checkpoint's own recipe
    (no config file given) keeps them.
    """
    tc, job = cfg.train, Job.from_env(env)
    extra: list[str] = []
    name = tc.run_name
    if name is None and tc.resume is None:
        name = job.run_name(cfg.model.name)
        if name is not None:
            extra.append(f"train.run_name={name}")
        elif job.may_restart:
            raise ConfigError(
                "torchrun may restart the workers (--max-restarts) and a restarted run resumes "
                "from its run folder, but nothing names that folder across restarts "
                "(torchrun's rendezvous id is 'none'): set train.run_name, or give torchrun "
                "--rdzv-id or --standalone"
            )
    note = None
    if job.restarts and tc.resume is None and name is not None:
        run_dir = Path(tc.output_dir) / name
        what = f"restart {job.restarts} by {job.launcher}"
        try:
            found = find_resume(
                from_dict(merge_overrides(cfg.to_dict(), [*extra, "train.resume=auto"]))
            )
        except ConfigError:
            if (run_dir / "last.pt").exists():
                raise  # a checkpoint is there but cannot be used: say why, start nothing
            note = f"{what}: no checkpoint in {run_dir} yet, so the run starts again at step 0"
        else:
            extra.append("train.resume=auto")
            note = f"{what}: resuming by itself from {found}"
    if extra:
        cfg = from_dict(merge_overrides(cfg.to_dict(), extra))
    return cfg, [*overrides, *extra], note
