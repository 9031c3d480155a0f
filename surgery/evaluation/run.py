"""``surgery eval`` as a library entry point: :func:`check` (fast refusals) and :func:`run_eval`."""

from __future__ import annotations

from typing import Any

from surgery.errors import SurgeryError
from surgery.evaluation.config import EvalConfig


def check(config: EvalConfig):
    """Everything that can be refused before the model and lm-eval load, local files first: tasks, output, plan,
    baseline, data, model, device."""
    from surgery.architectures.loading import check_loadable
    from surgery.cli.extras import require_extra
    from surgery.evaluation.harness import load_results
    from surgery.evaluation.tasks import parse_tasks, resolve_local
    from surgery.fileio import check_writable_file
    from surgery.io.data_dir import resolve_data_dir

    require_extra("eval", "eval", ("lm_eval", "datasets", "numpy"))
    benchmarks = parse_tasks(config.tasks)
    if config.output is not None:
        check_writable_file(config.output, "--output")
    if config.plan is not None:
        from surgery.plan import load_plan

        load_plan(config.plan)
    baseline = load_results(config.baseline) if config.baseline is not None else None
    data_dir = resolve_data_dir(config.data_dir)
    if data_dir is not None:
        resolve_local(benchmarks, data_dir)  # every task's files present (converted once, cached)
    else:
        from surgery.io.hub import dataset_in_cache, prepare_hub

        if prepare_hub():  # offline: the datasets must be in the local cache; know now rather than after imports
            for benchmark in benchmarks:
                if not dataset_in_cache(benchmark.hub_dataset):
                    raise SurgeryError(
                        f"task {benchmark.name!r}: its Hub dataset {benchmark.hub_dataset} is not in the local cache "
                        f"and the Hub is not reachable; pass --data-dir DIR with local copies ({benchmark.layout})"
                    )
    ref, _, _ = check_loadable(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    resolve_device(config.device)  # imports torch: last
    return ref, baseline


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Load MODEL, apply the plan in memory, run the tasks through lm-eval; returns the results payload."""
    ref, baseline_payload = check(config)
    import lm_eval
    import torch
    import transformers

    from surgery import __version__
    from surgery.apply.inmemory import resolve_for_model
    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.evaluation.harness import TaskSet, baseline_mismatches, seeds_for
    from surgery.evaluation.normalize import normalized_scores
    from surgery.evaluation.report import build_payload
    from surgery.plan import load_plan

    plan, limit = config.plan, config.limit
    taskset = TaskSet(config.tasks, data_dir=config.data_dir)
    announce_cost(taskset.doc_counts(limit), limit, config.device)
    loaded, tokenizer = load_model_and_tokenizer(
        ref, dtype=config.dtype, trust_remote_code=config.trust_remote_code, allow_pickle=config.allow_pickle
    )
    if not hasattr(loaded, "generate"):
        raise SurgeryError(f"{config.model} is not a generative (causal LM) model; these benchmarks need one")
    device = resolve_device(config.device)
    loaded.to(device)
    execution = resolve_for_model(loaded, plan) if plan is not None else None
    results = taskset.run(
        loaded,
        tokenizer,
        plan=execution,
        limit=limit,
        batch_size=config.batch_size,
        max_gen_toks=config.max_gen_toks,
        bootstrap_iters=config.bootstrap_iters,
        seed=config.seed,
        log_samples=config.log_samples,
    )
    data = taskset.data_sources()
    record = {
        "model": config.model,
        "plan": plan,
        "plan_canonical": load_plan(plan).canonical if plan is not None else None,
        "source_layers": int(loaded.config.num_hidden_layers),
        "executed_layers": len(execution.instances) if execution else int(loaded.config.num_hidden_layers),
        "executed_sequence": execution.describe() if execution else None,
        "tasks": list(taskset.tasks),
        "limit": limit,
        "batch_size": config.batch_size,
        "max_gen_toks": config.max_gen_toks,
        "bootstrap_iters": config.bootstrap_iters,
        "seeds": seeds_for(config.seed),
        "dtype": config.dtype,
        "device": device,
        "engine": (
            "lm-evaluation-harness HFLM on the in-memory model (plan applied with surgery.apply.inmemory.planned)"
        ),
        "surgery_version": __version__,
        "lm_eval_version": getattr(lm_eval, "__version__", None),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "data": data,
        "standin_tasks": [task for task, info in data.items() if info.get("standin")],
    }
    payload = build_payload(results, record, taskset.chance(limit))
    if config.log_samples:
        payload["samples"] = results.get("samples", {})
    if baseline_payload is not None:
        payload["normalized"] = {"baseline": str(config.baseline), **normalized_scores(payload, baseline_payload)}
        payload["normalized"]["warnings"] += baseline_mismatches(record, baseline_payload.get("config", {}))
    return payload


LONG_RUN_DOCS = 2000  # above this many documents a CPU run takes an hour or more for a 135M model


def announce_cost(counts: dict[str, int], limit: int | float | None, device: str | None) -> None:
    """Say on stderr how much will be evaluated, and suggest ``--limit`` before a run of hours on a CPU."""
    import sys

    total = sum(counts.values())
    parts = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"evaluating {total} documents ({parts})", file=sys.stderr)
    on_cpu = resolve_device(device) == "cpu"
    if on_cpu and limit is None and total > LONG_RUN_DOCS:
        print(
            f"note: {total} documents on a CPU take hours (SmolLM2-135M scores ~5 documents/s with batch 8); "
            "--limit 100 gives a first look in minutes",
            file=sys.stderr,
        )


def resolve_device(device: str | None) -> str:
    """``--device`` checked against this machine: a torch device of type cpu, cuda or mps that exists here.

    None means cuda when available, else cpu. A typo, a CUDA device on a machine without one, or an index past
    the last GPU is one error line before the model loads.
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise SurgeryError(f"--device {device[:60]!r}: not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SurgeryError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if parsed.index is not None and parsed.index >= count:
            raise SurgeryError(f"--device {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise SurgeryError(f"--device {device}: MPS is not available on this machine")
    elif parsed.type != "cpu":
        raise SurgeryError(f"--device {device}: evaluation runs on cpu, cuda or mps (got device type {parsed.type!r})")
    return device
