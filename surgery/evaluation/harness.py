"""Run lm-evaluation-harness on a loaded model with a layer plan applied in memory.

lm-eval is the engine: the model (with :func:`surgery.apply.inmemory.planned` active) is wrapped in lm-eval's own
``HFLM`` and scored by ``lm_eval.simple_evaluate``, so prompts, tokenization (the tokenizer's default special
tokens, e.g. SmolLM2's BOS), batching, metrics and aggregation are lm-eval's, and the numbers equal those
of ``lm_eval --model hf`` on the same checkpoint (tests/test_eval_integration.py checks this exactly).
Tasks and their datasets are loaded once per :class:`TaskSet` and reused for every variant of a sweep::

    model, tokenizer = load_model_and_tokenizer("HuggingFaceTB/SmolLM2-135M")
    taskset = TaskSet("lambada_openai,arc_easy", data_dir="shared/data")
    full = taskset.run(model, tokenizer, limit=100)
    skip = taskset.run(model, tokenizer, plan="skip:13-19", limit=100)
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.evaluation.config import DEFAULT_BOOTSTRAP_ITERS
from surgery.evaluation.tasks import (
    Benchmark,
    LocalTask,
    parse_tasks,
    resolve_local,
    write_task_yamls,
)
from surgery.io.data_dir import resolve_data_dir
from surgery.quiet import quiet_logger

# lm-eval's own defaults (lm_eval.simple_evaluate / the lm_eval CLI)
LM_EVAL_SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def seeds_for(seed: int | None) -> dict[str, int]:
    """lm-eval's default seeds, or ``seed`` for all four (python, numpy, torch, few-shot sampling)."""
    return dict(LM_EVAL_SEEDS) if seed is None else dict.fromkeys(LM_EVAL_SEEDS, int(seed))


@contextmanager
def _without_env_info() -> Iterator[None]:
    """Skip ``simple_evaluate``'s environment report and its ``git describe`` of the working directory.

    The report (torch's collect_env) costs seconds per call and sweeps run hundreds; ``git describe`` describes
    whatever repository the user stands in (and prints ``fatal: not a git repository`` outside one). Both only
    add keys (``pretty_env_info``, ``git_hash``) to the results; scores are untouched.
    """
    import lm_eval.evaluator as evaluator

    patches = {"add_env_info": lambda results: None, "get_git_commit_hash": lambda: None}
    originals = {name: getattr(evaluator, name) for name in patches if hasattr(evaluator, name)}
    for name in originals:
        setattr(evaluator, name, patches[name])
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(evaluator, name, original)


class TaskSet:
    """The requested benchmarks as loaded lm-eval ``Task`` objects, with where their data came from."""

    def __init__(
        self,
        tasks: str | list[str] | None = None,
        *,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        from lm_eval.tasks import TaskManager

        self.benchmarks: list[Benchmark] = parse_tasks(tasks)
        self.local: dict[str, LocalTask] | None = None
        self._yaml_dir = None
        data_dir = resolve_data_dir(data_dir)
        if data_dir is not None:
            self.local = resolve_local(self.benchmarks, data_dir, Path(cache_dir) if cache_dir else None)
            self._yaml_dir = tempfile.TemporaryDirectory(prefix="surgery-eval-tasks-")
            write_task_yamls(self.local, Path(self._yaml_dir.name))
            self.task_manager = TaskManager(include_path=self._yaml_dir.name, include_defaults=False)
        else:
            self.task_manager = TaskManager()
        self.tasks: dict[str, Any] = {}  # lm-eval task name -> Task
        for benchmark in self.benchmarks:
            name = self.local[benchmark.name].task if self.local else benchmark.name
            try:
                self.tasks[name] = self.task_manager.load([name])["tasks"][name]
            except SurgeryError:
                raise
            except Exception as exc:  # noqa: BLE001 - datasets/hub errors come in many types
                if self.local:
                    raise SurgeryError(f"task {benchmark.name!r}: cannot load local data ({_first_line(exc)})") from exc
                raise SurgeryError(
                    f"task {benchmark.name!r}: cannot load its Hub dataset {benchmark.hub_dataset} "
                    f"({_first_line(exc)}); pass --data-dir DIR with local copies ({benchmark.layout})"
                ) from exc
        # simple_evaluate merges gen_kwargs into the task config in place: keep the YAML's to restore per run
        self._generation_kwargs = {
            name: copy.deepcopy(task.config.generation_kwargs)
            for name, task in self.tasks.items()
            if task.OUTPUT_TYPE == "generate_until"
        }

    def data_sources(self) -> dict[str, dict[str, Any]]:
        """Per task: ``source`` (hub/local), dataset or files, and the stand-in flag and note."""
        out = {}
        for name, task in self.tasks.items():
            if self.local:
                item = next(i for i in self.local.values() if i.task == name)
                out[name] = {
                    "source": "local",
                    "files": [str(p) for p in item.sources],
                    "standin": item.standin,
                }
                if item.note:
                    out[name]["note"] = item.note
            else:
                config = task.config
                out[name] = {
                    "source": "hub",
                    "dataset": config.dataset_path,
                    "dataset_name": config.dataset_name,
                    "standin": False,
                }
        return out

    def doc_counts(self, limit: int | float | None) -> dict[str, int]:
        """How many documents each task evaluates under ``limit`` (what a run will cost)."""
        from lm_eval.evaluator_utils import get_sample_size

        counts = {}
        for name, task in self.tasks.items():
            total = len(task.eval_docs)
            size = get_sample_size(task, limit)
            counts[name] = total if size is None else min(int(size), total)
        return counts

    def chance(self, limit: int | float | None) -> dict[str, dict[str, float]]:
        """Random-guess level per task and metric over the docs that ``limit`` evaluates.

        Multiple choice: mean of 1/len(choices) per item (ARC has some 3- and 5-choice items); LAMBADA and
        GSM8K: 0 (open-ended answers).
        """
        from lm_eval.evaluator_utils import get_sample_size

        out = {}
        for name, task in self.tasks.items():
            metrics = list(task._metric_fn_list)
            if task.OUTPUT_TYPE == "multiple_choice":
                docs = [doc for _, doc in task.doc_iterator(rank=0, limit=get_sample_size(task, limit), world_size=1)]
                value = sum(1.0 / len(task.doc_to_choice(doc)) for doc in docs) / len(docs)
                out[name] = {f"{m},none": value for m in metrics if m in ("acc", "acc_norm")}
            elif task.OUTPUT_TYPE == "generate_until":
                out[name] = {f"{m},{f.name}": 0.0 for f in task._filters for m in metrics}
            else:
                out[name] = {f"{m},none": 0.0 for m in metrics if m == "acc"}
        return out

    def run(
        self,
        model,
        tokenizer,
        *,
        plan=None,
        limit: int | float | None = None,
        batch_size: int = 1,
        max_gen_toks: int | None = None,
        bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
        seed: int | None = None,
        log_samples: bool = False,
    ) -> dict[str, Any]:
        """Evaluate ``model`` (with ``plan`` applied in memory, if given); returns lm-eval's results dict.

        ``log_samples`` keeps lm-eval's per-item records (prompts, log-likelihoods, generations) under ``samples``.
        """
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        from surgery.apply.inmemory import planned

        for name, kwargs in self._generation_kwargs.items():
            self.tasks[name].set_config("generation_kwargs", copy.deepcopy(kwargs))
        with planned(model, plan) if plan is not None else nullcontext(), _without_env_info():
            with quiet_logger("lm_eval.models.huggingface"):
                lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            results = simple_evaluate(
                model=lm,
                tasks=list(self.tasks.values()),
                task_manager=self.task_manager,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=log_samples,
                gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
                **seeds_for(seed),
            )
        return results


def evaluate(model: str, **settings: Any) -> dict[str, Any]:
    """``surgery eval`` as a function: ``evaluate(MODEL, plan=..., tasks=..., limit=...)``; returns the payload.

    ``settings`` are the fields of :class:`~surgery.evaluation.config.EvalConfig`.
    """
    from surgery.evaluation.config import EvalConfig
    from surgery.evaluation.run import run_eval

    return run_eval(EvalConfig.validated(model=model, **settings))


MAX_RESULTS_BYTES = 1 << 30  # a results JSON with every sample logged is tens of MB; 1 GiB is plenty


def load_results(path: str | Path) -> dict[str, Any]:
    """A results JSON written by ``surgery eval`` (or by lm-eval: anything with a ``results`` mapping).

    Checked where it is read: a regular file (never a FIFO or device), JSON, ``results`` mapping each task to a
    mapping of metrics, ``config``/``chance``/``config.data`` mappings when present, and finite numbers where
    the normalized score reads them.
    """
    import json

    from surgery.fileio import open_regular

    path = Path(path)
    try:
        with open_regular(path, max_bytes=MAX_RESULTS_BYTES) as handle:
            payload = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise SurgeryError(f"baseline results not found: {path}") from None
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8, not JSON, nested too deep
        raise SurgeryError(f"cannot read baseline results {path}: {_first_line(exc)[:200]}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("results"), dict):
        raise SurgeryError(f"{path} has no 'results' mapping; expected the JSON written by `surgery eval --output`")
    _check_results_shape(payload, path)
    return payload


def _check_results_shape(payload: dict[str, Any], path: Path) -> None:
    """Refuse what the normalized score and the comparability warnings would trip over, naming where it is."""
    import math

    from surgery.evaluation.tasks import BENCHMARK_OF_TASK

    def refuse(where: str, what: str) -> SurgeryError:
        return SurgeryError(f"baseline results {path}: {where[:120]!r} {what}")

    for section in ("results", "chance", "config"):
        if not isinstance(payload.get(section, {}), dict):
            raise refuse(section, "must be a mapping")
    for section in ("results", "chance"):
        for task, metrics in payload.get(section, {}).items():
            if not isinstance(metrics, dict):
                raise refuse(f"{section}.{task}", "must be a mapping of metric names to values")
            benchmark = BENCHMARK_OF_TASK.get(task)
            read = {"perplexity", benchmark.primary_metric.split(",")[0]} if benchmark else set()
            for key, value in metrics.items():
                if isinstance(value, float) and not math.isfinite(value) and str(key).split(",")[0] in read:
                    raise refuse(f"{section}.{task}.{key}", f"is {value}; a baseline score must be a finite number")
    data = payload.get("config", {}).get("data", {})
    if not isinstance(data, dict) or not all(isinstance(info, dict) for info in data.values()):
        raise refuse("config.data", "must map each task to a mapping (where its data came from)")


def baseline_mismatches(config: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Warnings when the baseline run is not comparable (a plan applied, other limit or data)."""
    if not baseline:
        return []
    out = []
    if baseline.get("plan") not in (None, "identity"):
        out.append(f"the baseline has plan {baseline['plan']!r} applied; the normalized score assumes the full model")
    if "limit" in baseline and baseline.get("limit") != config.get("limit"):
        out.append(f"baseline limit {baseline.get('limit')} differs from this run's {config.get('limit')}")
    for task, info in config.get("data", {}).items():
        other = baseline.get("data", {}).get(task)
        if other is not None and other.get("source") != info.get("source"):
            out.append(
                f"{task}: baseline data source {other.get('source')} differs from this run's {info.get('source')}"
            )
    return out
