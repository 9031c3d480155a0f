"""Results payload (lm-eval's shape plus surgery's ``config``/``chance``/``normalized``) and the printed table.

The JSON written by ``surgery eval --output`` is::

    {
      "results":          {task: {"acc,none": ..., "acc_stderr,none": ..., ...}},   # lm-eval's, verbatim
      "versions", "n-shot", "higher_is_better", "n-samples":                       # lm-eval's, verbatim
      "config":           {model, plan, executed_layers, limit, seeds, batch_size, surgery_version,
                           lm_eval_version, data: {task: {source, dataset | files, standin, note}}, ...},
      "chance":           {task: {metric: random-guess level over the evaluated items}},
      "normalized":       {baseline, tasks: {task: {metric, score, full, chance, normalized}}, median, ...}
    }

``normalized`` is present only with ``--baseline``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_text, format_table

LM_EVAL_KEYS = ("results", "versions", "n-shot", "higher_is_better", "n-samples")


def build_payload(lm_eval_results: dict[str, Any], config: dict[str, Any], chance: dict[str, Any]) -> dict[str, Any]:
    payload = {key: lm_eval_results[key] for key in LM_EVAL_KEYS if key in lm_eval_results}
    payload["config"] = config
    payload["chance"] = chance
    payload["lm_eval"] = {
        key: lm_eval_results.get(key)
        for key in ("lm_eval_version", "date", "total_evaluation_time_seconds", "transformers_version")
        if key in lm_eval_results
    }
    return payload


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None (lm-eval reports 'N/A' or NaN for some stderrs), tuples -> lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_json(payload: dict[str, Any], path: Path) -> None:
    """The results payload as JSON at ``path`` (atomically); a failed write is one error naming ``--output``."""
    try:
        atomic_write_text(Path(path), json.dumps(_clean(payload), indent=2) + "\n")
    except OSError as exc:
        raise SurgeryError(f"--output {path}: cannot write the results ({exc.strerror or exc})") from None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return "-" if value is None else str(value)


def format_results(payload: dict[str, Any]) -> str:
    """Plain-text table: task, metric, value, stderr, chance, n, data source."""
    results = payload.get("results", {})
    chance = payload.get("chance", {})
    n_samples = payload.get("n-samples", {})
    data = payload.get("config", {}).get("data", {})
    rows = []
    for task, metrics in results.items():
        source = data.get(task, {})
        label = f"{source.get('source', '?')}{' STAND-IN' if source.get('standin') else ''}"
        n = n_samples.get(task, {}).get("effective")
        first = True
        for key in sorted(k for k in metrics if "," in k and "_stderr," not in k):
            metric, _, filt = key.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric} ({filt})"
            level = chance.get(task, {}).get(key)
            rows.append(
                [
                    task if first else "",
                    name,
                    _fmt(metrics[key]),
                    _fmt(stderr),
                    _fmt(level),
                    _fmt(n) if first else "",
                    label if first else "",
                ]
            )
            first = False
    text = format_table(["task", "metric", "value", "stderr", "chance", "n", "data"], rows)
    notes = [f"{task}: {info['note']}" for task, info in data.items() if info.get("note")]
    if notes:
        text += "\n\n" + "\n".join(f"note: {n}" for n in notes)
    normalized = payload.get("normalized")
    if normalized:
        text += "\n\n" + format_normalized(normalized)
    return text


def format_normalized(normalized: dict[str, Any]) -> str:
    rows = [
        [task, e["metric"].split(",")[0], _fmt(e["score"]), _fmt(e["full"]), _fmt(e["chance"]), _fmt(e["normalized"])]
        for task, e in normalized["tasks"].items()
    ]
    text = f"normalized score vs {normalized.get('baseline', 'baseline')} (0 = chance, 1 = full model)\n"
    text += format_table(["task", "metric", "variant", "full", "chance", "normalized"], rows)
    text += f"\nmedian normalized score: {_fmt(normalized['median'])} over {normalized['num_tasks']} task(s)"
    for task, e in normalized["tasks"].items():
        ppl = e.get("perplexity")
        if ppl:
            text += (
                f"\n{task} perplexity: {_fmt(ppl['score'])} vs full {_fmt(ppl['full'])} "
                f"(log(full)/log(variant) = {_fmt(ppl['log_ratio'])}; not in the median)"
            )
    for warning in normalized.get("warnings", []):
        text += f"\nwarning: {warning}"
    return text
