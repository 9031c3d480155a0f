"""How long a user waits for an error: argument errors (target <= 2 s) and no-network errors (target <= 10 s).

Each command is run as a subprocess of the installed CLI, from a scratch directory, 3 times; the median wall time
is reported. The no-network cases point ``HF_ENDPOINT`` at a closed port on this machine and unset
``HF_HUB_OFFLINE``, which is what a machine without a network looks like to the libraries (connection refused),
and start with an empty Hugging Face cache so nothing can come from it.

    python benchmarks/error_latency.py            # writes benchmarks/results/error_latency.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from display import display_command

HERE = Path(__file__).resolve().parent
ARGUMENT_TARGET_S, OFFLINE_TARGET_S = 2.0, 10.0


def tiny_model(root: Path) -> Path:
    """A tiny random Llama checkpoint (no tokenizer needed: every case fails before loading it)."""
    code = (
        "import sys; from transformers import LlamaConfig, LlamaForCausalLM; "
        "LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, "
        "num_attention_heads=4, num_key_value_heads=2)).save_pretrained(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(root / "tiny")], check=True)
    return root / "tiny"


def cases(model: Path, scratch: Path) -> list[tuple[str, list[str]]]:
    bad_yaml = scratch / "bad.yaml"
    bad_yaml.write_text("ops:\n  - {op: loop, layers: 1-2, loops: 2.5}\n")
    return [
        ("argument", ["apply", "--plan", "loop:0-3x1000000000", str(model), "out"]),
        ("argument", ["apply", "--plan", str(bad_yaml), str(model), "out"]),
        ("argument", ["apply", "--shard-size", "nan", "--plan", "skip:1", str(model), "out"]),
        ("argument", ["similarity", str(model), "--data-dir", "nowhere"]),
        ("argument", ["similarity", str(model), "--limit", "0"]),
        ("argument", ["eval", str(model), "--tasks", "mmlu"]),
        ("argument", ["eval", str(model), "--data-dir", "nowhere"]),
        ("argument", ["eval", str(model), "--output", "/proc/results.json"]),
        ("argument", ["glue", str(model), "--tasks", "mnli"]),
        ("argument", ["glue", "./missing-model", "--tasks", "rte"]),
        ("no network", ["apply", "--plan", "skip:1", "org/some-model", "out"]),
        ("no network", ["similarity", str(model), "--limit", "5"]),
        ("no network", ["eval", str(model), "--tasks", "arc_easy"]),
        ("no network", ["eval", "org/some-model", "--tasks", "lambada_openai"]),
        ("no network", ["glue", "org/some-model", "--tasks", "rte"]),
    ]


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    last = (result.stderr.strip().splitlines() or [""])[-1]
    if result.returncode != 2 or not last.startswith("error: "):
        sys.exit(f"expected one error line and exit 2 from {argv}, got {result.returncode}: {result.stderr}")
    return seconds, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "error_latency.md")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="error-latency-"))
    model = tiny_model(scratch)
    cli = [str(Path(sys.executable).parent / "surgery")]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(scratch / "hf-home"), PYTHONWARNINGS="ignore")
    rows = []
    for kind, argv in cases(model, scratch):
        runs = [timed(cli + argv, scratch, env) for _ in range(args.repeats)]
        median = statistics.median(seconds for seconds, _ in runs)
        target = ARGUMENT_TARGET_S if kind == "argument" else OFFLINE_TARGET_S
        shown = display_command(["surgery", *(arg.replace(str(scratch), "$SCRATCH") for arg in argv)])
        rows.append((kind, shown, median, target, runs[0][1].replace(str(scratch), "$SCRATCH")))
        print(f"{median:6.2f} s  {'ok ' if median <= target else 'SLOW'}  {shown}", flush=True)
    lines = [
        "# Time to an error (`benchmarks/error_latency.py`)",
        "",
        f"- machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}; median of {args.repeats} runs each",
        "- no network: `HF_ENDPOINT=http://127.0.0.1:9` (connection refused), `HF_HUB_OFFLINE` unset, empty HF cache",
        f"- targets: argument errors <= {ARGUMENT_TARGET_S:g} s, no-network errors <= {OFFLINE_TARGET_S:g} s",
        "",
        "| kind | command | median (s) | target met | error line |",
        "|---|---|---|---|---|",
    ]
    for kind, shown, median, target, last in rows:
        lines.append(f"| {kind} | `{shown}` | {median:.2f} | {'yes' if median <= target else 'no'} | {last[:110]} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
