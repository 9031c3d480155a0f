"""The files of a ``surgery bench`` run: ``bench.json`` (the payload), ``bench.md`` (a table), ``bench.png``.

While a run measures, ``bench.partial.json`` holds the results so far (``"partial": "k of n measured"``); the
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


def table(payload: dict[str, Any]) -> str:
    """Markdown: one row per model x backend, ratios to the first model on the same backend, beside the bounds."""
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
                f"{result['prefill_ms']['median']:.1f}",
                f"{result['decode_ms_per_token']['median']:.2f}",
                f"{result['tokens_per_s']:.1f}",
                _ratio(result.get("ratio_prefill")),
                _ratio(result.get("ratio_decode")),
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
    lines += _notes(payload["results"], not_applicable)
    return "\n".join(lines)


def _notes(results: list[dict[str, Any]], not_applicable: list[str]) -> list[str]:
    """The lines under the table: bounds explained, decode loop per backend, missing bounds, n/a models."""
    lines = [
        "",
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
            values = [
                next((r.get(key) for r in measured if r["model"] == m and r["backend"] == backend), 0) for m in models
            ]
            xs = [i + offset * width for i in range(len(models))]
            bars = axis.bar(xs, values, width, label=backend)
            for bar, value in zip(bars, values):
                if value:
                    axis.annotate(
                        f"{value:.2f}x",
                        (bar.get_x() + bar.get_width() / 2, value),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        axis.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
        axis.set_xticks([i + width * (len(backends) - 1) / 2 for i in range(len(models))])
        axis.set_xticklabels([Path(m).name for m in models], rotation=20, ha="right")
        axis.set_title(f"{title} latency / first model")
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


def write_partial(payload: dict[str, Any], out_dir: Path, total: int) -> None:
    """``bench.partial.json``: the results measured so far, marked partial (see the module docstring)."""
    done = len(payload["results"])
    atomic_write_json(Path(out_dir) / PARTIAL, {"partial": f"{done} of {total} measured", **payload})


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
