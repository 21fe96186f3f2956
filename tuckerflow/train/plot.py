"""The figure of a run: accuracy and the ranks of each layer per epoch (``training.png``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from tuckerflow.train.atomic import atomic_write

__all__ = ["plot_history"]


def plot_history(
    history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], *, title: str | None = None
) -> None:
    """Write a PNG with accuracy (train/validation) and the ranks of each layer per epoch."""
    # imported here: matplotlib is needed only by runs that write an output folder, and
    # importing it costs more than a short run
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    fig, (ax_acc, ax_rank) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    trained = [h for h in history if h["epoch"] > 0]
    ax_acc.plot(
        [h["epoch"] for h in trained], [100 * h["train_accuracy"] for h in trained], label="train"
    )
    ax_acc.plot(epochs, [100 * h["val_accuracy"] for h in history], label="validation")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend(loc="lower right")
    ax_acc.grid(alpha=0.3)
    layers = list(history[-1]["ranks"]) if history else []
    cmap = plt.get_cmap("tab10")
    for k, name in enumerate(layers[:10]):
        for mode, style in ((0, "-"), (1, "--")):
            values = [h["ranks"][name][mode] for h in history]
            label = f"{name or 'model'} r{mode}" if mode == 0 else None
            ax_rank.plot(epochs, values, style, color=cmap(k % 10), label=label)
    ax_rank.set_xlabel("epoch")
    ax_rank.set_ylabel("rank (solid: mode 0, dashed: mode 1)")
    ax_rank.set_yscale("log")
    if layers:
        ax_rank.legend(fontsize=7, loc="upper right")
    ax_rank.grid(alpha=0.3)
    for ax in (ax_acc, ax_rank):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png"), suffix=".png")
    finally:
        plt.close(fig)
