"""The files ``surgery finetune`` writes beside the checkpoint: ``train_log.jsonl`` and ``loss.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from surgery.fileio import atomic_write_text

FILES = {"log": "train_log.jsonl", "plot": "loss.png"}


def write_log(directory: Path, log: list[dict[str, Any]]) -> Path:
    """One JSON object per optimizer step (step, epoch, loss, lr, grad_norm, tokens, tokens/s)."""
    path = Path(directory) / FILES["log"]
    atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in log))
    return path


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a ``train_log.jsonl``."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(directory: Path, log: list[dict[str, Any]], title: str) -> Path | None:
    """``loss.png``: training loss per optimizer step, learning rate on a second axis; None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(directory) / FILES["plot"]
    steps = [entry["step"] for entry in log]
    figure, axis = plt.subplots(figsize=(6.4, 4.0))
    axis.plot(steps, [entry["loss"] for entry in log], marker="o" if len(log) < 40 else None, label="loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("training loss (mean over target tokens)")
    other = axis.twinx()
    other.plot(steps, [entry["lr"] for entry in log], color="tab:gray", linestyle="--", label="learning rate")
    other.set_ylabel("learning rate")
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
