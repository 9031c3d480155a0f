"""The paper's normalized score (Llama) and unnormalized average (BERT/GLUE).

Per benchmark, 0 is random (or majority-class) guessing and 1 is the full, unmodified model::

    normalized = (variant - chance) / (full - chance)

and a variant's score is the median of the per-benchmark values. Primary metric and chance level per task:

=====================  ==========================  =========================================================
task                   metric                      chance (0 of the scale)
=====================  ==========================  =========================================================
lambada_openai         acc                         0 (open-vocabulary word prediction)
arc_easy               acc_norm                    mean of 1/#choices over the evaluated items (~0.25;
arc_challenge          acc_norm                    some ARC items have 3 or 5 choices)
hellaswag(_standin)    acc_norm                    0.25 (4 endings; computed the same way as ARC)
winogrande             acc                         0.5 (2 options)
gsm8k                  exact_match (strict-match)  0 (free-form numeric answer)
=====================  ==========================  =========================================================

LAMBADA perplexity is not part of the median (it has no chance level on the 0-1 scale and is not bounded);
it is reported next to it as ``log(ppl_full) / log(ppl_variant)`` (1 for the full model, towards 0 as the
variant's perplexity grows). A benchmark on which the full model is not above chance cannot be normalized
(the scale is undefined or inverted): its value is reported but left out of the median, with a warning.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from surgery.evaluation.tasks import BENCHMARK_OF_TASK

PERPLEXITY = "perplexity,none"


def metric_value(task_results: Mapping[str, Any], metric: str) -> float | None:
    """``results[task][metric]`` accepting lm-eval's ``"acc,none"`` keys or plain ``"acc"`` keys."""
    for key in (metric, metric.split(",")[0]):
        value = task_results.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def normalize(score: float, full: float, chance: float) -> float | None:
    """(score - chance) / (full - chance); None when the full model is not above chance."""
    if not full > chance:
        return None
    return (score - chance) / (full - chance)


def chance_for(task: str, metric: str, chance: Mapping[str, Mapping[str, float]] | None = None) -> float:
    """Chance level of ``metric`` on ``task``: the measured one from a run's ``chance`` block, else the table."""
    if chance and task in chance:
        value = metric_value(chance[task], metric)
        if value is not None:
            return value
    return BENCHMARK_OF_TASK[task].chance


def normalized_scores(
    variant: Mapping[str, Any],
    baseline: Mapping[str, Any],
    chance: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Per-task normalized values and their median.

    ``variant`` and ``baseline`` are results payloads (``{"results": {task: {metric: value}}}``, as written by
    ``surgery eval`` or by lm-eval itself). ``chance`` defaults to the variant's (then the baseline's)
    ``chance`` block, then to the table above.
    """
    chance = chance or variant.get("chance") or baseline.get("chance") or {}
    tasks: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    for task, task_results in variant.get("results", {}).items():
        if task not in BENCHMARK_OF_TASK:
            continue
        full_results = baseline.get("results", {}).get(task)
        if full_results is None:
            warnings.append(f"{task}: not in the baseline; left out")
            continue
        metric = BENCHMARK_OF_TASK[task].primary_metric
        score, full = metric_value(task_results, metric), metric_value(full_results, metric)
        if score is None or full is None:
            warnings.append(f"{task}: metric {metric} missing; left out")
            continue
        level = chance_for(task, metric, chance)
        value = normalize(score, full, level)
        entry: dict[str, Any] = {"metric": metric, "score": score, "full": full, "chance": level, "normalized": value}
        if value is None:
            warnings.append(
                f"{task}: the full model ({full:.4f}) is not above chance ({level:.4f}); left out of the median"
            )
        ppl, ppl_full = metric_value(task_results, PERPLEXITY), metric_value(full_results, PERPLEXITY)
        if ppl is not None and ppl_full is not None:
            entry["perplexity"] = {"score": ppl, "full": ppl_full, "log_ratio": log_perplexity_ratio(ppl, ppl_full)}
        tasks[task] = entry
    values = [entry["normalized"] for entry in tasks.values() if entry["normalized"] is not None]
    return {
        "tasks": tasks,
        "median": statistics.median(values) if values else None,
        "num_tasks": len(values),
        "warnings": warnings,
    }


def log_perplexity_ratio(perplexity: float, full: float) -> float | None:
    """``log(full) / log(perplexity)``: 1 at the full model's perplexity, falling towards 0 as it grows."""
    if not (perplexity > 1 and full > 1) or math.isinf(perplexity):
        return None
    return math.log(full) / math.log(perplexity)


def unnormalized_average(scores: Mapping[str, float] | Iterable[float]) -> float:
    """BERT/GLUE protocol: the plain mean of the per-task scores (no chance or full-model scaling)."""
    values = list(scores.values()) if isinstance(scores, Mapping) else list(scores)
    if not values:
        raise ValueError("no scores to average")
    return sum(values) / len(values)
