"""Scores of a sweep: the paper's normalized median (Llama) or unnormalized average (BERT/GLUE) per variant.

Normalization is :func:`surgery.evaluation.normalize.normalized_scores` with the sweep's own identity variant as
the baseline (same tasks, limit and settings). Error bars are binomial standard errors ``sqrt(p (1 - p) / n)``
of each task's primary metric; on the normalized scale they are divided by ``full - chance`` (the full model's
own uncertainty is not propagated). The median's error bar is that of the median task (the mean of the two
middle tasks' for an even count). Rows that differ only in ``aggregate`` (e.g. ``seed``) are combined into
mean and standard deviation over that parameter.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from surgery.errors import SurgeryError

GLUE_BINOMIAL = ("sst2", "rte", "qnli", "wnli")  # tasks whose score is an accuracy


def binomial_se(p: float | None, n: int | None) -> float | None:
    """``sqrt(p (1 - p) / n)``; None without a proportion or items."""
    if p is None or not n or not 0 <= p <= 1:
        return None
    return math.sqrt(p * (1 - p) / n)


def _row_key(record: dict[str, Any]) -> tuple:
    return record["variant"], tuple(sorted(record["params"].items()))


def group_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (variant, params) in first-seen order: ``{variant, label, params, derived, plan, tasks}``."""
    rows: dict[tuple, dict[str, Any]] = {}
    for record in records:
        row = rows.setdefault(
            _row_key(record),
            {k: record[k] for k in ("variant", "label", "params", "derived", "plan")} | {"tasks": {}},
        )
        row["tasks"][record["task"]] = record
    return list(rows.values())


def _primary(task: str) -> str:
    from surgery.evaluation.tasks import BENCHMARK_OF_TASK

    return BENCHMARK_OF_TASK[task].primary_metric


def score_rows(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Every row with ``per_task`` values and ``score`` / ``score_se`` (normalized median, or GLUE average)."""
    rows = group_rows(records)
    if kind == "eval":
        return _eval_scores(rows)
    if kind == "glue":
        return _glue_scores(rows)
    return rows


def _payload(row: dict[str, Any]) -> dict[str, Any]:
    tasks = row["tasks"]
    return {
        "results": {r.get("lm_eval_task", t): r["metrics"] for t, r in tasks.items()},
        "chance": {r.get("lm_eval_task", t): r["chance"] for t, r in tasks.items()},
    }


def _eval_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from surgery.evaluation.normalize import normalized_scores

    identity = next((row for row in rows if row["plan"] == "identity"), None)
    if identity is None:
        raise SurgeryError("the sweep has no identity variant (the full model) to normalize against")
    baseline = _payload(identity)
    for row in rows:
        normalized = normalized_scores(_payload(row), baseline)
        per_task, ses = {}, {}
        for task, record in row["tasks"].items():
            name = record.get("lm_eval_task", task)
            entry = normalized["tasks"].get(name, {})
            metric = _primary(name)
            value = record["metrics"].get(metric)
            se = binomial_se(value, record["n"])
            scale = (entry.get("full") or 0) - (entry.get("chance") or 0)
            norm_se = se / scale if se is not None and entry.get("normalized") is not None and scale > 0 else None
            per_task[task] = {
                "metric": metric,
                "value": value,
                "se": se,
                "n": record["n"],
                "normalized": entry.get("normalized"),
                "normalized_se": norm_se,
                "log_ppl_ratio": (entry.get("perplexity") or {}).get("log_ratio"),
            }
            ses[task] = norm_se
        row["per_task"] = per_task
        row["score"] = normalized["median"]
        row["score_se"] = _median_se(per_task)
        row["warnings"] = normalized["warnings"]
    return rows


def _median_se(per_task: dict[str, dict[str, Any]]) -> float | None:
    ranked = sorted((e["normalized"], e["normalized_se"]) for e in per_task.values() if e["normalized"] is not None)
    if not ranked:
        return None
    middle = len(ranked) // 2
    picks = [ranked[middle]] if len(ranked) % 2 else [ranked[middle - 1], ranked[middle]]
    ses = [se for _, se in picks]
    return None if any(se is None for se in ses) else sum(ses) / len(ses)


def _glue_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from surgery.evaluation.normalize import unnormalized_average

    for row in rows:
        per_task = {}
        for task, record in row["tasks"].items():
            value = record["metrics"]["score"]
            se = binomial_se(value, record["n"]) if task in GLUE_BINOMIAL else None
            per_task[task] = {"metric": "score", "value": value, "se": se, "n": record["n"]}
        row["per_task"] = per_task
        row["score"] = unnormalized_average({t: e["value"] for t, e in per_task.items()})
        ses = [e["se"] for e in per_task.values()]
        row["score_se"] = None if None in ses else math.sqrt(sum(s * s for s in ses)) / len(ses)
    return rows


def aggregate(rows: list[dict[str, Any]], parameter: str | None) -> list[dict[str, Any]]:
    """Combine rows differing only in ``parameter`` (mean, and the standard deviation as the error bar)."""
    if parameter is None or not any(parameter in row["params"] for row in rows):
        return rows
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        rest = tuple(sorted((k, v) for k, v in row["params"].items() if k != parameter))
        groups[(row["variant"], rest)].append(row)
    out = []
    for members in groups.values():
        first = members[0]
        if len(members) == 1 and parameter not in first["params"]:
            out.append(first)
            continue
        combined = {**first, "params": {k: v for k, v in first["params"].items() if k != parameter}}
        combined["plan"] = f"{len(members)} x {parameter}"
        combined["score"], combined["score_se"] = _mean_sd([m.get("score") for m in members])
        combined["per_task"] = {}
        for task, entry in first.get("per_task", {}).items():
            key, se_key = ("normalized", "normalized_se") if "normalized" in entry else ("value", "se")
            mean, sd = _mean_sd([m["per_task"][task][key] for m in members if task in m["per_task"]])
            combined["per_task"][task] = {**entry, key: mean, se_key: sd}
            if "log_ppl_ratio" in entry:
                ratios = [m["per_task"][task].get("log_ppl_ratio") for m in members if task in m["per_task"]]
                combined["per_task"][task]["log_ppl_ratio"] = _mean_sd(ratios)[0]
        combined["count"] = len(members)
        out.append(combined)
    return out


def _mean_sd(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
