"""Pictures of training runs (matplotlib's object API: no display, no global pyplot state)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure


def plot_loss(history, path: Path, title: str = "") -> None:
    """Train loss per step and validation loss at each evaluation, one PNG."""
    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    ax.plot(history.steps, history.train_loss, label="train", linewidth=0.8, alpha=0.8)
    if history.val_steps:
        ax.plot(history.val_steps, history.val_loss, "o-", label="validation", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
