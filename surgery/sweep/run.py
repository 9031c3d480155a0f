"""``surgery sweep`` as a library entry point: :func:`check` (fast refusals) and :func:`run_sweep`.

A sweep expands a recipe against the model's layer count into variants, crosses them with the tasks into
*units* (one record each), groups units that evaluate the same (plan, task) into *jobs*, skips every unit whose
record is already in ``OUT/results.jsonl``, and hands the jobs to an executor (local: one in-process worker;
ray: one worker actor per slot). Each finished job's records are appended at once (:mod:`surgery.sweep.report`).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from surgery.errors import SurgeryError
from surgery.sweep.config import SweepConfig
from surgery.sweep.recipe import Recipe, Variant, expand, load_recipe

SAMPLE_BYTES = 1 << 20  # model identity: sha256 over each weight file's size and first and last MiB


@dataclass
class Unit:
    """One record to produce: a variant on a task."""

    variant: Variant
    task: str
    key: str
    eval_key: str


@dataclass
class Job:
    """One evaluation (a plan on a task) and the units that share it."""

    eval_key: str
    plan: str
    task: str
    units: list[Unit] = field(default_factory=list)


@dataclass
class SweepPlan:
    """Everything :func:`check` established: recipe, variants, tasks, units and the pending jobs."""

    recipe: Recipe
    first_line: str
    num_layers: int
    model: dict[str, Any]
    tasks: list[str]
    settings: dict[str, Any]
    variants: list[Variant]
    units: list[Unit]
    jobs: list[Job]
    done: int


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def model_identity(ref, config: dict[str, Any]) -> str:
    """What names these weights: ``hub:ID@REVISION``, or sha256 over the config and each weight file's name,
    size and first and last MiB (fast for 100 GB checkpoints; equal files give equal identities)."""
    if ref.kind == "hub":
        return f"hub:{ref.repo_id}@{ref.revision or 'main'}"
    files = (
        [ref.path] if ref.kind == "gguf" else sorted(ref.path.glob("*.safetensors")) + sorted(ref.path.glob("*.bin"))
    )
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(SAMPLE_BYTES))
            handle.seek(max(0, size - SAMPLE_BYTES))
            digest.update(handle.read(SAMPLE_BYTES))
    return f"sha256:{digest.hexdigest()}"


def _tasks_for(recipe: Recipe, config: SweepConfig) -> list[str]:
    text = config.tasks or (",".join(recipe.tasks) if recipe.tasks else None)
    if recipe.kind == "eval":
        from surgery.evaluation.tasks import parse_tasks

        return [benchmark.name for benchmark in parse_tasks(text)]
    if recipe.kind == "glue":
        from surgery.glue.data import resolve_tasks, tasks_with_local_data

        names = resolve_tasks(text or "all")
        return tasks_with_local_data(names, config.data_dir) if text in (None, "all") else names
    if config.tasks not in (None, "similarity"):
        raise SurgeryError("--tasks: similarity recipes measure hidden states; they take no tasks")
    return ["similarity"]


def check(config: SweepConfig) -> SweepPlan:
    """Everything that can be refused before torch loads: recipe, model, tasks, data, executor, OUT."""
    from surgery import __version__
    from surgery.architectures.loading import check_loadable
    from surgery.cli.extras import require_extra
    from surgery.io.data_dir import resolve_data_dir
    from surgery.io.model_ref import num_layers_of
    from surgery.sweep.report import ResultStore

    recipe, first_line = load_recipe(config.recipe)
    if config.overrides:
        from surgery.sweep.recipe import parse_settings_override

        settings = {**recipe.settings, **parse_settings_override(config.overrides, recipe.kind)}
        recipe = recipe.model_copy(update={"settings": settings})
    require_extra("eval", "sweep")
    if config.executor == "ray":
        require_extra("ray", "sweep --executor ray")
    elif config.address is not None:
        raise SurgeryError("--address joins a Ray cluster; it needs --executor ray")
    from surgery.evaluation.run import resolve_device
    from surgery.io.output_dir import check_creatable

    check_creatable(config.out_dir, "--out", beside=False)  # a run directory, written in place (resumable)
    if config.executor == "local" and config.device is not None:  # Ray workers' devices are on their machines
        resolve_device(config.device)
    ref, model_config, _ = check_loadable(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    num_layers = num_layers_of(model_config, config.model)
    unknown = sorted(set(config.grid) - {name for spec in recipe.variants for name in spec.grid})
    if unknown:
        raise SurgeryError(f"--grid {', '.join(unknown)}: not a parameter of {config.recipe.name}")
    if config.variants:
        names = {spec.name for spec in recipe.variants}
        missing = [name for name in config.variants if name not in names]
        if missing:
            raise SurgeryError(
                f"--variants {', '.join(missing)}: not in {config.recipe.name} ({', '.join(sorted(names))})"
            )
        recipe = recipe.model_copy(update={"variants": [v for v in recipe.variants if v.name in config.variants]})
    variants = expand(recipe, num_layers, config.grid)
    tasks = _tasks_for(recipe, config)
    data_dir = resolve_data_dir(config.data_dir)
    if recipe.kind == "eval" and data_dir is not None:
        from surgery.evaluation.tasks import parse_tasks, resolve_local

        resolve_local(parse_tasks(tasks), data_dir)
    model = {
        "given": config.model,
        "name": config.model if ref.name.isdigit() else ref.name,  # an unpacked demo model's folder is a number
        "identity": model_identity(ref, model_config),
        "layers": num_layers,
    }
    settings = config.evaluation_settings(recipe.kind, dict(recipe.settings))
    settings["data"] = "local" if data_dir is not None else "hub"
    units = []
    for variant in variants:
        for task in tasks:
            basis = {
                "model": model["identity"],
                "plan": variant.plan,
                "task": task,
                "limit": config.limit,
                "settings": settings,
                "code": __version__,
            }
            eval_key = _digest(basis)
            units.append(Unit(variant, task, _digest([eval_key, variant.name, variant.params]), eval_key))
    done = ResultStore(config.out_dir).done() if (config.out_dir / "results.jsonl").exists() else {}
    jobs: dict[str, Job] = {}
    for unit in units:
        if unit.key in done:
            continue
        job = jobs.setdefault(unit.eval_key, Job(unit.eval_key, unit.variant.plan, unit.task))
        job.units.append(unit)
    pending = len([u for u in units if u.key not in done])
    return SweepPlan(
        recipe,
        first_line,
        num_layers,
        model,
        tasks,
        settings,
        variants,
        units,
        list(jobs.values()),
        len(units) - pending,
    )


def _provenance() -> dict[str, Any]:
    import platform

    from surgery import __version__

    versions = {"surgery": __version__, "python": platform.python_version()}
    for module in ("torch", "transformers", "lm_eval"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            versions[module] = None
    return versions


def build_record(
    plan: SweepPlan, config: SweepConfig, unit: Unit, result, provenance: dict[str, Any]
) -> dict[str, Any]:
    """The record of ``unit`` from its job's :class:`~surgery.sweep.workers.JobResult`."""
    return {
        "key": unit.key,
        "eval_key": unit.eval_key,
        "recipe": config.recipe.stem,
        "figure": plan.recipe.figure,
        "variant": unit.variant.name,
        "label": unit.variant.label,
        "params": unit.variant.params,
        "derived": unit.variant.derived,
        "plan": unit.variant.plan,
        "task": unit.task,
        "metrics": result.metrics,
        "n": result.n,
        "limit": config.limit,
        "chance": result.chance,
        **result.extra,
        "settings": plan.settings,
        "model": plan.model,
        "provenance": provenance,
        "timing": {"seconds": result.seconds, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "host": socket.gethostname(),
    }


class Progress:
    """``[done/total] variant params task: metric (n, seconds)  elapsed  ETA`` lines on stderr.

    The ETA is the mean evaluation time of this run so far times the evaluations left (model loading excluded).
    """

    def __init__(self, total: int, done: int, jobs: int, enabled: bool) -> None:
        self.total, self.done, self.jobs_left, self.enabled = total, done, jobs, enabled
        self.start, self.seconds, self.jobs_done = time.monotonic(), 0.0, 0

    def __call__(self, unit: Unit, result, units_in_job: int) -> None:
        self.done += units_in_job
        self.jobs_done += 1
        self.jobs_left -= 1
        self.seconds += result.seconds
        if not self.enabled:
            return
        eta = self.seconds / self.jobs_done * self.jobs_left
        params = " ".join(f"{k}={v}" for k, v in unit.variant.params.items())
        print(
            f"[{self.done}/{self.total}] {unit.variant.name} {params} {unit.task}: {_headline(result.metrics)} "
            f"(n={result.n}, {result.seconds:.1f}s)  elapsed {_duration(time.monotonic() - self.start)}  "
            f"ETA {_duration(eta)}",
            file=sys.stderr,
            flush=True,
        )


def _headline(metrics: dict[str, Any]) -> str:
    for key in ("acc_norm,none", "acc,none", "exact_match,strict-match", "score", "mean_similarity_inner"):
        if isinstance(metrics.get(key), (int, float)):
            return f"{key.split(',')[0]} {metrics[key]:.4g}"
    return ""


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def run_sweep(config: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the sweep into ``config.out_dir``; returns the manifest with counts."""
    plan = check(config)
    from surgery.sweep.report import ResultStore, write_manifest
    from surgery.sweep.workers import make_worker, worker_settings

    store = ResultStore(config.out_dir)
    with store.locked():
        manifest = {
            "recipe": str(config.recipe),
            "recipe_name": config.recipe.stem,
            "recipe_spec": plan.recipe.model_dump(mode="json"),
            "command": plan.first_line.lstrip("# ").strip(),
            "model": plan.model,
            "tasks": plan.tasks,
            "limit": config.limit,
            "settings": plan.settings,
            "grid": config.grid,
            "variants": [{"name": v.name, "params": v.params, "plan": v.plan} for v in plan.variants],
            "units": len(plan.units),
            "executor": config.executor,
        }
        write_manifest(config.out_dir, manifest)
        if config.progress:
            print(
                f"sweep {config.recipe.name} on {plan.model['name']} (T={plan.num_layers}): "
                f"{len(plan.variants)} variants "
                f"x {len(plan.tasks)} task(s) = {len(plan.units)} results, {plan.done} already done, "
                f"{len(plan.jobs)} evaluation(s) to run",
                file=sys.stderr,
                flush=True,
            )
        progress = Progress(len(plan.units), plan.done, len(plan.jobs), config.progress)
        provenance = _provenance()

        def on_result(job: Job, result) -> None:
            for unit in job.units:
                record = build_record(plan, config, unit, result, provenance)
                if result.artifact is not None:
                    record["files"] = store.write_artifact(unit.key, result.artifact, record)
                store.append(record)
            progress(job.units[0], result, len(job.units))

        settings = worker_settings(config, plan.recipe.kind, dict(plan.recipe.settings))
        if plan.jobs:
            if config.executor == "ray":
                from surgery.sweep.ray_executor import run_on_ray

                run_on_ray(plan.recipe.kind, settings, plan.jobs, config, on_result)
            else:
                worker = make_worker(plan.recipe.kind, settings)
                for job in plan.jobs:
                    on_result(job, worker.run(job.plan, job.task))
    return {**manifest, "done_before": plan.done, "evaluated": len(plan.jobs)}
