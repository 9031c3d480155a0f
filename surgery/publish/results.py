"""Measurements as card content: markdown sections and ``model-index`` entries
(:class:`~surgery.apply.card.CardExtras`).

Every number printed comes from a measurement file (:mod:`surgery.publish.measurements`), formatted with 4
decimals in the tables and copied exactly into ``model-index``; nothing is derived that the files do not hold,
except the normalized median, computed by :func:`surgery.evaluation.normalize.normalized_scores` as
``surgery eval --baseline`` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surgery.apply.card import CardExtras, md_code, md_text, meta_text, py_string
from surgery.bench.schema import BenchResult
from surgery.config import validation_message
from surgery.errors import SurgeryError
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
ORT_CLASSES = {
    "feature-extraction": "ORTModelForFeatureExtraction",
    "text-classification": "ORTModelForSequenceClassification",
}  # else ORTModelForCausalLM
Finite = Annotated[float, Field(allow_inf_nan=False)]


class ExportParity(BaseModel):
    """``export.json``'s ``parity``: what the card may claim about the check made at export."""

    model_config = ConfigDict(extra="ignore")

    max_abs_diff: Finite | None = None
    tolerance: Finite | None = None
    generation_checked: bool = False
    generated_tokens: Annotated[int, Field(ge=0)] | None = None
    generation_equal: bool | None = None
    passed: bool | None = None


class ExportRecord(BaseModel):
    """The part of ``export.json`` (``surgery export onnx``) a card shows, validated: a known task, numbers."""

    model_config = ConfigDict(extra="ignore")

    task: (
        Literal["text-generation-with-past", "text-generation", "text-classification", "feature-extraction"] | None
    ) = None
    parity: ExportParity = Field(default_factory=ExportParity)


@dataclass
class OnnxExport:
    """An ONNX export uploaded under ``onnx/``: its real folder, files with sizes, and its checked record."""

    root: Path
    sizes: dict[str, int]
    record: ExportRecord
    verified_by: str = "its records match"  # how it is known to be an export of this checkpoint

    @property
    def files(self) -> list[str]:
        return list(self.sizes)


def load_onnx_export(root: Path, sizes: dict[str, int], data: dict[str, Any], verified_by: str) -> OnnxExport:
    """The export in ``root`` with what its ``export.json`` (``data``; empty: none) claims validated for the card
    (no ``export.json``: nothing is claimed about parity)."""
    try:
        record = ExportRecord.model_validate(data)
    except ValidationError as exc:
        raise SurgeryError(f"--include-onnx {root}: export.json: {validation_message(exc)}") from None
    if record.parity.passed is False:
        raise SurgeryError(f"--include-onnx {root}: its export.json records a failed parity check")
    return OnnxExport(root, sizes, record, verified_by)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _with_stderr(value: float, stderr: float | None) -> str:
    return fmt(value) if stderr is None else f"{fmt(value)} ± {fmt(stderr)}"


def _examples(run: EvalRun, task: str) -> str:
    effective, original = run.examples(task)
    if effective is None:
        return "-"
    return str(effective) if original in (None, effective) else f"{effective} of {original}"  # ints (pydantic)


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
            pretty, config, split = TASK_DATASETS.get(task, (meta_text(task), None, None))
            benchmark = BENCHMARK_OF_TASK.get(task)
            effective, original = run.examples(task)
            subset = f" ({effective} of {original} examples)" if effective and original and effective < original else ""
            for metric in run.metrics(task):
                out.append(
                    EvalResult(
                        task_type="text-generation",
                        task_name="Text Generation",
                        dataset_type=benchmark.hub_dataset if benchmark else meta_text(task),
                        dataset_name=pretty + subset,
                        dataset_config=config,
                        dataset_split=split,
                        metric_type=meta_text(metric.key.partition(",")[0]),
                        metric_name=meta_text(metric.name),
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
            label = f"{md_text(task)} (STAND-IN)" if run.standin(task) else md_text(task)
            for index, metric in enumerate(run.metrics(task)):
                row = [label if index == 0 else "", md_text(metric.name), _with_stderr(metric.value, metric.stderr)]
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
        against = f" (base model: {md_code(normalized['baseline'])})" if normalized.get("baseline") else ""
        text += (
            f"\n**Median normalized score: {fmt(normalized['median'])}** over {normalized['num_tasks']} "
            f"task(s){against}. "
            "Per task, (this model − chance) / (base model − chance) on its primary metric: 0 is random guessing, "
            "1 is the base model (the paper's Llama protocol).\n"
        )
    notes = [f"- {md_text(warning)}" for warning in normalized.get("warnings", [])]
    for run in measurements.eval:
        data = run.config.get("data", {})
        notes += [f"- {md_text(task)}: {md_text(info['note'])}" for task, info in data.items() if info.get("note")]
    text += "\n" + "\n".join(_provenance_line(run, "this model") for run in measurements.eval)
    if baseline:
        text += "\n" + _provenance_line(baseline, "base model")
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text + "\n"


def _provenance_line(run: EvalRun, who: str) -> str:
    config = run.config
    version = config.get("lm_eval_version")
    parts = [f"lm-evaluation-harness {md_text(version)}" if version else "lm-eval"]
    if config.get("surgery_version"):
        parts.append(f"through `surgery eval` {md_text(config['surgery_version'])}")
    settings = ", ".join(
        f"{key} {md_text(config[key])}" for key in ("limit", "dtype", "device") if config.get(key) is not None
    )
    sources = sorted({md_text(info.get("source")) for info in config.get("data", {}).values() if info.get("source")})
    data = f"; data: {', '.join(sources)}" if sources else ""
    return (
        f"- {who}: {md_code(run.file)} (sha256 `{run.sha256[:16]}…`), measured with {' '.join(parts)}"
        f"{f' ({settings})' if settings else ''}{data}."
    )


def _plain(mapping: dict[str, Any]) -> str:
    """``key: value`` pairs of a record; a nested mapping (package versions) as ``name value``; None left out."""
    parts = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            parts.append(", ".join(f"{md_text(name)} {md_text(version)}" for name, version in value.items()))
        elif value is not None and not isinstance(value, list):
            parts.append(f"{md_text(key)}: {md_text(value)}")
    return ", ".join(part for part in parts if part)


NOISY = "noisy"  # a ratio cell's mark when bench's rounds disagreed
UNCHECKED = "unchecked"  # a ratio cell's mark when the bench file predates round-by-round agreement checks


def ratio_cell(row: BenchResult, key: str) -> str:
    """A ratio as the card may state it: plain when bench's rounds agreed; with the rounds' spread and
    ``noisy`` when they did not (never as a bare number); ``unchecked`` when the file has no agreement check."""
    value = getattr(row, key)
    if value is None:
        return "-"
    if row.noisy is None:
        return f"{fmt(value)} ({UNCHECKED})"
    if row.noisy and (key in (row.noisy_ratios or []) or not row.noisy_ratios):
        spread = getattr(row, f"{key}_spread", None)
        rounds = f"rounds {fmt(spread.min)}–{fmt(spread.max)}; " if spread is not None else ""
        return f"{fmt(value)} ({rounds}{NOISY})"
    return fmt(value)


def _bench_row(row: BenchResult, own_label: str | None) -> list[str]:
    label = md_text(row.model) + (" (this model)" if own_label is not None and row.model == own_label else "")
    if row.prefill_ms is None or row.decode_ms_per_token is None:
        skipped = md_text(row.skipped or "no timings")
        return [label, md_text(row.backend), f"not measured ({skipped})", "", "", "", "", ""]
    prefill = row.prefill_ms
    return [
        label,
        md_text(row.backend),
        f"{prefill.median:.2f} ({prefill.min:.2f}–{prefill.max:.2f})",
        f"{row.decode_ms_per_token.median:.2f}",
        "-" if row.tokens_per_s is None else f"{row.tokens_per_s:.1f}",
        "-" if row.peak_memory_mb is None else f"{row.peak_memory_mb:.0f}",
        ratio_cell(row, "ratio_prefill"),
        ratio_cell(row, "ratio_decode"),
    ]


def _ratio_warnings(bench: BenchRun) -> str:
    """What the marks in the ratio columns mean, for the marks the table uses."""
    cells = [ratio_cell(row, key) for row in bench.results for key in ("ratio_prefill", "ratio_decode")]
    notes = []
    if any(cell.endswith(f"{NOISY})") for cell in cells):
        notes.append(
            f"**Warning: ratios marked {NOISY} are not a measurement to rely on.** `surgery bench` measured the "
            "models round by round and the per-round ratios disagreed by more than the tolerance (the machine was "
            "busy, or the difference is within its noise); the range shown is the rounds' lowest and highest."
        )
    if any(cell.endswith(f"{UNCHECKED})") for cell in cells):
        notes.append(
            f"Ratios marked {UNCHECKED} come from a bench file written before `surgery bench` measured the models "
            "round by round: whether they hold in another order or on a quieter machine was not checked (run "
            "`surgery bench` again, then `surgery card --bench`)."
        )
    return "".join(f"\n{note}\n" for note in notes)


def bench_section(bench: BenchRun | None, own_label: str | None = None) -> str:
    """``## Latency``: every row of the ``surgery bench`` file with its ratios, and the machine it ran on. Rows
    name models by label (:func:`~surgery.publish.measurements.bench_label`); ``own_label`` marks this checkpoint."""
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
    table += "\n".join("| " + " | ".join(_bench_row(row, own_label)) + " |" for row in bench.results)
    settings = f" Settings: {_plain(bench.settings)}." if _plain(bench.settings) else ""
    rounds = [row.rounds for row in bench.results if row.rounds]
    if rounds:
        ratio = (
            f"The models were measured round by round ({max(rounds)} rounds, every model in every round); a ratio "
            "is the median over rounds of a row's time divided by that of the first model on the same backend in "
            "the same round"
        )
    else:
        ratio = "A ratio is a row's median time divided by that of the first model measured on the same backend"
    return (
        f"## Latency\n\nMeasured with `surgery bench` ({md_code(bench.file)}, sha256 `{bench.sha256[:16]}…`) on "
        f"{_plain(bench.machine) or 'an unrecorded machine'}.{settings} {ratio} (below 1 is faster); the times "
        f"hold for that machine only.\n\n{table}\n{_ratio_warnings(bench)}"
    )


def onnx_section(onnx: OnnxExport | None, name: str) -> str:
    """``## ONNX``: the exported files under ``onnx/``, the parity check recorded at export, how to load."""
    if onnx is None:
        return ""
    parity, task = onnx.record.parity, onnx.record.task
    checked = ""
    if parity.max_abs_diff is not None:
        checked = (
            f" At export it was checked against the PyTorch model of this checkpoint ({onnx.verified_by}): "
            f"max |Δlogits| {parity.max_abs_diff:.3g}"
        )
        if parity.tolerance is not None:
            checked += f" (tolerance {parity.tolerance:.3g})"
        if parity.generation_checked:
            same = "identical" if parity.generation_equal else "NOT identical"
            checked += f"; {parity.generated_tokens} greedily generated tokens {same}"
        checked += "."
    cls = ORT_CLASSES.get(task or "", "ORTModelForCausalLM")
    return f"""## ONNX

An ONNX export{f" ({task})" if task else ""} is in `onnx/` ({len(onnx.files)} files).{checked} It loads with
optimum-onnx, without custom code:

```python
from optimum.onnxruntime import {cls}
model = {cls}.from_pretrained({py_string(name)}, subfolder="onnx")
```
"""


def measured_quality(measurements: Measurements) -> str | None:
    """The card's sentence on this checkpoint's quality when it was measured (instead of the paper's finding)."""
    if not measurements.eval:
        return None
    normalized = measurements.normalized() or {}
    tasks = len(measurements.merged_results())
    if normalized.get("median") is not None:
        return (
            f"Measured on this checkpoint: a median normalized score of {fmt(normalized['median'])} over "
            f"{normalized['num_tasks']} task(s) (1 = the base model, 0 = chance; see Results)."
        )
    return f"Its scores on {tasks} task(s) were measured on this checkpoint (see Results)."


def card_extras(
    measurements: Measurements, *, name: str, onnx: OnnxExport | None = None, own_label: str | None = None
) -> CardExtras:
    """The card sections and ``model-index`` for ``measurements`` (and an uploaded ONNX export); ``own_label``
    is how the latency table names this checkpoint."""
    sections = [
        section for section in (eval_section(measurements), bench_section(measurements.bench, own_label)) if section
    ]
    if onnx is not None:
        sections.append(onnx_section(onnx, name))
    metadata = {}
    results = eval_results(measurements)
    if results:
        from huggingface_hub import ModelCardData

        model_index = ModelCardData(model_name=meta_text(name), eval_results=results).to_dict()["model-index"]
        metadata["model-index"] = model_index
    return CardExtras(
        sections=sections,
        metadata=metadata,
        tags=["onnx"] if onnx is not None else [],
        measured_quality=measured_quality(measurements),
    )
