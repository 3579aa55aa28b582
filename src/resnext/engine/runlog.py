"""The run log: ``metrics.jsonl``, ``curves.png`` and TensorBoard event files, from one writer.

The trainer hands every record to :class:`RunLog`; what goes where is decided here, once.
Only rank 0 writes (``enabled=False`` elsewhere). TensorBoard is imported only when it is on,
so importing this module does not pull in the ``tensorboard`` package.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .plots import plot_curves

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"

# Record kind -> (record key, TensorBoard tag) for each value shown as a scalar. Keys not
# listed here (epoch, step, seconds, ...) and other kinds (error, stop, ...) stay in the jsonl.
_SCALARS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": tuple((key, f"train/{key}") for key in ("loss", "lr", "img_per_s")),
    "epoch": tuple(
        (key, f"epoch/{key}")
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "lr")
    ),
    "test": tuple(
        (key, f"test/{key.removeprefix('test_')}")
        for key in ("test_loss", "test_top1", "test_top5")
    ),
}

# Kinds a resumed run writes again (the final test, the reason it stopped), so their lines
# from the interrupted run are dropped even when their step is not past the checkpoint's.
_REWRITTEN_ON_RESUME = frozenset({"test", "stop"})


def _summary_writer_class() -> type[SummaryWriter]:
    """torch's SummaryWriter; raises ImportError when the tensorboard package is missing."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class RunLog:
    """Writes each record to ``metrics.jsonl`` and, when on, as TensorBoard scalars.

    Args:
        run_dir: the run folder; the log is ``metrics.jsonl``, ``curves.png`` and
            ``tensorboard/`` in it.
        enabled: False on DDP ranks other than 0: nothing is written or created.
        tensorboard: True writes event files (the ``tensorboard`` package must be installed),
            False does not, None does when the package can be imported.
        resume_step: the resumed checkpoint's optimizer step, or None for a new run. A new run
            starts the log afresh; a resumed one drops what an interrupted process logged
            after the checkpoint, so its log equals an uninterrupted run's.

    Raises:
        ConfigError: ``tensorboard=True`` and the package cannot be imported. Checked on every
            rank, so a missing package stops all DDP processes alike instead of leaving the
            others waiting for rank 0.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        enabled: bool = True,
        tensorboard: bool | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._writer: SummaryWriter | None = None
        self._tensorboard_dir: Path | None = None
        self._closed = False
        writer_class = self._resolve_tensorboard(tensorboard)
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept = self._prepare_metrics(resume_step)
        if writer_class is not None:
            self._tensorboard_dir = self.run_dir / TENSORBOARD_DIR
            self._writer = self._open_writer(writer_class, resume_step)
            if resume_step is not None:
                # Events from resume_step on were purged; what the jsonl kept at that very
                # step (its train/epoch records, not a test the stopped run wrote) goes back.
                for record in kept:
                    if record.get("step") == resume_step:
                        self._add_scalars(record)

    def _resolve_tensorboard(self, tensorboard: bool | None) -> type[SummaryWriter] | None:
        """The SummaryWriter class when event files are on, else None."""
        if tensorboard is False or (tensorboard is None and not self.enabled):
            return None
        try:
            return _summary_writer_class()
        except ImportError as err:
            if tensorboard is None:
                return None
            raise ConfigError(
                "train.tensorboard=true needs the tensorboard package: "
                "pip install 'resnext[tensorboard]' (or set train.tensorboard=false)"
            ) from err

    def _prepare_metrics(self, resume_step: int | None) -> list[dict[str, Any]]:
        """Start metrics.jsonl afresh, or cut it back to the records up to ``resume_step``;
        returns the records kept."""
        path = self.run_dir / METRICS_FILE
        kept: list[str] = []
        records: list[dict[str, Any]] = []
        if resume_step is not None and path.exists():
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by the kill
                if (
                    isinstance(record, dict)
                    and record.get("step", 0) <= resume_step
                    and record.get("kind") not in _REWRITTEN_ON_RESUME
                ):
                    kept.append(line)
                    records.append(record)
        path.write_text("".join(line + "\n" for line in kept))
        return records

    def _open_writer(
        self, writer_class: type[SummaryWriter], resume_step: int | None
    ) -> SummaryWriter:
        """A writer into ``tensorboard/``: a new run first removes the earlier run's event
        files (as metrics.jsonl is truncated); a resumed run purges events past its step."""
        log_dir = self.run_dir / TENSORBOARD_DIR
        if resume_step is None:
            for old in log_dir.glob("events.out.tfevents.*"):
                if old.is_file():
                    old.unlink()
            return writer_class(log_dir=str(log_dir))
        # purge_step writes a restart marker: TensorBoard drops events at steps >= it that
        # the stopped process wrote before this one (a test at the stop step included).
        return writer_class(log_dir=str(log_dir), purge_step=resume_step)

    @property
    def tensorboard_dir(self) -> Path | None:
        """Where the event files go; None when TensorBoard is off (or this rank logs nothing)."""
        return self._tensorboard_dir

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to metrics.jsonl and log its scalars to TensorBoard at its step.

        Records of the kinds in ``_SCALARS`` must carry ``"step"`` (the optimizer step). The
        event file is flushed each time, like the jsonl: a kill must not lose events from
        before the checkpoint, since a resumed run does not write them again.
        """
        if not self.enabled:
            return
        if self._closed:
            raise RuntimeError("RunLog.write() after close()")
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._add_scalars(record)

    def _add_scalars(self, record: dict[str, Any]) -> None:
        """The record's numeric values as TensorBoard scalars at its step (when on)."""
        if self._writer is None:
            return
        scalars = [
            (tag, float(record[key]))
            for key, tag in _SCALARS.get(record.get("kind", ""), ())
            if _is_number(record.get(key))
        ]
        if scalars:
            step = int(record["step"])
            for tag, value in scalars:
                self._writer.add_scalar(tag, value, global_step=step)
            self._writer.flush()

    def curves(self, history: list[dict[str, Any]], *, val_label: str, train_label: str) -> None:
        """Draw ``curves.png`` from the epoch records (nothing when there are none)."""
        if not self.enabled or not history:
            return
        plot_curves(
            history, self.run_dir / CURVES_FILE, val_label=val_label, train_label=train_label
        )

    def close(self) -> None:
        """Flush and close the event file; further calls do nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._closed = True

    def __enter__(self) -> RunLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
