"""The results of ``surgery glue``: the JSON report (built and written here) and its printed table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery.fileio import atomic_write_json
from surgery.glue.config import GlueConfig


@dataclass
class TaskResult:
    """One task's metrics, its score (the metric, or the mean of two) and run details."""

    task: str
    metrics: dict[str, float]
    score: float
    details: dict[str, Any] = field(default_factory=dict)


def build_report(config: GlueConfig, results: list[TaskResult]) -> dict[str, Any]:
    """The results JSON: ``config``, ``results.<task>.<metric>`` (+ ``score``), ``average`` and ``details``."""
    from surgery.evaluation.normalize import unnormalized_average
    from surgery.glue.metrics import TASK_METRICS

    scores = {result.task: result.score for result in results}
    return {
        "config": {**config.record(), "tasks": list(scores)},
        "results": {result.task: {**result.metrics, "score": result.score} for result in results},
        "average": {
            "score": unnormalized_average(scores),
            "tasks": list(scores),
            "task_metrics": {task: list(TASK_METRICS[task]) for task in scores},
            "definition": "unnormalized mean over tasks of each task's score: its GLUE metric, or for two-metric "
            "tasks the mean of both (MRPC: F1 and accuracy; STS-B: Pearson and Spearman)",
        },
        "details": {result.task: result.details for result in results},
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_json(path, report)


def format_table(report: dict) -> str:
    """A plain-text table of the report: each task's metrics and score (x100), then the average."""
    from surgery.fileio import format_table as columns
    from surgery.glue.metrics import METRIC_LABELS, TASK_METRICS

    config = report["config"]
    rows = []
    for task, values in report["results"].items():
        metrics = "  ".join(f"{METRIC_LABELS[name]} {100 * values[name]:.1f}" for name in TASK_METRICS[task])
        rows.append((task, metrics, f"{100 * values['score']:.1f}"))
    average = report["average"]
    rows.append((f"average ({len(average['tasks'])} tasks, unnormalized)", "", f"{100 * average['score']:.1f}"))
    executed = {details["executed"] for details in report["details"].values()}
    plan = config["plan"] or "identity"
    lines = [
        f"GLUE  model: {config['model']}  plan: {plan} ({', '.join(sorted(executed))})  mode: {config['mode']}  "
        f"epochs: {config['epochs']}  lr: {config['lr']:g}  seed: {config['seed']}",
    ]
    return "\n".join([*lines, columns(["task", "metrics (x100)", "score"], rows, rule=False)])
