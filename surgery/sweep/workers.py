"""What evaluates one (plan, task) job: a worker holds the model and the tasks, loaded once, for many jobs.

The same classes run in the local executor and inside Ray actors (one worker per actor), so both executors
compute results the same way. A worker returns a :class:`JobResult`: metrics (lm-eval's keys for ``eval``),
the number of evaluated items, chance levels and anything the store writes beside the record.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError


@dataclass
class JobResult:
    """The outcome of one job; ``extra`` goes into the record, ``artifact`` is written by the store."""

    metrics: dict[str, Any]
    n: int
    chance: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    artifact: Any = None
    seconds: float = 0.0


def _clean_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's metric keys only (``acc,none``...), NaN and ``"N/A"`` stderrs as None."""
    out = {}
    for key, value in metrics.items():
        if "," not in key:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = None if value == "N/A" else value
    return out


class Worker:
    """Base: loads the model once (:meth:`setup`), then :meth:`run` per job."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.ready = False

    def setup(self) -> None:
        """Load what every job needs (model, tasks); idempotent."""
        self.ready = True

    def run(self, plan: str, task: str) -> JobResult:
        """Evaluate ``plan`` (canonical text, ``"identity"`` for the full model) on ``task``."""
        if not self.ready:
            self.setup()
        started = time.perf_counter()
        result = self._run(None if plan == "identity" else plan, task)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _run(self, plan: str | None, task: str) -> JobResult:  # pragma: no cover - abstract
        raise NotImplementedError


def _load_model(settings: dict[str, Any]):
    import torch

    from surgery.architectures.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(
        settings["model"],
        dtype=settings["dtype"],
        revision=settings["revision"],
        trust_remote_code=settings["trust_remote_code"],
        allow_pickle=settings["allow_pickle"],
    )
    device = settings.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


class EvalWorker(Worker):
    """lm-eval benchmarks through :class:`surgery.evaluation.harness.TaskSet` (one TaskSet per task)."""

    def setup(self) -> None:
        if self.ready:
            return
        self.model, self.tokenizer = _load_model(self.settings)
        if not hasattr(self.model, "generate"):
            raise SurgeryError(
                f"{self.settings['model']} is not a generative (causal LM) model; `eval` recipes need one"
            )
        self.tasksets: dict[str, Any] = {}
        self.ready = True

    def taskset(self, task: str):
        from surgery.evaluation.harness import TaskSet

        if task not in self.tasksets:
            self.tasksets[task] = TaskSet(task, data_dir=self.settings["data_dir"])
        return self.tasksets[task]

    def _run(self, plan: str | None, task: str) -> JobResult:
        taskset = self.taskset(task)
        limit = self.settings["limit"]
        results = taskset.run(
            self.model,
            self.tokenizer,
            plan=plan,
            limit=limit,
            batch_size=self.settings["batch_size"],
            max_gen_toks=self.settings["max_gen_toks"],
            bootstrap_iters=self.settings["bootstrap_iters"],
            seed=self.settings["seed"],
        )
        (name,) = results["results"]
        n = int(results["n-samples"][name]["effective"])
        source = taskset.data_sources()[name]
        data = {"source": source["source"], "standin": source.get("standin", False)}
        return JobResult(
            metrics=_clean_metrics(results["results"][name]),
            n=n,
            chance=taskset.chance(limit).get(name, {}),
            extra={"lm_eval_task": name, "data": data},
        )


class SimilarityWorker(Worker):
    """Hidden-state cosine similarity and statistics (:mod:`surgery.analysis.similarity`) on LAMBADA texts."""

    def setup(self) -> None:
        if self.ready:
            return
        from surgery.analysis.texts import load_texts

        self.model, self.tokenizer = _load_model(self.settings)
        limit = self.settings["limit"]
        self.texts = load_texts(
            self.settings.get("texts", "lambada"),
            data_dir=self.settings["data_dir"],
            limit=int(limit) if limit and limit >= 1 else 100,
        )
        self.ready = True

    def _run(self, plan: str | None, task: str) -> JobResult:
        import numpy as np

        from surgery.analysis.similarity import compute_similarity

        result = compute_similarity(
            self.model,
            self.tokenizer,
            self.texts.texts,
            plan=plan,
            batch_size=self.settings["batch_size"],
            max_length=self.settings.get("max_length", 512),
        )
        size = result.size
        middle = result.matrix[1 : size - 1, 1 : size - 1]
        metrics = {
            "entries": size,
            "tokens": result.num_tokens,
            "mean_similarity_inner": round(float(np.mean(middle)), 6) if middle.size else None,
            # the last entry, the plot's last point: after the final norm where the model has one
            "last_text_norm": round(float(result.mean_norm_text[-1]), 4) if size > 1 else None,
            "last_entry_final_norm": result.final_norm_applied,
        }
        return JobResult(metrics=metrics, n=result.num_texts, artifact=result)


class GlueWorker(Worker):
    """Fine-tune and score a GLUE task under the plan (:func:`surgery.glue.train.run_task`); data loaded once."""

    def setup(self) -> None:
        self.datasets: dict[str, Any] = {}
        self.ready = True

    def _run(self, plan: str | None, task: str) -> JobResult:
        from surgery.glue.config import GlueConfig
        from surgery.glue.data import load_task
        from surgery.glue.train import run_task

        if task not in self.datasets:
            self.datasets[task] = load_task(task, self.settings["data_dir"])
        glue = self.settings.get("glue", {})
        limit = self.settings["limit"]
        config = GlueConfig.validated(
            model=self.settings["model"],
            plan=plan,
            data_dir=self.settings["data_dir"],
            max_eval=int(limit) if limit and limit >= 1 else None,
            seed=self.settings["seed"] or 0,
            revision=self.settings["revision"],
            trust_remote_code=self.settings["trust_remote_code"],
            allow_pickle=self.settings["allow_pickle"],
            **glue,
        )
        result = run_task(task, config, data=self.datasets[task], progress=False)
        details = {k: result.details[k] for k in ("train_examples", "eval_examples", "executed") if k in result.details}
        return JobResult(
            metrics={**result.metrics, "score": result.score}, n=result.details["eval_examples"], extra=details
        )


WORKERS = {"eval": EvalWorker, "similarity": SimilarityWorker, "glue": GlueWorker}


def make_worker(kind: str, settings: dict[str, Any]) -> Worker:
    """A worker for recipes of ``kind`` with the sweep's ``settings`` (plain data: it travels to Ray actors)."""
    return WORKERS[kind](settings)


def worker_settings(config, kind: str, recipe_settings: dict[str, Any]) -> dict[str, Any]:
    """The plain-data settings a worker needs, from a :class:`~surgery.sweep.config.SweepConfig`."""
    glue_keys = ("mode", "epochs", "lr", "batch_size", "max_length", "max_train")
    return {
        "model": config.model,
        "revision": config.revision,
        "trust_remote_code": config.trust_remote_code,
        "allow_pickle": config.allow_pickle,
        "dtype": config.dtype,
        "device": config.device,
        "data_dir": str(Path(config.data_dir).expanduser().resolve()) if config.data_dir else None,
        "limit": config.limit,
        "batch_size": config.batch_size,
        "max_gen_toks": config.max_gen_toks,
        "bootstrap_iters": config.bootstrap_iters,
        "seed": config.seed,
        "glue": {k: v for k, v in recipe_settings.items() if k in glue_keys} if kind == "glue" else {},
        **({"texts": recipe_settings["texts"]} if kind == "similarity" and "texts" in recipe_settings else {}),
    }
