"""The EMA's BatchNorm statistics, each way of keeping them, measured on one training run.

``train.ema_bn`` does not change the training: the trained weights, and the EMA's averaged
weights, are the same whichever mode is chosen. So one run can score every mode at every
epoch. This script trains a recipe with ``train.ema_bn=recompute`` (the default) and keeps,
beside the run's own EMA, a shadow EMA with ``bn="average"`` updated from the same steps (its
weights equal the run's EMA weights bitwise; only its BN buffers differ). At each epoch's end
it scores on the val split:

- ``trained``: the trained weights;
- ``average``: the EMA with its statistics averaged along the trajectory (timm, torchvision);
- ``copy``: the EMA weights with the trained model's current statistics;
- ``recompute (train tf)``: the EMA with statistics measured on ``train.ema_bn_batches``
  train batches with the train transform;
- ``recompute (eval tf)``: the same batches' images through the eval transform instead (what
  ``train.ema_bn=recompute`` does since this benchmark measured it better).

It prints a table, writes it as JSON with the time each recompute took, and plots the curves.
The run itself is an ordinary run of the recipe: its folder holds best.pt/last.pt as usual.

Run: ``python benchmarks/ema_bn_modes.py configs/demo.yaml train.ema_decay=0.995 --out DIR``
"""

from __future__ import annotations

import argparse
import copy
import json
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from resnext.benchmarking import cpu_name
from resnext.config import load_config
from resnext.data import TransformedDataset
from resnext.engine.distributed import init_distributed
from resnext.engine.ema import ModelEma, recompute_loader
from resnext.engine.trainer import Trainer
from resnext.runtime import resolve_device
from resnext.table import format_table
from resnext.training import setup_run

MODES = ("trained", "average", "copy", "recompute (train tf)", "recompute (eval tf)")


class MeasuringTrainer(Trainer):
    """A Trainer that also scores every EMA BN mode at each epoch's end."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.ema is None or self.ema.bn != "recompute":
            raise SystemExit("needs an EMA (train.ema_decay) and train.ema_bn=recompute")
        self.shadow = ModelEma(self.model, self.ema.decay, bn="average")
        self.shadow.load_state_dict(self.ema.state_dict())
        run_update = self.ema.update

        def update_both(model: torch.nn.Module) -> None:
            run_update(model)
            self.shadow.update(model)

        self.ema.update = update_both  # type: ignore[method-assign]
        self.rows: list[dict[str, Any]] = []

    def _score(self, module: torch.nn.Module) -> float:
        return float(self.evaluate("val", module)["top1"])

    def _recompute(self, dataset: Any) -> tuple[torch.nn.Module, float]:
        """A copy of the EMA with its BN statistics measured on ``dataset``'s train batches
        in the order the run's own recompute uses."""
        ema = copy.deepcopy(self.ema)
        loader = recompute_loader(
            dataset, None, self.tc.batch_size, self.tc.seed, num_workers=self.cfg.data.num_workers
        )
        t = time.perf_counter()
        ema.recompute_bn(loader, self.tc.ema_bn_batches, self.device, self.tc.channels_last)
        return ema.module, time.perf_counter() - t

    def _end_of_epoch(self) -> None:
        p = self.progress
        epoch_seconds = p.seconds + (time.perf_counter() - self._t_start)
        copied = copy.deepcopy(self.shadow.module)
        copied.load_state_dict(
            {**self.shadow.state_dict(), **dict(self.model.named_buffers())}, strict=True
        )
        eval_train = TransformedDataset(self.train_set.base, self.val_set.transform)
        train_tf, t_train = self._recompute(self.train_set)
        eval_tf, t_eval = self._recompute(eval_train)
        row = {
            "epoch": p.epoch,
            "step": p.step,
            "trained": self._score(self.model),
            "average": self._score(self.shadow.module),
            "copy": self._score(copied),
            "recompute (train tf)": self._score(train_tf),
            "recompute (eval tf)": self._score(eval_tf),
            "recompute_seconds": t_train,
            "recompute_eval_tf_seconds": t_eval,
            "run_seconds_at_epoch_end": epoch_seconds,
        }
        self.rows.append(row)
        print(f"epoch {p.epoch}: " + "  ".join(f"{m} {row[m]:.2f}" for m in MODES), flush=True)
        super()._end_of_epoch()


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = [r["epoch"] for r in rows]
    for mode, style in zip(MODES, ("k-", "C3--", "C1-.", "C0-", "C2:"), strict=True):
        ax.plot(epochs, [r[mode] for r in rows], style, marker="o", ms=3, label=mode)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(textwrap.fill(title, 90), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    ap.add_argument("--out", type=Path, required=True, help="folder for the table, JSON, plot")
    args = ap.parse_args()
    overrides = [*args.overrides, "train.ema_bn=recompute", "train.eval_every=1"]
    cfg = load_config(args.config, overrides)
    device = resolve_device(cfg.train.device, what="train.device")
    dist = init_distributed(device)
    setup, _ = setup_run(cfg, device, dist)
    trainer = MeasuringTrainer(setup)
    t = time.perf_counter()
    result = trainer.fit()
    seconds = time.perf_counter() - t
    args.out.mkdir(parents=True, exist_ok=True)
    rows = trainer.rows
    headers = ["epoch", "step", *MODES]
    body = [[r[h] if isinstance(r[h], int) else f"{r[h]:.2f}" for h in headers] for r in rows]
    print(format_table([headers, *body], left=0))
    mean_recompute = sum(r["recompute_seconds"] for r in rows) / len(rows)
    epoch_seconds = rows[-1]["run_seconds_at_epoch_end"] / len(rows)
    where = f"{cpu_name()}, {torch.get_num_threads()} threads, {setup.cfg.train.precision}"
    print(
        f"recompute of {setup.cfg.train.ema_bn_batches} batches: {mean_recompute:.2f} s on "
        f"average; an epoch of this run (all this script adds included): {epoch_seconds:.1f} s; "
        f"{where}"
    )
    print(f"run folder {setup.run_dir}; test: {result.test}")
    record = {
        "config": args.config,
        "overrides": overrides,
        "cpu": where,
        "rows": rows,
        "seconds": seconds,
        "test": result.test,
    }
    (args.out / "ema_bn_modes.json").write_text(json.dumps(record, indent=1))
    title = f"{Path(args.config).name} {' '.join(args.overrides)}"
    plot(rows, title, args.out / "ema_bn_modes.png")


if __name__ == "__main__":
    main()
