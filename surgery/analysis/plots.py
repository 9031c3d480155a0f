"""Figures for the similarity analysis: heatmap (paper Fig 3/14/15) and per-layer variance / norm (Fig 15).

Uses matplotlib's object API with the Agg canvas only (no pyplot, no global backend switch), so it works
headless and never disturbs other matplotlib users in the same process.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from surgery.analysis.similarity import LayerClasses, SimilarityResult


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _ticks(size: int) -> list[int]:
    step = 1 if size <= 20 else 2 if size <= 40 else 5 if size <= 100 else 10
    ticks = list(range(0, size, step))
    if ticks[-1] != size - 1 and size - 1 - ticks[-1] >= step / 2:
        ticks.append(size - 1)
    return ticks


def _wrap(title: str, width: int = 80) -> str:
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


def _axis_note(result: SimilarityResult) -> str:
    last = "last = after final norm" if result.final_norm_applied else "last = last step output"
    return f"hidden state index (0 = embeddings, k = after executed step k; {last})"


def plot_heatmap(result: SimilarityResult, path: Path, *, title: str, classes: LayerClasses | None = None) -> Path:
    """Heatmap of ``result.matrix`` with the entry index on both axes and a colour bar."""
    from matplotlib.patches import Rectangle

    matrix = result.matrix
    size = result.size
    figure = _figure(6.4, 5.8)
    axes = figure.add_subplot()
    low = min(0.0, float(np.floor(matrix.min() * 10) / 10))
    image = axes.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0, interpolation="nearest")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.03)
    colorbar.set_label("avg. cosine similarity")
    ticks = _ticks(size)
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.tick_params(labelsize=7)
    axes.set_xlabel(_axis_note(result), fontsize=8)
    axes.set_ylabel("hidden state index", fontsize=8)
    if classes is not None:
        for first, last in classes.bounds:
            axes.add_patch(
                Rectangle(
                    (first - 0.5, first - 0.5),
                    last - first + 1,
                    last - first + 1,
                    fill=False,
                    edgecolor="white",
                    linestyle="--",
                    linewidth=1.0,
                )
            )
    axes.set_title(_wrap(title), fontsize=9)
    figure.savefig(path)
    return path


TOKEN_SETS = {"all": "all tokens", "text": "text tokens (no BOS/CLS/SEP)"}


def plot_layer_stats(
    series: Sequence[tuple[str, SimilarityResult]], path: Path, *, title: str, tokens: str = "both"
) -> Path:
    """Per-entry hidden-state variance (Fig 15) and mean L2 norm, log scale; one colour per (label, result).

    ``tokens="both"``: solid line over all counted tokens, dashed over the text tokens only (without
    BOS/CLS/SEP) where there are special tokens; ``"all"`` / ``"text"``: only that one (to compare results).
    """
    figure = _figure(6.4, 5.4)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for label, result in series:
        x = np.arange(result.size)
        prefix = f"{label}: " if label else ""
        has_text = result.num_special_tokens > 0 and not np.isnan(result.variance_text).all()
        sets = ["all", "text"] if tokens == "both" and has_text else ["text" if tokens == "text" else "all"]
        panels = (
            (top, {"all": result.variance, "text": result.variance_text}),
            (bottom, {"all": result.mean_norm, "text": result.mean_norm_text}),
        )
        for axes, values in panels:
            color = None
            for index, token_set in enumerate(sets):
                (line,) = axes.plot(
                    x,
                    values[token_set],
                    marker="o",
                    markersize=3 if index == 0 else 2,
                    linewidth=1.2 if index == 0 else 1.0,
                    linestyle="-" if index == 0 else "--",
                    color=color,
                    label=prefix + TOKEN_SETS[token_set],
                )
                color = line.get_color()
            if result.final_norm_applied:  # the final-normed entry lives on another scale: mark it
                last = values[sets[0]][-1:]
                axes.plot(x[-1:], last, marker="s", markersize=7, color=color, fillstyle="none")
    top.set_yscale("log")
    bottom.set_yscale("log")
    top.set_ylabel("variance of hidden state\n(mean over tokens)", fontsize=8)
    bottom.set_ylabel("L2 norm of hidden state\n(mean over tokens)", fontsize=8)
    size = max(result.size for _, result in series)
    bottom.set_xticks(_ticks(size))
    note = "hidden state index (0 = embeddings, k = after executed step k"
    note += "; square = after final norm)" if series[0][1].final_norm_applied else ")"
    bottom.set_xlabel(note, fontsize=8)
    for axes in (top, bottom):
        axes.grid(True, which="major", alpha=0.3)
        axes.tick_params(labelsize=7)
    top.legend(fontsize=7)
    top.set_title(_wrap(title), fontsize=9)
    figure.savefig(path)
    return path
