"""Do `surgery bench` ratios depend on the order of the models? Two runs, A B and B A, compared (issue 21 item 1).

Runs `surgery bench A B` and `surgery bench B A` (interleaved rounds, one warm process per model) and compares
B's ratio to A from the first run with the inverse of A's ratio to B from the second: on a quiet machine they
agree within 10 %. Writes benchmarks/results/bench_order/{ab,ba}/bench.json and bench_order.md (both runs'
ratios with their per-round ranges and noisy flags, their agreement, and the machine's load average around
each run: a loaded machine is what the noisy flag is for). Defaults: the SmolLM2-135M full model and
`skip:13-19` that benchmarks/bench_smollm2.py prepares.

    python benchmarks/bench_order.py [A B] [--repeats 5] [--prompt-len 128] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "bench-smollm2"


def shown(path: str) -> str:
    """Relative to the repository when inside it: results record no machine paths."""
    full = Path(path).resolve()
    return str(full.relative_to(HERE.parent)) if full.is_relative_to(HERE.parent) else str(full)


def bench(models: list[str], out: Path, args: argparse.Namespace) -> tuple[dict, float, tuple, tuple]:
    before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "surgery.cli", "bench", *models, "--out", shown(str(out)),
         "--repeats", str(args.repeats), "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens)],
        check=True, cwd=HERE.parent,
    )  # fmt: skip
    return json.loads((out / "bench.json").read_text()), time.perf_counter() - started, before, os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=[str(WORK / "full"), str(WORK / "skip13-19")])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_order")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()

    a, b = (shown(model) for model in args.models)
    ab, ab_s, ab_before, ab_after = bench([a, b], args.out / "ab", args)
    ba, ba_s, ba_before, ba_after = bench([b, a], args.out / "ba", args)
    lines = [
        "# `surgery bench` in both orders",
        "",
        f"`python benchmarks/bench_order.py` — A = `{Path(a).name}`, B = `{Path(b).name}`; {args.repeats} rounds, "
        f"prompt {args.prompt_len}, {args.new_tokens} new tokens; {ab['machine']['cpu']}, "
        f"{ab['machine']['threads']} threads.",
        "",
        "| ratio B / A | run A B: median (range) | noisy | run B A: 1 / median (range) | noisy | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in (("ratio_prefill", "prefill"), ("ratio_decode", "decode")):
        first, second = ab["results"][1], ba["results"][1]  # B against A; A against B
        forward, spread = first[key], first[f"{key}_spread"]
        backward, back = 1 / second[key], second[f"{key}_spread"]
        agreement = abs(forward / backward - 1)
        lines.append(
            f"| {label} | {forward:.3f} ({spread['min']:.3f}–{spread['max']:.3f}) | {key in first['noisy_ratios']} "
            f"| {backward:.3f} ({1 / back['max']:.3f}–{1 / back['min']:.3f}) | {key in second['noisy_ratios']} "
            f"| {agreement:.1%} |"
        )
    lines += [
        "",
        f"Run A B: {ab_s:.0f} s, load average {ab_before[0]:.2f} before, {ab_after[0]:.2f} after. "
        f"Run B A: {ba_s:.0f} s, load average {ba_before[0]:.2f} before, {ba_after[0]:.2f} after "
        f"({os.cpu_count()} cores).",
        "",
    ]
    (args.out / "bench_order.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
