"""One measurement: one model on one backend, in a process of its own.

Run as ``python -m surgery.bench.measure '<json settings>'``; prints one JSON object. A process per
measurement gives each its own thread pool, compile caches and peak memory (``ru_maxrss``), so measurements
cannot disturb each other. The prompt is seeded random token ids of length ``prompt_len`` (content does not
change the work done). Two decode loops (recorded per result as ``decode_loop``):

* ``torch`` and ``onnxruntime``: ``generate`` with greedy decoding of exactly ``new_tokens`` tokens and a
  streamer that timestamps every token: prefill = start of ``generate`` to the first new token (the prompt's
  forward pass and the first sampling step); decode = the median interval between later tokens (one forward
  with the KV cache each).
* ``torch-compile``: the lean static-cache loop of :mod:`surgery.bench.decode` (prefill once, then one compiled
  forward + argmax per token, no ``generate``): prefill = the prompt's forward and argmax; decode = the loop's
  time over its ``new_tokens - 1`` steps (one synchronization at its end, none per token).
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
    if settings["backend"] != "onnxruntime":
        ids = ids.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        if settings["backend"] == "torch-compile":
            timings, extra = _static_loop(model, ids, settings)
        else:
            timings, extra = _generate_loop(model, ids, settings)
    memory = (
        torch.cuda.max_memory_allocated() / 1e6
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: kilobytes
    )
    prefill, decode, totals = timings
    tokens = settings["batch"] * settings["new_tokens"]
    return {
        "prefill_ms": _spread(prefill),
        "decode_ms_per_token": _spread(decode),
        "tokens_per_s": statistics.median(tokens / total for total in totals),
        "peak_memory_mb": round(memory, 1),
        "memory_kind": "torch.cuda.max_memory_allocated" if device == "cuda" else "process peak RSS",
        "provider": settings.get("provider"),
        **extra,
    }


Timings = tuple[list[float], list[float], list[float]]  # prefill ms, decode ms/token, total s; one per repeat


def _generate_loop(model, ids, settings: dict[str, Any]) -> tuple[Timings, dict[str, Any]]:
    """``generate`` with a token-timestamping streamer (torch eager, ONNX Runtime)."""
    import torch

    from surgery.bench.decode import LOOP_GENERATE, LOOP_ORT

    new = settings["new_tokens"]
    options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    prefill, decode, totals = [], [], []
    for round_index in range(settings["warmup"] + settings["repeats"]):
        streamer = TimingStreamer()
        _sync(settings["device"])
        started = time.perf_counter()
        model.generate(**inputs, streamer=streamer, **options)
        _sync(settings["device"])
        finished = time.perf_counter()
        if round_index < settings["warmup"]:
            continue
        stamps = streamer.times[1:]  # times[0]: the prompt, put before any computation
        if len(stamps) != new:
            raise RuntimeError(f"expected {new} tokens, the streamer saw {len(stamps)}")
        prefill.append((stamps[0] - started) * 1e3)
        decode.append(statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1e3)
        totals.append(finished - started)
    loop = LOOP_ORT if settings["backend"] == "onnxruntime" else LOOP_GENERATE
    return (prefill, decode, totals), {"decode_loop": loop}


def _static_loop(model, ids, settings: dict[str, Any]) -> tuple[Timings, dict[str, Any]]:
    """The lean static-cache loop (:mod:`surgery.bench.decode`); its tokens are checked against eager ``generate``."""
    import torch

    from surgery.bench.decode import LOOP_STATIC, StaticDecoder

    new = settings["new_tokens"]
    decoder = StaticDecoder(model, batch=ids.shape[0], max_len=ids.shape[1] + new, device=settings["device"])
    prefill, decode, totals = [], [], []
    tokens = None
    for round_index in range(settings["warmup"] + settings["repeats"]):
        timed = decoder.generate(ids, new)
        tokens = timed.tokens
        if round_index < settings["warmup"]:
            continue
        prefill.append(timed.prefill_s * 1e3)
        decode.append(timed.decode_s / (new - 1) * 1e3)
        totals.append(timed.prefill_s + timed.decode_s)
    options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)[:, ids.shape[1] :]
    extra = {
        "decode_loop": LOOP_STATIC,
        "compile_mode": decoder.mode or "default",
        # compiled kernels may round differently from eager ones: recorded, not required
        "tokens_equal_generate": bool(tokens is not None and torch.equal(tokens.cpu(), reference.cpu())),
    }
    return (prefill, decode, totals), extra


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def main() -> None:
    settings = json.loads(sys.argv[1])
    try:
        result = measure(settings)
    except Exception as exc:  # noqa: BLE001 - reported as this measurement's failure, the run goes on
        result = {SKIP: f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
