"""``surgery sweep --executor ray``: the same jobs on Ray actors, results streamed back into the same store.

Each actor wraps one :class:`~surgery.sweep.workers.Worker` (the model and tasks load once per actor) and
evaluates one job (a plan on a task) per call. The driver keeps every actor busy, takes results in the order
they finish (``ray.wait``) and appends them to ``OUT/results.jsonl`` itself, so resuming works exactly as with
the local executor. ``--address`` joins a running cluster (``auto`` or ``ray://host:10001``); without it a local
Ray instance starts and is shut down at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from surgery.errors import SurgeryError


class _Actor:
    """The body of the Ray actor: a worker built from plain settings."""

    def __init__(self, kind: str, settings: dict[str, Any]) -> None:
        from surgery.sweep.workers import make_worker

        self.worker = make_worker(kind, settings)

    def run(self, plan: str, task: str):
        return self.worker.run(plan, task)


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"


def default_workers(resources: dict[str, float], gpus_per_variant: float) -> int:
    """One actor per ``gpus_per_variant`` GPUs of the cluster; on a cluster without GPUs, one actor."""
    if gpus_per_variant > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_variant))
    return 1


def run_on_ray(kind: str, settings: dict[str, Any], jobs: list, config, on_result: Callable) -> None:
    """Evaluate ``jobs`` on Ray actors; ``on_result(job, result)`` runs in the driver as each one finishes."""
    try:
        import ray
    except ImportError:
        raise SurgeryError("--executor ray needs Ray: pip install 'surgery[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        try:
            if config.address is None:
                ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(address=config.address, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # noqa: BLE001 - connection errors come in many types
            raise SurgeryError(f"cannot start or join Ray ({_first_line(exc)})") from None
    actors = []
    try:
        count = config.workers or default_workers(ray.cluster_resources(), config.gpus_per_variant)
        remote = ray.remote(num_cpus=1, num_gpus=config.gpus_per_variant or 0)(_Actor)
        actors = [remote.remote(kind, settings) for _ in range(min(count, len(jobs)))]
        queue = list(jobs)
        pending: dict[Any, tuple[Any, Any]] = {}
        for actor in actors:
            job = queue.pop(0)
            pending[actor.run.remote(job.plan, job.task)] = (job, actor)
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            job, actor = pending.pop(ready)
            try:
                result = ray.get(ready)
            except Exception as exc:  # noqa: BLE001 - RayTaskError wraps the worker's exception
                raise SurgeryError(f"job {job.plan} on {job.task} failed on a Ray worker: {_first_line(exc)}") from None
            on_result(job, result)
            if queue:
                job = queue.pop(0)
                pending[actor.run.remote(job.plan, job.task)] = (job, actor)
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()
