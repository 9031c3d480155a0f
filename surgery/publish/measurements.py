"""What a card may show as measured: ``surgery eval --output`` files and a ``surgery bench`` file.

Each file is validated at the edge (pydantic; one error line naming the option and the file), checked against
the checkpoint it is meant to describe (an eval of another model is refused, not shown), trimmed to what the
card uses (no local paths; of a bench file's ``machine`` only :data:`MACHINE_KEYS`) and kept in ``surgery.json``
under ``measurements``, so a card re-rendered later, or pushed without the options, still shows them. Options
given again replace what was kept.

A number that is not finite (``NaN``, ``Infinity``, ``1e999``) is not a measurement: a file holding one where
the card would show it is refused. A kept kind that no longer validates (a ``surgery.json`` written before this
check, or edited by hand) is left off the card with a ``warning:`` line saying which option gives it again,
instead of failing every later ``card`` and ``push``: the card stays publishable and claims nothing unchecked.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from surgery.apply.card import plain_line
from surgery.apply.provenance import Provenance
from surgery.bench.schema import BenchPayload
from surgery.config import validation_message
from surgery.errors import SurgeryError
from surgery.fileio import sha256_file
from surgery.io.model_ref import read_json_object
from surgery.publish.labels import bench_label, without_paths

NOT_METRICS = ("sample_len",)
CONFIG_KEYS = (
    "plan",
    "plan_canonical",
    "source_layers",
    "executed_layers",
    "limit",
    "batch_size",
    "dtype",
    "device",
    "surgery_version",
    "lm_eval_version",
    "transformers_version",
)
DATA_KEYS = ("source", "dataset", "standin", "note")
# What a card may say about the machine a bench ran on (never user names, paths or arbitrary keys).
MACHINE_KEYS = ("cpu", "cores", "threads", "device", "gpu", "python", "versions", "surgery_version")
SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")  # a setting's or a package's name
SAFE_VALUE = re.compile(r"[^/\\~]{0,200}")  # a value that names no path
Count = Annotated[int, Field(ge=0, le=10**12)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def non_finite(value: Any, where: str = "") -> str | None:
    """The first place (``results.arc_easy.acc,none``) in ``value`` holding a number that is not finite."""
    if _is_number(value) and not _finite(value):
        return where or "(top level)"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def not_text(value: Any, where: str = "") -> str | None:
    """The first place in ``value`` (a key or a string) that is not valid Unicode text: a lone surrogate, which
    JSON's ``\\ud800`` escapes can produce and no UTF-8 file (surgery.json, the card) can hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(top level)"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        place = f"{where}.{key}" if where else str(key)
        if isinstance(key, str) and not_text(key) is not None:
            return place
        found = not_text(item, place)
        if found:
            return found
    return None


def _plain_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool) or _is_number(value):
        return True
    return isinstance(value, str) and SAFE_VALUE.fullmatch(value) is not None


class Metric(BaseModel):
    """One metric of one task: lm-eval's key (``acc_norm,none``), value and standard error."""

    key: str
    value: float
    stderr: float | None = None

    @property
    def name(self) -> str:
        """``acc_norm``, or ``exact_match (strict-match)`` when the filter is not lm-eval's ``none``."""
        metric, _, filt = self.key.partition(",")
        return metric if filt in ("", "none") else f"{metric} ({filt})"


class NormalizedTask(BaseModel):
    """One task of an eval file's ``normalized`` block: the metric it is computed on and its value."""

    model_config = ConfigDict(extra="ignore")

    metric: str | None = None
    normalized: float | None = None


class NormalizedBlock(BaseModel):
    """An eval file's own ``normalized`` block (``surgery eval --baseline``), trimmed to what the card shows."""

    model_config = ConfigDict(extra="ignore")

    tasks: dict[str, NormalizedTask] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    baseline: str | None = None

    @field_validator("baseline")
    @classmethod
    def _public_baseline(cls, value: str | None) -> str | None:
        return None if value is None else Path(value).name  # the base model's results file: its name only


class EvalRun(BaseModel):
    """One ``surgery eval --output`` file (or lm-eval's own results JSON), trimmed to what a card uses."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    file: str
    sha256: str
    results: dict[str, dict[str, float | None]]
    n_samples: dict[str, dict[str, Count]] = Field(default_factory=dict, alias="n-samples")
    config: dict[str, Any] = Field(default_factory=dict)
    chance: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    normalized: NormalizedBlock | None = None

    @field_validator("results", mode="before")
    @classmethod
    def _metrics_only(cls, results: Any) -> Any:
        if not isinstance(results, dict) or not results:
            raise ValueError("must be a non-empty object {task: {metric: value}}")
        trimmed = {}
        for task, metrics in results.items():
            if not isinstance(metrics, dict):
                raise ValueError(f"{task}: must be an object {{metric: value}}")
            kept = {k: v for k, v in metrics.items() if k not in NOT_METRICS and (v is None or _is_number(v))}
            if found := non_finite(kept):
                raise ValueError(f"{task}.{found}: {kept[found]!r} is not a finite number, so not a measurement")
            if not any(_is_number(v) and "_stderr" not in k for k, v in kept.items()):
                raise ValueError(f"{task}: no numeric metric")
            trimmed[task] = kept
        return trimmed

    @field_validator("config", mode="before")
    @classmethod
    def _public_config(cls, config: Any) -> Any:
        if not isinstance(config, dict):
            return config
        out = {key: config[key] for key in CONFIG_KEYS if key in config}
        if isinstance(config.get("model"), str):
            out["model"] = bench_label(config["model"])
        if isinstance(config.get("data"), dict):
            out["data"] = {
                task: {key: info[key] for key in DATA_KEYS if key in info}
                for task, info in config["data"].items()
                if isinstance(info, dict)
            }
        return out

    def metrics(self, task: str) -> list[Metric]:
        """The task's metrics with their standard errors, in lm-eval's key order."""
        values = self.results[task]
        out = []
        for key, value in values.items():
            if "_stderr" in key or not _is_number(value):
                continue
            metric, comma, filt = key.partition(",")
            stderr = values.get(f"{metric}_stderr{comma}{filt}")
            out.append(Metric(key=key, value=value, stderr=stderr if _is_number(stderr) else None))
        return out

    def examples(self, task: str) -> tuple[int | None, int | None]:
        """(evaluated, in the benchmark) examples of a task, from lm-eval's ``n-samples``."""
        counts = self.n_samples.get(task, {})
        return counts.get("effective"), counts.get("original")

    def standin(self, task: str) -> bool:
        return bool(self.config.get("data", {}).get(task, {}).get("standin")) or task.endswith("_standin")


class BenchRun(BenchPayload):
    """A ``surgery bench`` file (its schema is :mod:`surgery.bench.schema`) and where it came from, without the
    local paths it may hold (models named by :func:`bench_label`, paths in reasons reduced to their last part,
    settings to plain values)."""

    file: str
    sha256: str

    @field_validator("settings", mode="before")
    @classmethod
    def _plain_settings(cls, settings: Any) -> Any:
        if not isinstance(settings, dict):
            return settings
        return {
            key: value
            for key, value in settings.items()
            if isinstance(key, str) and SAFE_KEY.fullmatch(key) and _plain_scalar(value)
        }

    @field_validator("machine", mode="before")
    @classmethod
    def _public_machine(cls, machine: Any) -> Any:
        """Only :data:`MACHINE_KEYS`, plain values; ``versions`` as package names and version strings."""
        if not isinstance(machine, dict):
            return machine
        out: dict[str, Any] = {}
        for key in MACHINE_KEYS:
            value = machine.get(key)
            if key == "versions" and isinstance(value, dict):
                out[key] = {
                    name: version
                    for name, version in value.items()
                    if isinstance(name, str) and SAFE_KEY.fullmatch(name) and isinstance(version, str)
                    and SAFE_VALUE.fullmatch(version)
                }  # fmt: skip
            elif key in machine and _plain_scalar(value):
                out[key] = value
        return out

    @model_validator(mode="after")
    def _public_models(self, info: ValidationInfo) -> BenchRun:
        """Every row's model as :func:`bench_label` names it; rows kept in ``surgery.json`` that were labelled
        so already (``model_label``) stay as they are (a Hub id from the cache stays one when the cache is gone)."""
        kept = bool(info.context and info.context.get("kept"))
        numbers: dict[str, int] = {}
        for row in self.results:
            number = numbers.setdefault(row.model, len(numbers) + 1)
            if not (kept and getattr(row, "model_label", False) is True):
                row.model = bench_label(row.model, number)
            row.model_label = True
            row.skipped = None if row.skipped is None else without_paths(row.skipped)
            row.bound_note = None if row.bound_note is None else without_paths(row.bound_note)
        return self


class Measurements(BaseModel):
    """Everything a card shows as measured; stored as ``surgery.json``'s ``measurements``."""

    eval: list[EvalRun] = Field(default_factory=list)
    baseline: EvalRun | None = None
    bench: BenchRun | None = None

    def dump(self) -> dict[str, Any] | None:
        """The JSON-safe record for ``surgery.json`` (None when nothing was measured)."""
        if not self.eval and self.bench is None:
            return None
        return self.model_dump(mode="json", by_alias=True)

    def merged_results(self) -> dict[str, dict[str, float | None]]:
        """Every task of every eval file (tasks are unique across files)."""
        return {task: metrics for run in self.eval for task, metrics in run.results.items()}

    def run_of(self, task: str) -> EvalRun:
        return next(run for run in self.eval if task in run.results)

    def normalized(self) -> dict[str, Any] | None:
        """Per-task normalized scores and their median: computed against ``baseline`` when there is one,
        else merged from the eval files' own ``normalized`` blocks (``surgery eval --baseline``)."""
        from surgery.evaluation.normalize import normalized_scores

        if self.baseline is not None:
            chance = {task: values for run in self.eval for task, values in run.chance.items()}
            variant = {"results": self.merged_results(), "chance": chance}
            scores = normalized_scores(variant, self.baseline.model_dump(by_alias=True), chance or None)
            return {**scores, "baseline": self.baseline.file} if scores["tasks"] else None
        blocks = [run.normalized for run in self.eval if run.normalized and run.normalized.tasks]
        if not blocks:
            return None
        tasks = {task: entry.model_dump() for block in blocks for task, entry in block.tasks.items()}
        values = [entry["normalized"] for entry in tasks.values() if entry["normalized"] is not None]
        baselines = sorted({block.baseline for block in blocks if block.baseline})
        return {
            "tasks": tasks,
            "median": statistics.median(values) if values else None,
            "num_tasks": len(values),
            "warnings": [warning for block in blocks for warning in block.warnings],
            "baseline": ", ".join(baselines) or None,
        }


def _load(model: type[BaseModel], path: Path, option: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"{option} {path}: no such file")
    data = read_json_object(path, f"{option} file")
    found = not_text(data)
    if found:
        where = found.encode("utf-8", "backslashreplace").decode()
        raise SurgeryError(f"{option} {path}: {plain_line(where, 200)} is not valid Unicode text (a lone surrogate)")
    try:
        loaded = model.model_validate({**data, "file": path.name, "sha256": sha256_file(path)})
    except ValidationError as exc:
        raise SurgeryError(f"{option} {path}: {plain_line(validation_message(exc), 500)}") from None
    found = non_finite(loaded.model_dump(by_alias=True))
    if found:
        raise SurgeryError(
            f"{option} {path}: {plain_line(found, 200)} is not a finite number (NaN or infinite), so not a "
            "measurement; nothing was written"
        )
    return loaded


def load_eval(path: Path, option: str = "--eval") -> EvalRun:
    """A results JSON of ``surgery eval --output`` (lm-eval's ``results`` plus surgery's ``config``...)."""
    return _load(EvalRun, path, option)


def load_bench(path: Path) -> BenchRun:
    """A ``surgery bench`` JSON: ``{"machine": {...}, "settings": {...}, "results": [{model, backend, ...}]}``."""
    return _load(BenchRun, path, "--bench")


def _plan_of(run: EvalRun) -> str | None:
    plan = run.config.get("plan_canonical") or run.config.get("plan")
    return None if plan in (None, "identity") else str(plan)


def check_describes(measurements: Measurements, record: Provenance) -> None:
    """Refuse measurements of another model: every ``--eval`` must be of this checkpoint (or of its source with
    the same plan applied in memory), the ``--baseline`` of the unmodified source, on the same examples."""
    executed, source_layers = record.output.get("executed_layers"), record.source.get("num_layers")
    seen: dict[str, str] = {}
    for run in measurements.eval:
        layers, plan = run.config.get("executed_layers"), _plan_of(run)
        if layers is not None and layers != executed:
            raise SurgeryError(
                f"--eval {run.file} measured a model that executes {layers} layers; this checkpoint executes "
                f"{executed}: those are not its results"
            )
        if plan is not None and plan != record.plan.canonical:
            raise SurgeryError(
                f"--eval {run.file} measured the plan {plan!r}; this checkpoint is {record.plan.canonical!r}"
            )
        for task in run.results:
            if task in seen:
                raise SurgeryError(
                    f"task {plain_line(task)} is in both --eval {seen[task]} and --eval {run.file}; give it once"
                )
            seen[task] = run.file
    baseline = measurements.baseline
    if baseline is None:
        return
    if not measurements.eval:
        raise SurgeryError("--baseline needs --eval: the base model's results are shown next to this model's")
    layers = baseline.config.get("executed_layers")
    if _plan_of(baseline) is not None or (layers is not None and layers != source_layers):
        raise SurgeryError(
            f"--baseline {baseline.file} is not the unmodified base model (plan {_plan_of(baseline)!r}, "
            f"{layers} executed layers; the source has {source_layers})"
        )
    for task in seen:
        ours, theirs = measurements.run_of(task).examples(task)[0], baseline.examples(task)[0]
        if ours is not None and theirs is not None and ours != theirs:
            raise SurgeryError(
                f"task {plain_line(task)}: --eval evaluated {ours} examples, --baseline {theirs}; rerun both with "
                "the same --limit"
            )


KIND_OPTIONS = {"eval": "--eval", "baseline": "--baseline", "bench": "--bench"}


def kept_measurements(stored: dict[str, Any], replaced: set[str]) -> Measurements:
    """The measurements kept in ``surgery.json``, each kind validated on its own; the kinds in ``replaced`` (given
    again now) are not read. A kind that does not validate, or holds a number that is not finite, is left out
    with a ``warning:`` line naming the option that gives it again (the baseline goes with the eval results)."""
    out = Measurements()
    for kind in ("eval", "baseline", "bench"):
        if kind in replaced or stored.get(kind) in (None, []):
            continue
        problem = None
        if kind == "baseline" and not out.eval:
            problem = "no eval results are shown beside it"
        else:
            try:
                value = Measurements.model_validate({kind: stored[kind]}, context={"kept": True})
                found = non_finite(value.model_dump(by_alias=True))
                problem = f"{found}: not a finite number" if found else None
            except ValidationError as exc:
                problem = validation_message(exc)
        if problem:
            print(
                f"warning: the {kind} results kept in surgery.json are left off the card "
                f"({plain_line(problem, 200)}); give {KIND_OPTIONS[kind]} again to show them",
                file=sys.stderr,
            )
            continue
        setattr(out, kind, getattr(value, kind))
    return out


def resolve_measurements(
    record: Provenance, *, eval_files: list[Path], baseline: Path | None, bench: Path | None
) -> Measurements:
    """What the card will show: the files given (validated and checked) in place of those kept in the record.

    ``--eval`` replaces the kept eval files and baseline, ``--baseline`` the kept baseline, ``--bench`` the kept
    bench file; kinds not given stay as kept.
    """
    replaced = {"eval", "baseline"} if eval_files else set()
    replaced |= {"baseline"} if baseline is not None else set()
    replaced |= {"bench"} if bench is not None else set()
    measurements = kept_measurements(record.measurements or {}, replaced)
    if eval_files:
        measurements.eval = [load_eval(path) for path in eval_files]
        measurements.baseline = None
    if baseline is not None:
        measurements.baseline = load_eval(baseline, "--baseline")
    if bench is not None:
        measurements.bench = load_bench(bench)
    check_describes(measurements, record)
    return measurements
