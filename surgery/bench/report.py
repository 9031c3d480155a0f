"""The files of a ``surgery bench`` run: ``bench.json`` (the payload), ``bench.md`` (a table), ``bench.png``.

While a run measures, ``bench.partial.json`` holds the rounds measured so far (``"partial": "k of n rounds
measured"``); the
complete files replace it at the end, so a failed or interrupted run keeps what it measured and no file that
looks complete is written before the run is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery.fileio import atomic_write_json, atomic_write_text

FILES = {"json": "bench.json", "table": "bench.md", "plot": "bench.png"}
PARTIAL = "bench.partial.json"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _figure(spread: dict[str, float], digits: int) -> str:
    """``median (min–max)`` of a figure across rounds (the median alone when the rounds gave one value)."""
    text = f"{spread['median']:.{digits}f}"
    return text if spread["min"] == spread["max"] else f"{text} ({spread['min']:.{digits}f}–{spread['max']:.{digits}f})"


def ratio_cell(result: dict[str, Any], key: str) -> str:
    """A ratio with its per-round range, and ``noisy`` when the rounds disagree (:mod:`surgery.bench.stats`)."""
    value, spread = result.get(key), result.get(f"{key}_spread")
    if value is None or not spread or spread["min"] == spread["max"]:
        text = _ratio(value)
    else:
        text = f"{value:.2f}x ({spread['min']:.2f}–{spread['max']:.2f})"
    return text + (" noisy" if key in (result.get("noisy_ratios") or []) else "")


def table(payload: dict[str, Any]) -> str:
    """Markdown: one row per model x backend, figures as median (min–max) over rounds, ratios to the first model on
    the same backend as the median (range) of per-round ratios, marked noisy when the rounds disagree."""
    rows = []
    not_applicable = []
    for result in payload["results"]:
        name = Path(result["model"]).name
        if result.get("skipped", "").startswith("n/a: "):
            not_applicable.append(f"{name} on {result['backend']}")
            continue
        bound = [_ratio(result.get("ratio_weight_bytes")), _ratio(result.get("ratio_steps"))]
        if "skipped" in result:
            rows.append([name, result["backend"], "-", "-", "-", "-", "-", *bound, result["skipped"]])
            continue
        rows.append(
            [
                name,
                result["backend"] + (f" ({result['provider']})" if result.get("provider") else ""),
                _figure(result["prefill_ms"], 1),
                _figure(result["decode_ms_per_token"], 2),
                f"{result['tokens_per_s']:.1f}",
                ratio_cell(result, "ratio_prefill"),
                ratio_cell(result, "ratio_decode"),
                *bound,
                f"{result['peak_memory_mb']:.0f} MB",
            ]
        )
    headers = [
        "model",
        "backend",
        "prefill ms",
        "decode ms/token",
        "tokens/s",
        "prefill ratio",
        "decode ratio",
        "weight bytes ratio",
        "steps ratio",
        "peak memory / note",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += _notes(payload, not_applicable)
    return "\n".join(lines)


def _notes(payload: dict[str, Any], not_applicable: list[str]) -> list[str]:
    """The lines under the table: rounds and noise, bounds explained, decode loop per backend, missing bounds,
    n/a models."""
    results = payload["results"]
    lines = [""]
    rounds = payload.get("rounds")
    if rounds:
        lines.append(
            f"Times: median (min–max) over {rounds['count']} interleaved rounds (every model once per round, the "
            f"order rotated and reversed between rounds) after {rounds['warmup']} warm-up round(s); a ratio is the "
            "median (range) of the per-round ratios."
        )
    noisy = [f"{Path(r['model']).name} on {r['backend']}" for r in results if r.get("noisy")]
    if noisy:
        rule = payload.get("noise", {}).get("rule", "the rounds disagree")
        lines.append(
            f"**Noisy: {', '.join(noisy)}.** {rule[:1].upper() + rule[1:]}. A noisy ratio does not reproduce on "
            "this machine now: measure again on a quiet machine, or with more --repeats."
        )
    lines += [
        "Bounds per decoded token, as ratios to the first model: weight bytes read (what bandwidth-bound decode "
        "follows) and sequential steps (what launch-bound decode follows; a fused parallel block is one step).",
    ]
    loops = {r["backend"]: r["decode_loop"] for r in results if r.get("decode_loop")}
    if loops:
        lines.append("Decode loop: " + "; ".join(f"{backend}: {loop}" for backend, loop in loops.items()) + ".")
    missing = {Path(r["model"]).name: r["bound_note"] for r in results if r.get("bound_note")}
    lines += [f"{name}: {note}." for name, note in missing.items()]
    if not_applicable:
        lines.append(f"Not applicable (checkpoint vs ONNX folder): {', '.join(not_applicable)}.")
    return lines


def plot(payload: dict[str, Any], path: Path) -> bool:
    """Bars of decode and prefill ratios per variant and backend (False when matplotlib is not installed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = [r for r in payload["results"] if "skipped" not in r]
    if not measured:
        return False
    backends = list(dict.fromkeys(r["backend"] for r in measured))
    models = list(dict.fromkeys(r["model"] for r in measured))
    fig, axes = plt.subplots(1, 2, figsize=(min(14, max(7, 0.8 * len(models) * len(backends))), 4.2), sharey=True)
    width = 0.8 / len(backends)
    for axis, (key, title) in zip(axes, (("ratio_prefill", "prefill"), ("ratio_decode", "decode per token"))):
        for offset, backend in enumerate(backends):
            rows = [next((r for r in measured if r["model"] == m and r["backend"] == backend), {}) for m in models]
            values = [row.get(key) or 0 for row in rows]
            spreads = [row.get(f"{key}_spread") or {"min": v, "max": v} for row, v in zip(rows, values)]
            low = [v - s["min"] if v else 0 for v, s in zip(values, spreads)]
            high = [s["max"] - v if v else 0 for v, s in zip(values, spreads)]
            xs = [i + offset * width for i in range(len(models))]
            bars = axis.bar(xs, values, width, label=backend, yerr=[low, high], capsize=3)
            for bar, value, row in zip(bars, values, rows):
                if value:
                    axis.annotate(
                        f"{value:.2f}x" + (" noisy" if key in (row.get("noisy_ratios") or []) else ""),
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        axis.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
        axis.set_xticks([i + width * (len(backends) - 1) / 2 for i in range(len(models))])
        axis.set_xticklabels([Path(m).name for m in models], rotation=20, ha="right")
        axis.set_title(f"{title} latency / first model (bars: range over rounds)")
    axes[0].set_ylabel("ratio (lower is faster)")
    axes[1].legend(fontsize=8)
    info = payload["machine"]
    settings = payload["settings"]
    fig.suptitle(
        f"{info['cpu']} ({info['threads']} threads, {info['device']}), prompt {settings['prompt_len']}, "
        f"{settings['new_tokens']} new tokens, batch {settings['batch']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_partial(payload: dict[str, Any], out_dir: Path, progress: str) -> None:
    """``bench.partial.json``: the results measured so far, marked partial (``progress``, e.g. ``"2 of 5 rounds
    measured"``; see the module docstring)."""
    atomic_write_json(Path(out_dir) / PARTIAL, {"partial": progress, **payload})


def write_report(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the three files, then remove ``bench.partial.json``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / FILES["json"], payload)
    info = payload["machine"]
    header = (
        f"Measured by `surgery bench` on {info['cpu']}, {info['threads']} threads, device {info['device']}"
        f"{' (' + info['gpu'] + ')' if info.get('gpu') else ''}; versions "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        + ". Ratios are to the first model on the same backend, measured in the same run.\n\n"
    )
    atomic_write_text(out_dir / FILES["table"], header + table(payload) + "\n")
    written = [out_dir / FILES["json"], out_dir / FILES["table"]]
    if plot(payload, out_dir / FILES["plot"]):
        written.append(out_dir / FILES["plot"])
    (out_dir / PARTIAL).unlink(missing_ok=True)
    return written
