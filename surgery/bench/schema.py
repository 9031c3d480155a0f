"""The shape of ``bench.json``, defined once: written by :mod:`surgery.bench.run`, read by the model card."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Spread(BaseModel):
    median: float
    min: float
    max: float


class BenchResult(BaseModel):
    """One model on one backend: measured, or ``skipped`` with the reason (``n/a: ...`` when not applicable)."""

    model_config = ConfigDict(extra="allow")

    model: str
    backend: str
    prefill_ms: Spread | None = None
    decode_ms_per_token: Spread | None = None
    tokens_per_s: float | None = None
    peak_memory_mb: float | None = None
    ratio_prefill: float | None = None  # the median of the per-round ratios to the first model (same backend)
    ratio_decode: float | None = None
    ratio_prefill_spread: Spread | None = None  # the per-round ratios' median, min and max
    ratio_decode_spread: Spread | None = None
    noisy: bool | None = None  # the rounds disagree (surgery.bench.stats.NOISE_RULE): not a ratio to publish as is
    noisy_ratios: list[str] | None = None  # which of ratio_prefill, ratio_decode disagree
    rounds: int | None = None  # rounds measured
    per_round: dict[str, list[float]] | None = None  # prefill_ms, decode_ms_per_token, ratio_*: one per round
    weight_bytes_per_token: int | None = None
    ratio_weight_bytes: float | None = None
    sequential_steps: int | None = None  # layer steps per token (a fused parallel block: one)
    ratio_steps: float | None = None
    bound_note: str | None = None  # why the bounds are missing (e.g. an export's checkpoint not found)
    decode_loop: str | None = None  # generate(), or the static-cache loop (torch-compile)
    compile_mode: str | None = None  # static-cache loop: torch.compile mode ("reduce-overhead" on a GPU)
    tokens_equal_generate: bool | None = None  # static-cache loop: its greedy tokens are eager generate()'s
    skipped: str | None = None


class BenchPayload(BaseModel):
    """``{"machine": {...}, "settings": {...}, "method": ..., "noise": {...}, "rounds": {...}, "noisy": ...,
    "results": [...]}``."""

    model_config = ConfigDict(extra="allow")

    machine: dict[str, Any]
    settings: dict[str, Any]
    results: list[BenchResult]
    noisy: bool | None = None  # any result noisy (files written before interleaved rounds: absent)
    noise: dict[str, Any] | None = None  # {"tolerance", "min_rounds", "rule"}
