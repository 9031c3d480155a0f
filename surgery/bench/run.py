"""``surgery bench`` as a function: every model on every backend, each in its own process; ratios to the first."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from surgery import __version__
from surgery.bench.config import BenchConfig
from surgery.errors import SurgeryError


def check(config: BenchConfig) -> dict[str, dict[str, Any]]:
    """Refuse what can be refused before any measurement, and return each model's bounds (:func:`bounds`).

    Missing models, model code without consent, a malformed ``export.json`` or safetensors header, an ``--out``
    that names a file or an unwritable place: one error, before anything is timed.
    """
    from surgery.bench.weights import bounds
    from surgery.io.loading import check_loadable
    from surgery.io.model_ref import ModelRef

    for model in config.models:
        ref = ModelRef.parse(model)
        if ref.kind != "directory":
            raise SurgeryError(f"{model}: bench measures local folders (a checkpoint, or an ONNX export)")
        if not (ref.path / "model.onnx").is_file():
            check_loadable(ref, trust_remote_code=config.trust_remote_code)
    check_out_dir(config.out_dir)
    if "onnxruntime" in config.backends:
        from surgery.extras import require_extra

        require_extra("export", "bench --backend onnxruntime", ("optimum.onnxruntime", "onnxruntime"))
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SurgeryError("--device cuda: no CUDA device is available")
    return {model: bounds(Path(model)) for model in dict.fromkeys(config.models)}


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


def _measure_in_subprocess(model: str, backend: str, config: BenchConfig, threads: int) -> dict[str, Any]:
    settings = {
        "model": model,
        "backend": backend,
        "device": config.device,
        "dtype": config.dtype,
        "prompt_len": config.prompt_len,
        "new_tokens": config.new_tokens,
        "batch": config.batch,
        "repeats": config.repeats,
        "warmup": config.warmup + (1 if backend == "torch-compile" else 0),  # one more round: the compilation
        "threads": threads,
        "trust_remote_code": config.trust_remote_code,
    }
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "surgery.bench.measure", json.dumps(settings)],
            capture_output=True,
            text=True,
            env=env,
            timeout=config.timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"failed: no result within {config.timeout_s} s"}
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"failed: {last}"}
    return json.loads(lines[-1])


def not_applicable(model: str, backend: str) -> str | None:
    """Why a model's format is not this backend's (decided here, without starting a process), or None."""
    from surgery.bench.measure import NOT_APPLICABLE

    is_onnx = (Path(model) / "model.onnx").is_file()
    if backend == "onnxruntime" and not is_onnx:
        return NOT_APPLICABLE + "not an ONNX folder (make one with `surgery export onnx`)"
    if backend != "onnxruntime" and is_onnx:
        return NOT_APPLICABLE + "an ONNX folder (torch backends need the PyTorch checkpoint)"
    return None


def add_ratios(results: list[dict[str, Any]]) -> None:
    """Each result's ratio to the first model measured on the same backend (median / median)."""
    first: dict[str, dict[str, Any]] = {}
    for result in results:
        if "skipped" in result:
            continue
        base = first.setdefault(result["backend"], result)
        for key, metric in (("ratio_prefill", "prefill_ms"), ("ratio_decode", "decode_ms_per_token")):
            result[key] = result[metric]["median"] / base[metric]["median"]
        for key, metric in (("ratio_weight_bytes", "weight_bytes_per_token"), ("ratio_steps", "sequential_steps")):
            if result.get(metric) and base.get(metric):
                result[key] = result[metric] / base[metric]


METHOD = (
    "torch and onnxruntime: greedy generate() of new_tokens tokens, a timestamp per token; prefill = to the first "
    "new token, decode = median interval between later tokens. torch-compile: the static-cache loop "
    "(surgery.bench.decode): prefill = the prompt's forward and argmax, decode = the compiled one-token loop's time / "
    "(new_tokens - 1). Median/min/max over repeats after warm-up; one process per measurement. Bounds: "
    "weight bytes read and sequential steps per decoded token, as ratios to the first model"
)


def run_bench(config: BenchConfig, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every model x backend and return the ``bench.json`` payload (written by the caller).

    Everything is validated first (:func:`check`). While measuring, ``OUT/bench.partial.json`` holds what is
    measured so far (marked partial), so a run that fails or is interrupted keeps its measurements.
    """
    from surgery.bench.report import write_partial

    model_bounds = check(config)
    threads = config.threads or os.cpu_count() or 1
    payload = {
        "machine": machine(config, threads),
        "settings": config.record(),
        "method": METHOD,
        "results": [],
    }
    results = payload["results"]
    total = len(config.models) * len(config.backends)
    for backend in config.backends:
        for model in config.models:
            reason = not_applicable(model, backend)
            measured = {"skipped": reason} if reason else _measure_in_subprocess(model, backend, config, threads)
            results.append({"model": model, "backend": backend, **measured, **model_bounds[model]})
            write_partial(payload, config.out_dir, total)
            if progress is not None:
                progress(_line(len(results), total, results[-1]))
    add_ratios(results)
    from surgery.bench.schema import BenchPayload

    BenchPayload.model_validate(payload)  # what we write is what readers (the model card) validate against
    return payload


def _line(done: int, total: int, result: dict[str, Any]) -> str:
    head = f"[{done}/{total}] {result['model']} on {result['backend']}:"
    if "skipped" in result:
        return f"{head} not measured ({result['skipped']})"
    return (
        f"{head} prefill {result['prefill_ms']['median']:.1f} ms, "
        f"decode {result['decode_ms_per_token']['median']:.2f} ms/token, {result['tokens_per_s']:.1f} tokens/s"
    )
