"""``surgery plot RUN_DIR``: the paper-style figures of a sweep and a markdown table of its scores.

* ``curves`` (Figs 2, 4-9, 11, 12, 17): the score (normalized median, or GLUE's unnormalized average) against the
  recipe's x (N, % of layers skipped, layer...), one line per recipe line, with error bars; one panel per benchmark
  beside it. The full model is the dashed line.
* ``heatmap`` (Fig 10): the score over x (e.g. M) and y (e.g. K), the best cell of each column boxed in red.
* ``similarity`` (Figs 3, 14, 15): the similarity heatmap of each variant and the hidden-state statistics of all
  variants in one figure (:mod:`surgery.analysis.plots`).

matplotlib's object API on the Agg canvas only (no pyplot), as :mod:`surgery.analysis.plots`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from surgery.sweep.scores import aggregate, score_rows

SCORE_LABEL = {
    "eval": "normalized (0 = chance, 1 = full)",
    "glue": "GLUE average (unnormalized)",
}


def figure_name(text: Any, taken: set[str] | None = None) -> str:
    """A file name stem made from data (``sweep.json``'s recipe name, a variant and its parameters): letters,
    digits, ``._=-`` only, no leading dot, at most 100 characters, so it cannot leave the plots folder; names
    already in ``taken`` get a ``-2``, ``-3``... suffix (and the result is added to it)."""
    stem = re.sub(r"[^A-Za-z0-9._=-]+", "_", str(text)).lstrip(".")[:100] or "figure"
    name, count = stem, 1
    while taken is not None and name in taken:
        count += 1
        name = f"{stem}-{count}"
    if taken is not None:
        taken.add(name)
    return name


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def x_value(row: dict[str, Any], name: str) -> float | None:
    """The row's value of the recipe's x (a parameter or a derived value such as ``pct``)."""
    value = row["params"].get(name, row["derived"].get(name))
    return None if value is None else float(value)


def _sample_note(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    sizes = sorted({(r["task"], r["n"]) for r in records})
    per_task = ", ".join(f"{task} n={n}" for task, n in dict(sizes).items())
    return f"{manifest['model']['name']} (T={manifest['model']['layers']}); {per_task}"


def _lines(rows: list[dict[str, Any]], x: str, key: str = "score", se_key: str = "score_se", task: str | None = None):
    """``{label: [(x, y, err)]}`` sorted by x, identity excluded."""
    lines: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        if row["plan"] == "identity":
            continue
        source = row if task is None else row.get("per_task", {}).get(task)
        xv = x_value(row, x)
        if source is None or xv is None or source.get(key) is None:
            continue
        err = source.get(se_key)
        lines.setdefault(row["label"], []).append((xv, source[key], err if err is not None else 0.0))
    return {label: sorted(points) for label, points in lines.items()}


def plot_curves(manifest: dict[str, Any], records: list[dict[str, Any]], path: Path) -> Path:
    """The score against x per recipe line, and one small panel per benchmark."""
    spec, kind = manifest["recipe_spec"], manifest["recipe_spec"]["kind"]
    rows = aggregate(score_rows(records, kind), spec.get("aggregate"))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    key, se_key = ("normalized", "normalized_se") if kind == "eval" else ("value", "se")
    panels = 1 + (len(tasks) if len(tasks) > 1 or kind == "eval" else 0)
    columns = min(panels, 4)
    figure = _figure(4.2 * columns, 3.4 * math.ceil(panels / columns) + 0.6)
    axes_list = figure.subplots(math.ceil(panels / columns), columns, squeeze=False).ravel()
    identity = next((r for r in rows if r["plan"] == "identity"), None)
    x_label = spec.get("x_label") or spec["x"]
    spread = " (± binomial s.e." + (f"; over {spec['aggregate']}: mean ± sd)" if spec.get("aggregate") else ")")
    for index, axes in enumerate(axes_list):
        if index >= panels:
            axes.set_visible(False)
            continue
        task = None if index == 0 else tasks[index - 1]
        lines = _lines(rows, spec["x"]) if task is None else _lines(rows, spec["x"], key, se_key, task)
        if not lines:
            axes.text(0.5, 0.5, "nothing to normalize\n(full model not above chance)", ha="center", va="center",
                      transform=axes.transAxes, fontsize=8)  # fmt: skip
        for label, points in lines.items():
            xs, ys, errs = zip(*points)
            axes.errorbar(xs, ys, yerr=errs, marker="o", markersize=3, capsize=2, linewidth=1.2, label=label)
        if identity is not None:
            level = identity.get("score") if task is None else (identity.get("per_task", {}).get(task) or {}).get(key)
            if level is not None:
                axes.axhline(level, color="black", linestyle="--", linewidth=0.8, label="full model")
        if kind == "eval":
            axes.axhline(0.0, color="grey", linestyle=":", linewidth=0.8)
        axes.set_xlabel(x_label, fontsize=8)
        axes.set_title(("median over tasks" if kind == "eval" else "average") if task is None else task, fontsize=9)
        axes.tick_params(labelsize=7)
        axes.grid(True, alpha=0.3)
        if index == 0:
            axes.set_ylabel(SCORE_LABEL.get(kind, "score") + spread, fontsize=7)
            if axes.get_legend_handles_labels()[0]:
                axes.legend(fontsize=6)
    figure.suptitle(f"Fig {spec['figure']}: {spec['title']}\n{_sample_note(manifest, records)}", fontsize=9)
    figure.savefig(path)
    return path


def best_cells(cells: dict[tuple[float, float], float]) -> dict[float, float]:
    """For each x (column), the y with the highest score (the paper's red box in Fig 10)."""
    best: dict[float, tuple[float, float]] = {}
    for (x, y), value in cells.items():
        if x not in best or value > best[x][1]:
            best[x] = (y, value)
    return {x: y for x, (y, _) in best.items()}


def plot_heatmap(manifest: dict[str, Any], records: list[dict[str, Any]], path: Path) -> Path:
    """Score over (x, y), the best y of each x boxed."""
    import numpy as np
    from matplotlib.patches import Rectangle

    spec = manifest["recipe_spec"]
    rows = score_rows(records, spec["kind"])
    cells = {
        (x_value(r, spec["x"]), x_value(r, spec["y"])): r["score"]
        for r in rows
        if r["plan"] != "identity" and r.get("score") is not None and x_value(r, spec["y"]) is not None
    }
    xs = sorted({x for x, _ in cells})
    ys = sorted({y for _, y in cells})
    grid = np.full((len(ys), len(xs)), np.nan)
    for (x, y), value in cells.items():
        grid[ys.index(y), xs.index(x)] = value
    figure = _figure(max(6.0, 1.6 + 0.5 * len(xs)), max(4.2, 2.0 + 0.35 * len(ys)))
    axes = figure.add_subplot()
    if not cells:  # e.g. the full model at chance on every task: nothing can be normalized
        axes.text(0.5, 0.5, "no normalizable scores", ha="center", va="center")
        figure.savefig(path)
        return path
    image = axes.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes).set_label(SCORE_LABEL.get(spec["kind"], "score"), fontsize=7)
    for x, y in best_cells(cells).items():
        column = [value for (cx, _), value in cells.items() if cx == x]
        if len(column) > 1 and max(column) == min(column):
            continue  # no best K in a flat column
        axes.add_patch(
            Rectangle((xs.index(x) - 0.5, ys.index(y) - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2)
        )
    for (x, y), value in cells.items():
        axes.text(xs.index(x), ys.index(y), f"{value:.2f}", ha="center", va="center", fontsize=6, color="white")
    axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs], fontsize=7)
    axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys], fontsize=7)
    axes.set_xlabel(spec.get("x_label") or spec["x"], fontsize=8)
    axes.set_ylabel(spec["y"], fontsize=8)
    axes.set_title(
        f"Fig {spec['figure']}: {spec['title']}\n{_sample_note(manifest, records)}\n"
        f"red box: best {spec['y']} per column",
        fontsize=8,
    )
    figure.savefig(path)
    return path


def similarity_folder(run_dir: Path, record: dict[str, Any]) -> Path:
    """The folder of a similarity record's files, refused when ``sweep.json``/results name one outside the run's
    similarity folder."""
    from surgery.errors import SurgeryError
    from surgery.sweep.report import SIMILARITY_DIR

    inside = (Path(run_dir) / SIMILARITY_DIR).resolve()
    folder = (Path(run_dir) / str(record["files"])).resolve()
    if inside not in folder.parents:
        raise SurgeryError(f"{run_dir}: a result names files outside {inside} ({str(record['files'])[:200]!r})")
    return folder


def plot_similarity(manifest: dict[str, Any], records: list[dict[str, Any]], run_dir: Path, out: Path) -> list[Path]:
    """One similarity heatmap per variant and one hidden-state statistics figure for all of them."""
    from surgery.analysis.plots import plot_heatmap as similarity_heatmap
    from surgery.analysis.plots import plot_layer_stats
    from surgery.analysis.report import read_result

    spec = manifest["recipe_spec"]
    paths, series, taken = [], [], set()
    for record in records:
        if "files" not in record:
            continue
        result = read_result(similarity_folder(run_dir, record))
        name = figure_name(str(record["variant"]) + "".join(f"_{k}{v}" for k, v in record["params"].items()), taken)
        title = (
            f"Fig {spec['figure']}: avg. cosine similarity, {record['plan']}\n{manifest['model']['name']}; "
            f"{result.num_texts} texts, {result.num_tokens} tokens"
        )
        paths.append(similarity_heatmap(result, out / f"similarity_{name}.png", title=title))
        series.append((f"{record['label']} ({record['plan']})", result))
    if series:
        title = f"Fig {spec['figure']}: hidden-state statistics per layer\n{manifest['model']['name']}"
        paths.append(plot_layer_stats(series, out / "layer_stats.png", title=title, tokens="text"))
    return paths


def _fmt(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if se is None else f"{value:.3f} ± {se:.3f}"


def _last_norm(metrics: dict[str, Any], run_dir: Path | None, record: dict[str, Any]) -> str:
    """The summary's last text-token norm cell: the plot's last point, saying whether it is after the final
    norm. A record written before this field (it held the entry before the last one) is read from its files."""
    if "last_text_norm" not in metrics and run_dir is not None and "files" in record:
        from surgery.analysis.report import read_result

        result = read_result(similarity_folder(run_dir, record))
        metrics = {"last_text_norm": round(float(result.mean_norm_text[-1]), 4)}
        metrics["last_entry_final_norm"] = result.final_norm_applied
    if "last_text_norm" in metrics:
        value = metrics["last_text_norm"]
        if value is None:
            return "-"
        return f"{value} (after final norm)" if metrics.get("last_entry_final_norm") else f"{value} (no final norm)"
    old = metrics.get("final_text_norm")
    return "-" if old is None else f"{old} (entry before the last one; older record)"


def summary_table(manifest: dict[str, Any], records: list[dict[str, Any]], run_dir: Path | None = None) -> str:
    """Markdown: one row per variant (per seed-aggregate where the recipe has one) with every task and the score.
    ``run_dir``: where a similarity record's files are (for records written before ``last_text_norm``)."""
    spec, kind = manifest["recipe_spec"], manifest["recipe_spec"]["kind"]
    lines = [f"# Fig {spec['figure']}: {spec['title']}", "", f"Paper: {spec['finding']}", ""]
    lines.append(f"Model {manifest['model']['given']} (T = {manifest['model']['layers']}); limit {manifest['limit']}.")
    lines.append("")
    if kind == "similarity":
        lines += [
            "| variant | plan | texts | tokens | mean similarity (inner entries) | last text-token norm |",
            "|---|---|---|---|---|---|",
        ]
        for r in records:
            m = r["metrics"]
            norm = _last_norm(m, run_dir, r)
            row = [r["label"], f"`{r['plan']}`", r["n"], m["tokens"], m["mean_similarity_inner"], norm]
            lines.append("| " + " | ".join(str(c) for c in row) + " |")
        lines += [
            "",
            "Last text-token norm: the mean L2 norm over text tokens of the last hidden-state entry, the last point "
            "of layer_stats.png: after the model's final norm where it has one (marked), else after the last "
            "executed step.",
        ]
        return "\n".join(lines) + "\n"
    rows = aggregate(score_rows(records, kind), spec.get("aggregate"))
    order = {name: index for index, name in reversed(list(enumerate(v["name"] for v in manifest["variants"])))}
    rows.sort(key=lambda row: (order.get(row["variant"], len(order)), sorted(row["params"].items())))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    score_name = "normalized median" if kind == "eval" else "average"
    ppl_tasks = [t for t in tasks if any((r.get("per_task", {}).get(t) or {}).get("log_ppl_ratio") for r in rows)]
    header = ["variant", "params", "plan", *[f"{t} (n)" for t in tasks], *[f"{t} log-ppl ratio" for t in ppl_tasks]]
    header.append(score_name)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["label"], " ".join(f"{k}={v}" for k, v in row["params"].items()) or "-", f"`{row['plan']}`"]
        for task in tasks:
            entry = row.get("per_task", {}).get(task)
            if entry is None:
                cells.append("-")
            elif row.get("count"):
                key, se_key = ("normalized", "normalized_se") if "normalized" in entry else ("value", "se")
                prefix = "normalized " if key == "normalized" else ""
                cells.append(f"{prefix}{_fmt(entry[key], entry[se_key])} (mean ± sd of {row['count']})")
            else:
                cells.append(f"{_fmt(entry['value'], entry['se'])} ({entry['n']})")
        for task in ppl_tasks:
            cells.append(_fmt((row.get("per_task", {}).get(task) or {}).get("log_ppl_ratio")))
        cells.append(_fmt(row.get("score"), row.get("score_se")))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Task cells: primary metric ± binomial standard error (n items); rows over seeds: mean ± standard deviation "
        "of the normalized values. log-ppl ratio: log(perplexity of the full model) / log(perplexity of the "
        "variant), 1 = full model, not in the median. Score: normalized median (or GLUE average) ± its standard "
        "error (see surgery.sweep.scores).",
    ]
    return "\n".join(lines) + "\n"


def plot_run(run_dir: Path, out_dir: Path | None = None) -> list[Path]:
    """Write the figures and ``summary.md`` of the sweep in ``run_dir``; returns the paths written."""
    from surgery.errors import SurgeryError
    from surgery.fileio import atomic_write_text
    from surgery.sweep.report import PLOTS_DIR, SUMMARY, read_manifest, read_records

    manifest = read_manifest(run_dir)
    keys = {(v["name"], tuple(sorted(v["params"].items()))) for v in manifest["variants"]}
    records = [
        r
        for r in read_records(run_dir)
        if r["limit"] == manifest["limit"]
        and r["settings"] == manifest["settings"]
        and r["task"] in manifest["tasks"]
        and (r["variant"], tuple(sorted(r["params"].items()))) in keys
    ]
    if not records:
        raise SurgeryError(f"{run_dir} has no results for its last sweep yet")
    out = Path(out_dir) if out_dir else Path(run_dir)
    figures = out / PLOTS_DIR
    figures.mkdir(parents=True, exist_ok=True)
    kind, plot = manifest["recipe_spec"]["kind"], manifest["recipe_spec"]["plot"]
    name = figure_name(manifest.get("recipe_name"))  # from a file: never a path
    paths: list[Path] = []
    if plot == "curves":
        paths.append(plot_curves(manifest, records, figures / f"{name}.png"))
    elif plot == "heatmap":
        paths.append(plot_heatmap(manifest, records, figures / f"{name}.png"))
    elif plot == "similarity" or kind == "similarity":
        paths += plot_similarity(manifest, records, Path(run_dir), figures)
    atomic_write_text(out / SUMMARY, summary_table(manifest, records, Path(run_dir)))
    return [*paths, out / SUMMARY]
