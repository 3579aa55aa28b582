"""The run's loss and accuracy curves as a PNG (matplotlib's Agg back-end: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_curves(
    history: list[dict[str, Any]],
    path: str | Path,
    val_label: str = "val",
    train_label: str = "train",
) -> None:
    """Train/val loss (left) and top-1 accuracy (right) per epoch, from the epoch records.

    Train values are running averages over each epoch in train mode (augmented, BN batch
    statistics); val loss comes from the weights being selected (``val_label`` says which),
    val accuracy from both the trained and the EMA weights where the run keeps an EMA.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    val = [r for r in history if "val_top1" in r]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label=train_label)
    ax_acc.plot(epochs, [r["train_top1"] for r in history], label="train")
    if val:
        ve = [r["epoch"] for r in val]
        ax_loss.plot(ve, [r["val_loss"] for r in val], label=val_label)
        if all("val_top1_ema" in r for r in val):  # an EMA run: both weights' accuracy
            ax_acc.plot(ve, [r["val_top1_model"] for r in val], label="val (trained weights)")
            ax_acc.plot(ve, [r["val_top1_ema"] for r in val], label="val (EMA weights)")
        else:
            ax_acc.plot(ve, [r["val_top1"] for r in val], label=val_label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
