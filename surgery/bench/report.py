"""The files of a ``surgery bench`` run: ``bench.json`` (the payload), ``bench.md`` (a table), ``bench.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery.fileio import atomic_write_json, atomic_write_text

FILES = {"json": "bench.json", "table": "bench.md", "plot": "bench.png"}


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(payload: dict[str, Any]) -> str:
    """Markdown: one row per model x backend, ratios to the first model on the same backend."""
    rows = []
    not_applicable = []
    for result in payload["results"]:
        name = Path(result["model"]).name
        if result.get("skipped", "").startswith("n/a: "):
            not_applicable.append(f"{name} on {result['backend']}")
            continue
        bound = _ratio(result.get("ratio_weight_bytes"))
        if "skipped" in result:
            rows.append([name, result["backend"], "-", "-", "-", "-", "-", bound, result["skipped"]])
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
                bound,
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
        "peak memory / note",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if not_applicable:
        lines += ["", f"Not applicable (checkpoint vs ONNX folder): {', '.join(not_applicable)}."]
    return "\n".join(lines)


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


def write_report(payload: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the three files; returns the paths written."""
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
    return written
