"""Shared test settings: deterministic, two CPU threads (the CI machine has two cores)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# A suite run inside a SLURM job or under torchrun must not make its training runs name their
# folders after that job or resume by themselves (resnext.engine.restart reads these).
for _key in ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID"):  # fmt: skip
    os.environ.pop(_key, None)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The onnxruntime back-end's exports go to a folder of this test session, not ~/.cache."""
    os.environ["RESNEXT_CACHE"] = str(tmp_path_factory.mktemp("resnext-cache"))


@pytest.fixture
def restore_torch_globals():
    """`resnext train` sets process-wide torch flags; give the next test what it had."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)
