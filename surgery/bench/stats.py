"""The arithmetic of interleaved rounds: the order models are measured in, spreads, per-round ratios, noise.

``surgery bench`` measures the models of one backend round by round: every model once per round, in an order
that changes between rounds (:func:`round_order`), so a burst of load on the machine lands on a round, not on a
model. A ratio is computed per round (a variant's time over the first model's time in the same round); the
headline is the median of those ratios, and the rounds' range shows whether it can be trusted: a result is
``noisy`` when, for its prefill or decode ratio, the per-round ratios range beyond ``±NOISE_TOLERANCE`` of their
median, or when fewer than ``MIN_ROUNDS`` rounds were measured (agreement could not be checked).
"""

from __future__ import annotations

import statistics
from typing import Any

NOISE_TOLERANCE = 0.10
MIN_ROUNDS = 2
FIGURES = (("ratio_prefill", "prefill_ms"), ("ratio_decode", "decode_ms_per_token"))
NOISE_RULE = (
    f"a result is noisy when, for its prefill or decode ratio, the per-round ratios (a variant's time over the "
    f"first model's in the same round) fall outside ±{NOISE_TOLERANCE:.0%} of their median, or when fewer than "
    f"{MIN_ROUNDS} rounds were measured; the first model's own ratio is 1 in every round"
)


def round_order(count: int, round_index: int) -> list[int]:
    """Positions ``0..count-1`` in the order of round ``round_index``: round pairs rotate by one, and the second
    round of a pair is the first reversed (``0 1 2``, ``2 1 0``, ``1 2 0``, ``0 2 1``, ...), so every model is
    measured in every round, and each is first, last and after each neighbour in some round."""
    shift = (round_index // 2) % count if count else 0
    order = list(range(shift, count)) + list(range(shift))
    return order[::-1] if round_index % 2 else order


def spread(values: list[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of ``values`` (at least one)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def disagrees(values: list[float], tolerance: float = NOISE_TOLERANCE) -> bool:
    """Whether ``values`` (one per round) range beyond ``±tolerance`` of their median, or are too few to tell."""
    if len(values) < MIN_ROUNDS:
        return True
    middle = statistics.median(values)
    return min(values) < middle * (1 - tolerance) or max(values) > middle * (1 + tolerance)


def summarize(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """A row's figures from its rounds (each ``{"prefill_ms", "decode_ms_per_token", "tokens_per_s"}``)."""
    per_round = {key: [r[key] for r in rounds] for key in ("prefill_ms", "decode_ms_per_token", "tokens_per_s")}
    return {
        "prefill_ms": spread(per_round["prefill_ms"]),
        "decode_ms_per_token": spread(per_round["decode_ms_per_token"]),
        "tokens_per_s": statistics.median(per_round["tokens_per_s"]),
        "rounds": len(rounds),
        "per_round": {"prefill_ms": per_round["prefill_ms"], "decode_ms_per_token": per_round["decode_ms_per_token"]},
    }


def add_ratios(results: list[dict[str, Any]], tolerance: float = NOISE_TOLERANCE) -> None:
    """Each measured result's ratios to the first measured model on the same backend, round by round.

    ``ratio_prefill`` / ``ratio_decode``: the median of the per-round ratios (rounds both rows measured);
    ``ratio_*_spread``: their median, min and max; ``noisy`` / ``noisy_ratios``: the rule of the module docstring.
    A row without per-round values (one figure per row) is compared by its medians, one "round". The bounds
    (``ratio_weight_bytes``, ``ratio_steps``) are plain quotients: they are counted, not timed.
    """
    first: dict[str, dict[str, Any]] = {}
    for result in results:
        if "skipped" in result:
            continue
        base = first.setdefault(result["backend"], result)
        noisy = []
        for key, metric in FIGURES:
            mine, theirs = _rounds(result, metric), _rounds(base, metric)
            ratios = [a / b for a, b in zip(mine, theirs)]
            result[key] = statistics.median(ratios)
            result[f"{key}_spread"] = spread(ratios)
            result.setdefault("per_round", {})[key] = ratios
            if result is not base and disagrees(ratios, tolerance):
                noisy.append(key)
        result["noisy"], result["noisy_ratios"] = bool(noisy), noisy
        for key, metric in (("ratio_weight_bytes", "weight_bytes_per_token"), ("ratio_steps", "sequential_steps")):
            if result.get(metric) and base.get(metric):
                result[key] = result[metric] / base[metric]


def _rounds(result: dict[str, Any], metric: str) -> list[float]:
    values = result.get("per_round", {}).get(metric)
    return list(values) if values else [result[metric]["median"]]
