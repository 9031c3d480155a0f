"""One measurement: one model on one backend, in a process of its own.

Run as ``python -m surgery.bench.measure '<json settings>'``; prints one JSON object. A process per
measurement gives each its own thread pool, compile caches and peak memory (``ru_maxrss``), so measurements
cannot disturb each other. Timing: ``generate`` with greedy decoding of exactly ``new_tokens`` tokens and a
streamer that timestamps every token: prefill = start of ``generate`` to the first new token (the prompt's
forward pass and the first sampling step); decode = the median interval between later tokens (one forward
with the KV cache each). The prompt is seeded random token ids of length ``prompt_len`` (content does not
change the work done).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SKIP = "skipped"
NOT_APPLICABLE = "n/a: "  # the model's format is not this backend's (as opposed to a backend that cannot run)


class TimingStreamer:
    """A ``generate`` streamer that only records when each token (and first, the prompt) arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:  # noqa: ARG002 - the streamer protocol
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _load(settings: dict[str, Any]):
    """``(model, reason)``: the model for the backend, or None and why it cannot run here."""
    import torch

    model_dir, backend, device = Path(settings["model"]), settings["backend"], settings["device"]
    if backend == "onnxruntime":
        import onnxruntime
        from optimum.onnxruntime import ORTModelForCausalLM

        available = onnxruntime.get_available_providers()
        provider = "CPUExecutionProvider"
        if device == "cuda":
            gpu = [name for name in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if name in available]
            if not gpu:
                return None, "onnxruntime has no CUDA or TensorRT provider here (install onnxruntime-gpu: surgery[gpu])"
            provider = gpu[0]
        settings["provider"] = provider
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings["threads"]
        options.inter_op_num_threads = 1
        model = ORTModelForCausalLM.from_pretrained(model_dir, provider=provider, session_options=options)
        return model, None
    from surgery.io.loading import load_model

    model = load_model(str(model_dir), dtype=settings["dtype"], trust_remote_code=settings["trust_remote_code"])
    model.to(device)
    if backend == "torch-compile":
        model.generation_config.cache_implementation = "static"
        mode = "reduce-overhead" if device == "cuda" else None  # CUDA graphs on a GPU
        model.forward = torch.compile(model.forward, mode=mode)
    return model, None


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """Prefill and decode latency of one model on one backend (see the module docstring)."""
    import torch

    torch.set_num_threads(settings["threads"])
    model, reason = _load(settings)
    if model is None:
        return {SKIP: reason}
    device = settings["device"]
    vocab = int(model.config.vocab_size)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (settings["batch"], settings["prompt_len"]), generator=generator)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if settings["backend"] != "onnxruntime":
        inputs = {key: value.to(device) for key, value in inputs.items()}
    new = settings["new_tokens"]
    options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    prefill, decode, totals = [], [], []

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for round_index in range(settings["warmup"] + settings["repeats"]):
            streamer = TimingStreamer()
            sync()
            started = time.perf_counter()
            model.generate(**inputs, streamer=streamer, **options)
            sync()
            finished = time.perf_counter()
            if round_index < settings["warmup"]:
                continue
            stamps = streamer.times[1:]  # times[0]: the prompt, put before any computation
            if len(stamps) != new:
                raise RuntimeError(f"expected {new} tokens, the streamer saw {len(stamps)}")
            prefill.append((stamps[0] - started) * 1e3)
            decode.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1e3)
            totals.append(finished - started)
    memory = (
        torch.cuda.max_memory_allocated() / 1e6
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: kilobytes
    )
    tokens = settings["batch"] * new
    return {
        "prefill_ms": _spread(prefill),
        "decode_ms_per_token": _spread(decode),
        "tokens_per_s": statistics.median(tokens / total for total in totals),
        "peak_memory_mb": round(memory, 1),
        "memory_kind": "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS",
        "provider": settings.get("provider"),
    }


def main() -> None:
    settings = json.loads(sys.argv[1])
    try:
        result = measure(settings)
    except Exception as exc:  # noqa: BLE001 - reported as this measurement's failure, the run goes on
        result = {SKIP: f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
