"""SmolLM2-135M variants on this machine's CPU: `surgery bench` over torch, torch-compile and ONNX Runtime.

Prepares (once, in benchmarks/_work/bench-smollm2/) the full model, `skip:13-19` and `parallel:13-19` with
`surgery apply` from the demo GGUF, and ONNX exports of the full model and the skip variant with
`surgery export onnx`; then runs `surgery bench` with the settings below and writes
benchmarks/results/bench_smollm2/{bench.json,bench.md,bench.png}.

    python benchmarks/bench_smollm2.py [--repeats 5] [--prompt-len 128] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = {"full": "identity", "skip13-19": "skip:13-19", "parallel13-19": "parallel:13-19"}
EXPORTS = ("full", "skip13-19")


def surgery(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "surgery.cli", *args], check=True, cwd=HERE.parent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=HERE / "_work" / "bench-smollm2")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bench_smollm2")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--backends", default="torch,torch-compile,onnxruntime")
    args = parser.parse_args()
    work = args.work_dir
    for name, plan in VARIANTS.items():
        if not (work / name / "config.json").is_file():
            surgery("apply", "-q", "--overwrite", "--plan", plan, "smollm2-demo", str(work / name))
    for name in EXPORTS:
        if not (work / f"onnx-{name}" / "model.onnx").is_file():
            surgery("export", "onnx", "--overwrite", str(work / name), str(work / f"onnx-{name}"))

    def shown(path: Path) -> str:  # relative to the repository when inside it: results record no machine paths
        return str(path.resolve().relative_to(HERE.parent)) if path.resolve().is_relative_to(HERE.parent) else str(path)

    models = [shown(work / name) for name in VARIANTS] + [shown(work / f"onnx-{name}") for name in EXPORTS]
    surgery(
        "bench", *models, "--backend", args.backends, "--prompt-len", str(args.prompt_len),
        "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats), "--out", str(args.out),
    )  # fmt: skip


if __name__ == "__main__":
    main()
