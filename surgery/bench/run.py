"""``surgery bench`` as a function: every model on every backend, each in its own warm process, measured in
interleaved rounds; ratios to the first model, per round."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgery import __version__
from surgery.bench.config import BenchConfig
from surgery.bench.measure import NOT_APPLICABLE, SKIP
from surgery.bench.stats import MIN_ROUNDS, NOISE_RULE, NOISE_TOLERANCE, add_ratios, round_order, summarize
from surgery.errors import SurgeryError


def check(config: BenchConfig) -> dict[str, dict[str, Any]]:
    """Refuse what can be refused before any measurement, and return each model's bounds (:func:`bounds`).

    Missing models, model code without consent, a malformed ``export.json`` or safetensors header, an ``--out``
    that names a file or an unwritable place: one error, before anything is timed.
    """
    from surgery.architectures.loading import check_loadable
    from surgery.bench.weights import bounds
    from surgery.io.demo_models import DEMO_MODELS
    from surgery.io.model_ref import ModelRef

    refs = {}
    for model in config.models:
        ref = refs[model] = ModelRef.parse(model)
        demo = model in DEMO_MODELS  # the short names work here as in every command (smollm2-demo is a .gguf)
        if ref.kind != "directory" and not (demo and ref.kind == "gguf"):
            raise SurgeryError(f"{model}: bench measures local folders (a checkpoint, or an ONNX export)")
        if ref.kind == "gguf" or not (ref.path / "model.onnx").is_file():
            check_loadable(ref, trust_remote_code=config.trust_remote_code)
    check_out_dir(config.out_dir)
    if "onnxruntime" in config.backends:
        from surgery.cli.extras import require_extra

        require_extra("export", "bench --backend onnxruntime", ("optimum.onnxruntime", "onnxruntime"))
    from surgery.evaluation.run import resolve_device

    resolve_device(config.device)  # one device check for every command (one line when CUDA is missing)
    gguf_note = {"bound_note": "no bounds: a GGUF file (apply a plan to it to bench a folder with bounds)"}
    return {
        model: gguf_note if refs[model].kind == "gguf" else bounds(refs[model].path)
        for model in dict.fromkeys(config.models)
    }


def check_out_dir(out_dir: Path) -> None:
    """``--out`` must be a directory this run can create or write its files in."""
    from surgery.bench.report import FILES, PARTIAL
    from surgery.fileio import check_writable_file

    out_dir = Path(out_dir)
    if out_dir.is_symlink() and not out_dir.exists():
        raise SurgeryError(f"--out {out_dir} is a broken symbolic link")
    if out_dir.exists() and not out_dir.is_dir():
        raise SurgeryError(f"--out {out_dir} is a file; give a directory")
    for name in (*FILES.values(), PARTIAL):
        check_writable_file(out_dir / name, "--out")


def machine(config: BenchConfig, threads: int) -> dict[str, Any]:
    """Where the numbers were measured: they compare only within one run on one machine."""
    import importlib.metadata

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "onnxruntime", "onnxruntime-gpu", "optimum-onnx"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "device": config.device,
        "gpu": torch.cuda.get_device_name(0) if config.device == "cuda" else None,
        "python": platform.python_version(),
        "versions": versions,
        "surgery_version": __version__,
    }


def start_worker(model: str, backend: str, config: BenchConfig, threads: int):
    """A warm measurement process for one model on one backend (:class:`surgery.bench.worker.Worker`)."""
    from surgery.bench.worker import Worker

    settings = {
        "model": model,
        "backend": backend,
        "device": config.device,
        "dtype": config.dtype,
        "prompt_len": config.prompt_len,
        "new_tokens": config.new_tokens,
        "batch": config.batch,
        "threads": threads,
        "trust_remote_code": config.trust_remote_code,
    }
    return Worker(settings, threads=threads, timeout_s=config.timeout_s)


def not_applicable(model: str, backend: str) -> str | None:
    """Why a model's format is not this backend's (decided here, without starting a process), or None."""
    is_onnx = (Path(model) / "model.onnx").is_file()
    if backend == "onnxruntime" and not is_onnx:
        return NOT_APPLICABLE + "not an ONNX folder (make one with `surgery export onnx`)"
    if backend != "onnxruntime" and is_onnx:
        return NOT_APPLICABLE + "an ONNX folder (torch backends need the PyTorch checkpoint)"
    return None


METHOD = (
    "torch and onnxruntime: greedy generate() of new_tokens tokens, a timestamp per token; prefill = to the first "
    "new token, decode = median interval between later tokens. torch-compile: the static-cache loop "
    "(surgery.bench.decode): prefill = the prompt's forward and argmax, decode = the compiled one-token loop's time / "
    "(new_tokens - 1). One warm process per model; per backend the models are measured in interleaved rounds "
    "(every model once per round, the order rotated and reversed between rounds) after warm-up rounds; each "
    "figure is the median/min/max over rounds, each ratio the median of the per-round ratios. Bounds: "
    "weight bytes read and sequential steps per decoded token, as ratios to the first model"
)


def run_bench(config: BenchConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model x backend and return the ``bench.json`` payload (written by the caller).

    Everything is validated first (:func:`check`). Per backend, every applicable model is loaded in a process
    of its own (all at once: memory must hold them), then measured in rounds: each round measures every model
    once, in the order :func:`surgery.bench.stats.round_order` gives (rotated, reversed every other round), after
    ``warmup`` untimed rounds. While measuring, ``OUT/bench.partial.json`` holds the rounds measured so far
    (marked partial), so a run that fails or is interrupted keeps its measurements.
    """
    from surgery.bench.schema import BenchPayload

    model_bounds = check(config)
    threads = config.threads or os.cpu_count() or 1
    payload: dict[str, Any] = {
        "machine": machine(config, threads),
        "settings": config.record(),
        "method": METHOD,
        "noise": {"tolerance": NOISE_TOLERANCE, "min_rounds": MIN_ROUNDS, "rule": NOISE_RULE},
        "rounds": {"count": config.repeats, "warmup": config.warmup, "orders": {}},
        "results": [],
    }
    say = progress or (lambda line: None)
    counter = {"done": 0, "total": len(config.backends) * config.repeats}
    for backend in config.backends:
        rows = [{"model": model, "backend": backend} for model in config.models]
        _measure_backend(rows, config, threads, payload, counter, say)
        payload["results"] += [{**row, **model_bounds[row["model"]]} for row in rows]
    add_ratios(payload["results"])
    payload["noisy"] = any(result.get("noisy") for result in payload["results"])
    BenchPayload.model_validate(payload)  # what we write is what readers (the model card) validate against
    return payload


def _measure_backend(
    rows: list[dict[str, Any]],
    config: BenchConfig,
    threads: int,
    payload: dict[str, Any],
    counter: dict[str, int],
    say: Callable[[str], None],
) -> None:
    """Fill ``rows`` (one backend, one per model): load every model, then the interleaved rounds, then finish."""
    from surgery.bench.report import write_partial

    backend = rows[0]["backend"]
    workers: dict[int, Any] = {}
    rounds: dict[int, list[dict[str, float]]] = {}
    try:
        for index, row in enumerate(rows):
            reason = not_applicable(row["model"], backend)
            if reason is None:
                workers[index] = start_worker(row["model"], backend, config, threads)
                reason = workers[index].start().get(SKIP)
            if reason is None:
                rounds[index] = []
            else:
                row[SKIP] = reason
                if not reason.startswith(NOT_APPLICABLE):
                    say(f"{row['model']} on {backend}: not measured ({reason})")
        warmup = config.warmup + (1 if backend == "torch-compile" else 0)  # one more round: the compilation
        orders = payload["rounds"]["orders"].setdefault(backend, [])
        for number in range(-warmup, config.repeats):
            live = list(rounds)
            order = [live[position] for position in round_order(len(live), number)]
            for index in order:
                answer = workers[index].round()
                if SKIP in answer:
                    rows[index][SKIP] = answer[SKIP]
                    del rounds[index]
                    say(f"{rows[index]['model']} on {backend}: not measured ({answer[SKIP]})")
                elif number >= 0:
                    rounds[index].append(answer)
            if number < 0 or not order:
                continue
            orders.append(order)
            counter["done"] += 1
            snapshot = [{**row, **summarize(rounds[i])} if rounds.get(i) else row for i, row in enumerate(rows)]
            partial = {**payload, "results": payload["results"] + snapshot}
            write_partial(partial, config.out_dir, f"{counter['done']} of {counter['total']} rounds measured")
            say(_round_line(number, config.repeats, backend, [(rows[i]["model"], rounds[i][-1]) for i in order
                                                               if i in rounds]))  # fmt: skip
        for index, measured in rounds.items():
            finished = workers[index].finish()
            rows[index].update({SKIP: finished[SKIP]} if SKIP in finished else {**summarize(measured), **finished})
    finally:
        for worker in workers.values():
            worker.close()


def _round_line(number: int, count: int, backend: str, measured: list[tuple[str, dict[str, float]]]) -> str:
    head = f"[{backend} round {number + 1}/{count}]"
    return head + ";".join(
        f" {Path(model).name}: prefill {r['prefill_ms']:.1f} ms, decode {r['decode_ms_per_token']:.2f} ms/token"
        for model, r in measured
    )
