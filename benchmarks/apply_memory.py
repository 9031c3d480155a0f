"""Run: python benchmarks/apply_memory.py [--repeats 3] [--plan skip:8-14] [--work-dir DIR] [--plot]

Benchmarks ``surgery apply``'s streaming materialization on a random TinyLlama-1.1B-shaped bf16 checkpoint
(generated once into the work dir, one shard in memory at a time): wall time and peak RSS of the CLI
subprocess (GNU ``time``/``os.wait4``) against ``cp`` of the same data and the Python+torch+transformers
import floor. Results go to stdout and ``benchmarks/results/apply_memory.md`` (+ a PNG with ``--plot`` when
matplotlib is installed). Page cache cannot be dropped, so every command gets one warm-up run first.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
NUM_SHARDS = 5
LARGEST_TENSOR = 32000 * 2048 * 2  # embed_tokens / lm_head in bf16
RSS_SLACK = 300 * 10**6
TIME_TARGET = 1.3
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
              num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
              tie_word_embeddings=False, torch_dtype="bfloat16")


def llama_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a LlamaForCausalLM state dict, in save order, without building the model."""
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
             "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
             "mlp.down_proj": (h, inter), "input_layernorm": (h,), "post_attention_layernorm": (h,)}
    layers = [(f"model.layers.{i}.{key}.weight", shape) for i in range(c["num_hidden_layers"])
              for key, shape in layer.items()]
    return [("model.embed_tokens.weight", (vocab, h)), *layers, ("model.norm.weight", (h,)),
            ("lm_head.weight", (vocab, h))]


def make_checkpoint(src: Path) -> None:
    """Write the random checkpoint into ``src`` unless a complete one is already there."""
    if (src / ".complete").is_file():
        return
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    print(f"generating random TinyLlama-shaped checkpoint in {src} ...", flush=True)
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    specs = llama_tensors(CONFIG)
    total, offset = sum(2 * math.prod(shape) for _, shape in specs), 0
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(NUM_SHARDS)]
    for name, shape in specs:  # contiguous runs of ~total/NUM_SHARDS bytes each
        groups[min(NUM_SHARDS - 1, offset * NUM_SHARDS // total)].append((name, shape))
        offset += 2 * math.prod(shape)
    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{NUM_SHARDS:05d}.safetensors"
        bf16 = torch.bfloat16
        shard = {key: torch.ones(shape, dtype=bf16) if len(shape) == 1
                 else torch.randn(shape, generator=gen, dtype=bf16).mul_(0.02) for key, shape in group}
        save_file(shard, str(src / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    LlamaConfig(**CONFIG).save_pretrained(src)
    (src / ".complete").write_text("ok\n")


@dataclass
class Run:
    wall: float  # seconds
    rss: int  # peak RSS, bytes
    cpu: float  # user + sys seconds


def run_once(cmd: list[str]) -> Run:
    """Run ``cmd`` once. Peak RSS comes from GNU time when present, else from ``os.wait4`` (which reports at
    least this parent's RSS: exec records the forked mm's high-water mark, hence the light parent)."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss_file:
        timed = os.access("/usr/bin/time", os.X_OK)
        timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] if timed else []
        start = time.perf_counter()
        proc = subprocess.Popen(timer + cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()}")
        rss_kb = int(rss_file.read().split()[-1]) if timer else usage.ru_maxrss
    return Run(wall, rss_kb * 1024, usage.ru_utime + usage.ru_stime)


def bench(cmd: list[str], repeats: int, cleanup: Path | None = None, mkdir: bool = False) -> list[Run]:
    """One warm-up, then ``repeats`` timed runs; ``cleanup`` is removed (and synced) before each run."""
    runs: list[Run] = []
    for _ in range(repeats + 1):
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
            if mkdir:
                cleanup.mkdir(parents=True)
        os.sync()  # start every run with no dirty pages from the previous one
        runs.append(run_once(cmd))
    return runs[1:]


def shell(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def stat(runs: list[Run], key: str, how: Callable[[Iterable[float]], float] = statistics.median) -> float:
    return how(getattr(r, key) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plan", default="skip:8-14", help="surgery plan (default skips 7 of 22 layers)")
    parser.add_argument("--work-dir", type=Path, default=HERE / "_work")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--plot", action="store_true", help="also write apply_memory.png (needs matplotlib)")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work: Path = args.work_dir.resolve()
    src, out, copy_dir = work / "tinyllama-random", work / "out", work / "cp-out"
    if args.generate_only:
        return make_checkpoint(src)
    # generate in a child: this parent must not import torch (exec'd children inherit its RSS high-water mark)
    subprocess.run([sys.executable, __file__, "--work-dir", str(work), "--generate-only"], check=True)
    shards = sorted(src.glob("*.safetensors"))
    src_bytes = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    shard_bytes = sum(p.stat().st_size for p in shards)
    cli = shutil.which("surgery", path=str(Path(sys.executable).parent))
    apply_cmd = [*([cli] if cli else [sys.executable, "-m", "surgery.cli"]),
                 "apply", "--quiet", "--plan", args.plan, str(src), str(out)]
    floor_code = "import surgery.materialize, transformers"
    print(f"source: {src} ({src_bytes / 1e9:.3f} GB); {args.repeats} runs + 1 warm-up each", flush=True)
    results: dict[str, tuple[list[Run], int | None]] = {
        "python -c pass": (bench([sys.executable, "-c", "pass"], args.repeats), None),
        "import floor": (bench([sys.executable, "-c", floor_code], args.repeats), None),
    }
    apply_runs = bench(apply_cmd, args.repeats, cleanup=out)
    out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out_layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    results["surgery apply"] = (apply_runs, out_bytes)
    cp_dir = ["cp", "-r", str(src), str(copy_dir)]
    results["cp -r source dir"] = (bench(cp_dir, args.repeats, copy_dir), src_bytes)
    cp_shards = ["cp", *map(str, shards), str(copy_dir)]
    results["cp source shards"] = (bench(cp_shards, args.repeats, copy_dir, mkdir=True), shard_bytes)
    shutil.rmtree(copy_dir, ignore_errors=True)

    rows = ["| measurement | GB | wall min (s) | wall median (s) | s/GB (median) | peak RSS median (MB) "
            "| peak RSS max (MB) | CPU user+sys median (s) | wall per run (s) |", "|---" * 9 + "|"]
    for label, (runs, n) in results.items():
        gb, per_gb = (f"{n / 1e9:.3f}", f"{stat(runs, 'wall') / (n / 1e9):.3f}") if n else ("-", "-")
        rows.append(f"| {label} | {gb} | {stat(runs, 'wall', min):.3f} | {stat(runs, 'wall'):.3f} | {per_gb} "
                    f"| {stat(runs, 'rss') / 1e6:.1f} | {stat(runs, 'rss', max) / 1e6:.1f} "
                    f"| {stat(runs, 'cpu'):.3f} | {', '.join(f'{r.wall:.2f}' for r in runs)} |")
    cp_runs, floor_runs = results["cp source shards"][0], results["import floor"][0]
    cp_scaled = stat(cp_runs, "wall") / shard_bytes * out_bytes
    ratio = stat(apply_runs, "wall") / cp_scaled
    ratio_min = stat(apply_runs, "wall", min) / (stat(cp_runs, "wall", min) / shard_bytes * out_bytes)
    ratio_net = (stat(apply_runs, "wall") - stat(floor_runs, "wall")) / cp_scaled
    rss_target, rss_max = LARGEST_TENSOR + RSS_SLACK, stat(apply_runs, "rss", max)
    verdict = {True: "PASS", False: "MISS"}.__getitem__
    table = "\n".join([*rows, "",
        f"- output: {out_layers} layers, {out_bytes / 1e9:.3f} GB of safetensors "
        f"(source {shard_bytes / 1e9:.3f} GB)",
        f"- `cp` of the source shards, scaled to the bytes written: {cp_scaled:.3f} s (median)",
        f"- apply / cp-scaled: median {ratio:.2f}x, min/min {ratio_min:.2f}x (target <= {TIME_TARGET}x): "
        f"{verdict(ratio <= TIME_TARGET)}",
        f"- (apply - import floor) / cp-scaled, medians: {ratio_net:.2f}x: "
        f"{verdict(ratio_net <= TIME_TARGET)}",
        f"- apply peak RSS max {rss_max / 1e6:.1f} MB vs target {rss_target / 1e6:.0f} MB (largest tensor "
        f"{LARGEST_TENSOR / 1e6:.0f} MB + 300 MB): {verdict(rss_max <= rss_target)}; "
        f"{(rss_max - stat(floor_runs, 'rss')) / 1e6:.1f} MB above the import floor"])
    print("\n" + table)
    cpu = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2") or platform.machine()
    versions = ", ".join(f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ("torch", "transformers"))
    report = "\n".join([
        "# `surgery apply` streaming materialization: time and peak RSS", "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {shell('nproc')} cores ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}, {versions}", "",
        "```", "$ free -g", shell("free -g"), "```", "",
        f"- benchmark: `{' '.join(['python', 'benchmarks/apply_memory.py', *sys.argv[1:]])}`",
        f"- apply command: `{' '.join(apply_cmd)}`", f"- import floor: `python -c \"{floor_code}\"`",
        f"- {args.repeats} timed runs after 1 warm-up each (page cache warm, `sync` before every run); "
        "peak RSS = GNU time `%M` of the child; 1 GB = 1e9 bytes, 1 MB = 1e6 bytes", "", table, ""])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "apply_memory.md").write_text(report)
    print(f"\nwrote {args.results / 'apply_memory.md'}")
    if args.plot:
        plot(results, rss_target, args.results / "apply_memory.png")


def plot(results: dict[str, tuple[list[Run], int | None]], rss_target: int, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return print("matplotlib is not installed; skipping --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.barh(list(results), [stat(runs, "wall") for runs, _ in results.values()])
    ax2.barh(list(results), [stat(runs, "rss") / 1e6 for runs, _ in results.values()])
    ax2.axvline(rss_target / 1e6, color="red", linestyle="--", label="RSS target")
    ax1.set_xlabel("median wall time (s)"), ax2.set_xlabel("median peak RSS (MB)"), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
