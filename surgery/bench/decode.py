"""The lean decode loop of ``surgery bench --backend torch-compile``: static KV cache, compiled one-token step.

What a deployment's per-token cost looks like, the way gpt-fast and transformers' own export utilities decode:
a :class:`transformers.StaticCache` sized once (``prompt + new tokens``), one prefill forward, then one call per
new token of a compiled function that runs the model's forward on the last token and takes the greedy argmax.
No ``generate`` machinery (logits processors, stopping criteria, streamers, input preparation) runs per step.
On a GPU the step is compiled with ``mode="reduce-overhead"`` (CUDA graphs: one replay per token); on a CPU
with the default mode (inductor code, no graphs: CUDA graphs need CUDA). Greedy and batch-wide: the tokens are
those of ``model.generate(do_sample=False)`` with the same prompt (tested with compilation disabled).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

LOOP_GENERATE = "generate: transformers generate() with its default dynamic KV cache, eager"
LOOP_STATIC = "static-cache loop: StaticCache, prefill once, then one compiled forward + argmax per token"
LOOP_ORT = "generate: optimum ORTModelForCausalLM.generate() (ONNX Runtime session per step)"


def compile_mode(device: str) -> str | None:
    """``torch.compile`` mode of the decode step on ``device``: CUDA graphs on a GPU, the default on a CPU."""
    return "reduce-overhead" if device == "cuda" else None


@dataclass
class Timed:
    """One greedy generation: the new tokens ``[batch, new]`` and its prefill / decode wall times (seconds)."""

    tokens: torch.Tensor
    prefill_s: float
    decode_s: float


class StaticDecoder:
    """Greedy decoding of ``model`` with a static KV cache and a (compiled) one-token step.

    ``compile=False`` runs the same loop uncompiled (what the tests compare with ``generate``).
    """

    def __init__(self, model, *, batch: int, max_len: int, device: str, compile: bool = True):
        from transformers import StaticCache

        self.model = model
        self.device = device
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mode = compile_mode(device) if compile else None
        self.compiled = compile
        self.step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = (
            torch.compile(self._step, mode=self.mode) if compile else self._step
        )

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        output = self.model(
            input_ids=ids, cache_position=positions, past_key_values=self.cache, use_cache=True, logits_to_keep=1
        )
        return output.logits[:, -1].argmax(dim=-1, keepdim=True)

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self._forward(token, position)

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def generate(self, ids: torch.Tensor, new_tokens: int) -> Timed:
        """Prefill ``ids`` ``[batch, prompt]``, then ``new_tokens - 1`` one-token steps; every token greedy."""
        prompt = ids.shape[1]
        positions = [torch.tensor([prompt + i], device=ids.device) for i in range(new_tokens - 1)]
        self.cache.reset()
        self._sync()
        started = time.perf_counter()
        token = self._forward(ids, torch.arange(prompt, device=ids.device))  # prefill: eager, once per round
        self._sync()
        prefilled = time.perf_counter()
        tokens = [token]
        for position in positions:
            if self.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()
            token = self.step(token, position).clone()  # CUDA graphs reuse their output buffer
            tokens.append(token)
        self._sync()
        finished = time.perf_counter()
        return Timed(torch.cat(tokens, dim=1), prefilled - started, finished - prefilled)
