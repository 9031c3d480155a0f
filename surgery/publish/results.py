"""Measurements as card content: markdown sections and ``model-index`` entries (:class:`~surgery.card.CardExtras`).

Every number printed comes from a measurement file (:mod:`surgery.publish.measurements`), formatted with 4
decimals in the tables and copied exactly into ``model-index``; nothing is derived that the files do not hold,
except the normalized median, computed by :func:`surgery.evaluation.normalize.normalized_scores` as
``surgery eval --baseline`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from surgery.bench.schema import BenchResult
from surgery.card import CardExtras
from surgery.publish.measurements import BenchRun, EvalRun, Measurements

# lm-eval task -> (dataset name on the card, dataset config, split) of the Hub dataset the stock task loads
TASK_DATASETS = {
    "lambada_openai": ("LAMBADA (OpenAI)", "default", "test"),
    "arc_easy": ("ARC-Easy", "ARC-Easy", "test"),
    "arc_challenge": ("ARC-Challenge", "ARC-Challenge", "test"),
    "hellaswag": ("HellaSwag", None, "validation"),
    "winogrande": ("WinoGrande", "winogrande_xl", "validation"),
    "gsm8k": ("GSM8K", "main", "test"),
}
ORT_CLASSES = {"feature-extraction": "ORTModelForFeatureExtraction"}  # else ORTModelForCausalLM


@dataclass
class OnnxExport:
    """An ONNX export uploaded under ``onnx/``: its files and what its ``export.json`` recorded (parity...)."""

    files: list[str]
    record: dict[str, Any]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _with_stderr(value: float, stderr: float | None) -> str:
    return fmt(value) if stderr is None else f"{fmt(value)} ± {fmt(stderr)}"


def _examples(run: EvalRun, task: str) -> str:
    effective, original = run.examples(task)
    if effective is None:
        return "-"
    return str(effective) if original in (None, effective) else f"{effective} of {original}"


def eval_results(measurements: Measurements) -> list[Any]:
    """``huggingface_hub.EvalResult`` entries (the card's ``model-index``) for every measured metric.

    Stand-in tasks (data not comparable to the published benchmark) are left out of ``model-index``; a
    subset (``--limit``) is named in the dataset name (``ARC-Easy (200 of 2376 examples)``).
    """
    from huggingface_hub import EvalResult

    from surgery.evaluation.tasks import BENCHMARK_OF_TASK

    out = []
    for run in measurements.eval:
        for task in run.results:
            if run.standin(task):
                continue
            pretty, config, split = TASK_DATASETS.get(task, (task, None, None))
            benchmark = BENCHMARK_OF_TASK.get(task)
            effective, original = run.examples(task)
            subset = f" ({effective} of {original} examples)" if effective and original and effective < original else ""
            for metric in run.metrics(task):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        task_name="Text Generation",
                        dataset_type=benchmark.hub_dataset if benchmark else task,
                        dataset_name=pretty + subset,
                        dataset_config=config,
                        dataset_split=split,
                        metric_type=metric.key.partition(",")[0],
                        metric_name=metric.name,
                        metric_value=metric.value,
                    )
                )
    return out


def eval_section(measurements: Measurements) -> str:
    """``## Results``: each task's metrics ± stderr, the base model's beside them, the normalized median."""
    if not measurements.eval:
        return ""
    baseline = measurements.baseline
    normalized = measurements.normalized() or {}
    per_task = normalized.get("tasks", {})
    headers = ["task", "metric", "this model", *(["base model"] if baseline else [])]
    headers += [*(["normalized"] if per_task else []), "examples"]
    rows = []
    for run in measurements.eval:
        for task in run.results:
            label = f"{task} (STAND-IN)" if run.standin(task) else task
            for index, metric in enumerate(run.metrics(task)):
                row = [label if index == 0 else "", metric.name, _with_stderr(metric.value, metric.stderr)]
                if baseline:
                    base = {m.key: m for m in baseline.metrics(task)} if task in baseline.results else {}
                    row.append(
                        _with_stderr(base[metric.key].value, base[metric.key].stderr) if metric.key in base else "-"
                    )
                if per_task:
                    entry = per_task.get(task, {})
                    row.append(fmt(entry.get("normalized")) if entry.get("metric") == metric.key else "")
                row.append(_examples(run, task) if index == 0 else "")
                rows.append(row)
    table = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    table += "\n".join("| " + " | ".join(row) + " |" for row in rows)
    text = f"## Results\n\n{table}\n"
    if normalized.get("median") is not None:
        against = f" (base model: `{normalized['baseline']}`)" if normalized.get("baseline") else ""
        text += (
            f"\n**Median normalized score: {fmt(normalized['median'])}** over {normalized['num_tasks']} "
            f"task(s){against}. "
            "Per task, (this model − chance) / (base model − chance) on its primary metric: 0 is random guessing, "
            "1 is the base model (the paper's Llama protocol).\n"
        )
    notes = [f"- {warning}" for warning in normalized.get("warnings", [])]
    for run in measurements.eval:
        notes += [f"- {task}: {info['note']}" for task, info in run.config.get("data", {}).items() if info.get("note")]
    text += "\n" + "\n".join(_provenance_line(run, "this model") for run in measurements.eval)
    if baseline:
        text += "\n" + _provenance_line(baseline, "base model")
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text + "\n"


def _provenance_line(run: EvalRun, who: str) -> str:
    config = run.config
    parts = [f"lm-evaluation-harness {config['lm_eval_version']}" if config.get("lm_eval_version") else "lm-eval"]
    if config.get("surgery_version"):
        parts.append(f"through `surgery eval` {config['surgery_version']}")
    settings = ", ".join(f"{key} {config[key]}" for key in ("limit", "dtype", "device") if config.get(key) is not None)
    sources = sorted({str(info.get("source")) for info in config.get("data", {}).values() if info.get("source")})
    data = f"; data: {', '.join(sources)}" if sources else ""
    return (
        f"- {who}: `{run.file}` (sha256 `{run.sha256[:16]}…`), measured with {' '.join(parts)}"
        f"{f' ({settings})' if settings else ''}{data}."
    )


def _plain(mapping: dict[str, Any]) -> str:
    """``key: value`` pairs of a record; a nested mapping (package versions) as ``name value``; None left out."""
    parts = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            parts.append(", ".join(f"{name} {version}" for name, version in value.items()))
        elif value is not None and not isinstance(value, list):
            parts.append(f"{key}: {value}")
    return ", ".join(part for part in parts if part)


def _bench_row(row: BenchResult) -> list[str]:
    if row.prefill_ms is None or row.decode_ms_per_token is None:
        return [row.model, row.backend, f"not measured ({row.skipped or 'no timings'})", "", "", "", "", ""]
    prefill = row.prefill_ms
    return [
        row.model,
        row.backend,
        f"{prefill.median:.2f} ({prefill.min:.2f}–{prefill.max:.2f})",
        f"{row.decode_ms_per_token.median:.2f}",
        "-" if row.tokens_per_s is None else f"{row.tokens_per_s:.1f}",
        "-" if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f}",
        fmt(row.ratio_prefill),
        fmt(row.ratio_decode),
    ]


def bench_section(bench: BenchRun | None) -> str:
    """``## Latency``: every row of the ``surgery bench`` file with its ratios, and the machine it ran on."""
    if bench is None:
        return ""
    headers = [
        "model",
        "backend",
        "prefill ms (median, min–max)",
        "decode ms/token (median)",
        "tokens/s",
        "peak memory MB",
        "prefill ratio",
        "decode ratio",
    ]
    table = "| " + " | ".join(headers) + " |\n|" + "---|" * len(headers) + "\n"
    table += "\n".join("| " + " | ".join(_bench_row(row)) + " |" for row in bench.results)
    settings = f" Settings: {_plain(bench.settings)}." if _plain(bench.settings) else ""
    return (
        f"## Latency\n\nMeasured with `surgery bench` (`{bench.file}`, sha256 `{bench.sha256[:16]}…`) on "
        f"{_plain(bench.machine) or 'an unrecorded machine'}.{settings} A ratio is a row's median time divided by "
        f"that of the first model measured on the same backend (below 1 is faster); the times hold for that "
        f"machine only.\n\n{table}\n"
    )


def onnx_section(onnx: OnnxExport | None, name: str) -> str:
    """``## ONNX``: the exported files under ``onnx/``, the parity check recorded at export, how to load."""
    if onnx is None:
        return ""
    record, parity = onnx.record, onnx.record.get("parity") or {}
    checked = ""
    if parity.get("max_abs_diff") is not None:
        checked = f" At export it was checked against the PyTorch model: max |Δlogits| {parity['max_abs_diff']:.3g}"
        if parity.get("tolerance") is not None:
            checked += f" (tolerance {parity['tolerance']:.3g})"
        if parity.get("generation_checked"):
            same = "identical" if parity.get("generation_equal") else "NOT identical"
            checked += f"; {parity.get('generated_tokens')} greedily generated tokens {same}"
        checked += "."
    task = record.get("task")
    cls = ORT_CLASSES.get(task or "", "ORTModelForCausalLM")
    return f"""## ONNX

An ONNX export{f" ({task})" if task else ""} is in `onnx/` ({len(onnx.files)} files).{checked} It loads with
optimum-onnx, without custom code:

```python
from optimum.onnxruntime import {cls}
model = {cls}.from_pretrained("{name}", subfolder="onnx")
```
"""


def card_extras(measurements: Measurements, *, name: str, onnx: OnnxExport | None = None) -> CardExtras:
    """The card sections and ``model-index`` for ``measurements`` (and an uploaded ONNX export)."""
    sections = [section for section in (eval_section(measurements), bench_section(measurements.bench)) if section]
    if onnx is not None:
        sections.append(onnx_section(onnx, name))
    metadata = {}
    results = eval_results(measurements)
    if results:
        from huggingface_hub import ModelCardData

        metadata["model-index"] = ModelCardData(model_name=name, eval_results=results).to_dict()["model-index"]
    return CardExtras(sections=sections, metadata=metadata, tags=["onnx"] if onnx is not None else [])
