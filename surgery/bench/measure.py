"""One model on one backend, in a process of its own, measured round by round.

Run as ``python -m surgery.bench.measure '<json settings>'`` (the worker :mod:`surgery.bench.worker` starts):
it loads the model and answers ``ready``, then answers each ``round`` read from stdin with one timed generation
and ``finish`` with the row's once-only record; each answer is one line, ``@bench`` and a JSON object. The
parent interleaves the rounds of every model of a backend (:mod:`surgery.bench.run`). A process per model gives
each its own thread pool, compile caches and peak memory (``ru_maxrss``), so the models cannot disturb each
other, and it stays warm between its rounds. The prompt is seeded random token ids of length ``prompt_len``
(content does not change the work done). Two decode loops (recorded per result as ``decode_loop``):

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
MARK = "@bench "  # the prefix of the worker's answers (anything else on stdout is not one)
NOT_APPLICABLE = "n/a: "  # the model's format is not this backend's (as opposed to a backend that cannot run)


class TimingStreamer:
    """A ``generate`` streamer that only records when each token (and first, the prompt) arrives."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:  # noqa: ARG002 - the streamer protocol
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


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
    from surgery.architectures.loading import load_model

    model = load_model(str(model_dir), dtype=settings["dtype"], trust_remote_code=settings["trust_remote_code"])
    model.to(device)
    return model, None


class Session:
    """One model loaded for one backend, measured one round at a time (:meth:`round`), then :meth:`finish`."""

    def __init__(self, settings: dict[str, Any]):
        import torch

        torch.set_num_threads(settings["threads"])
        self.settings = settings
        self.model, self.skipped = _load(settings)
        self.tokens = None
        if self.model is None:
            return
        self.device = settings["device"]
        vocab = int(self.model.config.vocab_size)
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (settings["batch"], settings["prompt_len"]), generator=generator)
        self.ids = ids if settings["backend"] == "onnxruntime" else ids.to(self.device)
        self.static = settings["backend"] == "torch-compile"
        if self.static:
            from surgery.bench.decode import StaticDecoder

            self.decoder = StaticDecoder(
                self.model, batch=ids.shape[0], max_len=ids.shape[1] + settings["new_tokens"], device=self.device
            )
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def round(self) -> dict[str, float]:
        """One greedy generation: ``{"prefill_ms", "decode_ms_per_token", "tokens_per_s"}``."""
        import torch

        with torch.inference_mode():
            prefill_s, decode_ms, total_s = self._static_round() if self.static else self._generate_round()
        tokens = self.settings["batch"] * self.settings["new_tokens"]
        return {"prefill_ms": prefill_s * 1e3, "decode_ms_per_token": decode_ms, "tokens_per_s": tokens / total_s}

    def _generate_round(self) -> tuple[float, float, float]:
        """``generate`` with a token-timestamping streamer (torch eager, ONNX Runtime)."""
        import torch

        new = self.settings["new_tokens"]
        options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
        streamer = TimingStreamer()
        _sync(self.device)
        started = time.perf_counter()
        self.model.generate(input_ids=self.ids, attention_mask=torch.ones_like(self.ids), streamer=streamer, **options)
        _sync(self.device)
        finished = time.perf_counter()
        stamps = streamer.times[1:]  # times[0]: the prompt, put before any computation
        if len(stamps) != new:
            raise RuntimeError(f"expected {new} tokens, the streamer saw {len(stamps)}")
        decode = statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1e3
        return stamps[0] - started, decode, finished - started

    def _static_round(self) -> tuple[float, float, float]:
        """The lean static-cache loop (:mod:`surgery.bench.decode`)."""
        new = self.settings["new_tokens"]
        timed = self.decoder.generate(self.ids, new)
        self.tokens = timed.tokens
        return timed.prefill_s, timed.decode_s / (new - 1) * 1e3, timed.prefill_s + timed.decode_s

    def finish(self) -> dict[str, Any]:
        """What is recorded once per row: peak memory, the decode loop, provider, compile checks."""
        import torch

        from surgery.bench.decode import LOOP_GENERATE, LOOP_ORT, LOOP_STATIC

        memory = (
            torch.cuda.max_memory_allocated() / 1e6
            if self.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # Linux: kilobytes
        )
        extra: dict[str, Any] = {
            "peak_memory_mb": round(memory, 1),
            "memory_kind": "torch.cuda.max_memory_allocated" if self.device == "cuda" else "process peak RSS",
            "provider": self.settings.get("provider"),
            "decode_loop": LOOP_ORT if self.settings["backend"] == "onnxruntime" else LOOP_GENERATE,
        }
        if self.static:
            new = self.settings["new_tokens"]
            options = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "pad_token_id": 0}
            with torch.inference_mode():
                reference = self.model.generate(
                    input_ids=self.ids, attention_mask=torch.ones_like(self.ids), **options
                )[:, self.ids.shape[1] :]
            extra["decode_loop"] = LOOP_STATIC
            extra["compile_mode"] = self.decoder.mode or "default"
            # compiled kernels may round differently from eager ones: recorded, not required
            extra["tokens_equal_generate"] = bool(
                self.tokens is not None and torch.equal(self.tokens.cpu(), reference.cpu())
            )
        return extra


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """One model on one backend in this process: ``warmup`` then ``repeats`` rounds, summarized (no ratios)."""
    from surgery.bench.stats import summarize

    session = Session(settings)
    if session.model is None:
        return {SKIP: session.skipped}
    for _ in range(settings["warmup"]):
        session.round()
    rounds = [session.round() for _ in range(settings["repeats"])]
    return {**summarize(rounds), **session.finish()}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _failure(exc: BaseException) -> dict[str, str]:
    return {SKIP: f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}


def _say(payload: dict[str, Any]) -> None:
    print(MARK + json.dumps(payload), flush=True)


def main() -> None:
    """The worker: load (answer ``ready`` or ``skipped``), then one answer per command read from stdin:
    ``round`` (one timed generation) or ``finish`` (the row's once-only record, then exit)."""
    settings = json.loads(sys.argv[1])
    try:
        session = Session(settings)
    except Exception as exc:  # noqa: BLE001 - reported as this row's failure, the run goes on
        _say(_failure(exc))
        return
    if session.model is None:
        _say({SKIP: session.skipped})
        return
    _say({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "round":
                _say(session.round())
            elif command == "finish":
                _say(session.finish())
                return
            else:
                _say({SKIP: f"failed: unknown command {command!r}"})
                return
        except Exception as exc:  # noqa: BLE001
            _say(_failure(exc))
            return


if __name__ == "__main__":
    main()
