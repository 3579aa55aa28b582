"""benchmarks/shards.py (a script, not part of the package): its table reports what it
measured, here the page-cache share before each cold pass, the read-bytes rows included."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "shards.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmark_shards", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures("restore_torch_globals")
def test_every_row_shows_the_share_evict_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bench = _load()
    monkeypatch.setattr(bench, "evict", lambda files: 0.25)  # as fincore would report it
    argv = ["shards.py", "--images", "8", "--workers", "0", "--dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if re.search(r"\d%", line)]
    assert len(rows) == 4  # two read-bytes rows, the folder and the shards at 0 workers
    assert all(re.search(r" 25% ", row) for row in rows), rows
    assert sum("read bytes only" in row for row in rows) == 2
    assert bench.percent(float("nan")) == "?"  # no fincore: not measured, not 0%
