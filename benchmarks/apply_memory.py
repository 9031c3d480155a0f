"""Run: python benchmarks/apply_memory.py [--repeats 3] [--plan skip:8-14] [--work-dir DIR] [--plot]

Benchmarks ``surgery apply``'s streaming materialization on a random TinyLlama-1.1B-shaped bf16 checkpoint
(generated once into the work dir, one shard in memory at a time): wall time and peak RSS of the CLI
subprocess (``os.wait4`` rusage) against ``cp`` of the same data and the Python+torch+transformers import
floor. Results go to stdout and ``benchmarks/results/apply_memory.md`` (+ a PNG with ``--plot`` when
matplotlib is installed). Page cache cannot be dropped, so every command gets one warm-up run first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
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
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (vocab, h))]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        out += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h)),
                (p + "mlp.down_proj.weight", (h, inter)), (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,))]
    return out + [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]


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
    sizes = [2 * int(torch.Size(shape).numel()) for _, shape in specs]
    total, offset = sum(sizes), 0
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(NUM_SHARDS)]
    for spec, size in zip(specs, sizes):
        groups[min(NUM_SHARDS - 1, offset * NUM_SHARDS // total)].append(spec)
        offset += size
    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{NUM_SHARDS:05d}.safetensors"
        shard = {key: torch.ones(shape, dtype=torch.bfloat16) if len(shape) == 1
                 else torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(0.02) for key, shape in group}
        save_file(shard, str(src / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        del shard
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
        timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] if os.access("/usr/bin/time", os.X_OK) else []
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
    runs = []
    for i in range(repeats + 1):
        if cleanup is not None:
            shutil.rmtree(cleanup, ignore_errors=True)
            if mkdir:
                cleanup.mkdir(parents=True)
        os.sync()  # start every run with no dirty pages from the previous one
        run = run_once(cmd)
        if i:
            runs.append(run)
    return runs


def shell(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plan", default="skip:8-14", help="surgery plan (default skips 7 of 22 layers)")
    parser.add_argument("--work-dir", type=Path, default=HERE / "_work")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--plot", action="store_true", help="also write apply_memory.png (needs matplotlib)")
    args = parser.parse_args()
    work: Path = args.work_dir.resolve()
    src, out, copy_dir = work / "tinyllama-random", work / "out", work / "cp-out"
    make_checkpoint(src)
    shards = sorted(src.glob("*.safetensors"))
    src_bytes = sum(p.stat().st_size for p in src.iterdir() if p.is_file())
    shard_bytes = sum(p.stat().st_size for p in shards)
    cli = shutil.which("surgery", path=str(Path(sys.executable).parent))
    apply_cmd = [*([cli] if cli else [sys.executable, "-m", "surgery.cli"]),
                 "apply", "--quiet", "--plan", args.plan, str(src), str(out)]
    floor_code = "import surgery.materialize, transformers"
    config_code = f"import surgery.materialize; from transformers import AutoConfig; AutoConfig.from_pretrained({str(src)!r})"

    print(f"source: {src} ({src_bytes / 1e9:.3f} GB)", flush=True)
    results: dict[str, tuple[list[Run], int | None]] = {}
    results["import floor"] = (bench([sys.executable, "-c", floor_code], args.repeats), None)
    results["import + AutoConfig"] = (bench([sys.executable, "-c", config_code], args.repeats), None)
    apply_runs = bench(apply_cmd, args.repeats, cleanup=out)
    out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out_layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    results["surgery apply"] = (apply_runs, out_bytes)
    results["cp -r source dir"] = (bench(["cp", "-r", str(src), str(copy_dir)], args.repeats, copy_dir), src_bytes)
    cp_shards = ["cp", *map(str, shards), str(copy_dir)]
    results["cp source shards"] = (bench(cp_shards, args.repeats, copy_dir, mkdir=True), shard_bytes)
    shutil.rmtree(copy_dir, ignore_errors=True)

    def med(runs: list[Run], key: str) -> float:
        return statistics.median(getattr(r, key) for r in runs)

    rows = ["| measurement | GB | wall min (s) | wall median (s) | s/GB (median) | peak RSS median (MB) "
            "| peak RSS max (MB) | CPU user+sys median (s) |", "|---|---|---|---|---|---|---|---|"]
    for label, (runs, nbytes) in results.items():
        gb = f"{nbytes / 1e9:.3f}" if nbytes else "-"
        per_gb = f"{med(runs, 'wall') / (nbytes / 1e9):.3f}" if nbytes else "-"
        rows.append(f"| {label} | {gb} | {min(r.wall for r in runs):.3f} | {med(runs, 'wall'):.3f} | {per_gb} | "
                    f"{med(runs, 'rss') / 1e6:.1f} | {max(r.rss for r in runs) / 1e6:.1f} | {med(runs, 'cpu'):.3f} |")
    cp_per_byte = med(results["cp source shards"][0], "wall") / shard_bytes
    cp_scaled = cp_per_byte * out_bytes
    floor_wall = med(results["import + AutoConfig"][0], "wall")
    ratio = med(apply_runs, "wall") / cp_scaled
    ratio_min = min(r.wall for r in apply_runs) / (min(r.wall for r in results["cp source shards"][0]) / shard_bytes
                                                   * out_bytes)
    ratio_net = (med(apply_runs, "wall") - floor_wall) / cp_scaled
    rss_target = LARGEST_TENSOR + RSS_SLACK
    rss_max = max(r.rss for r in apply_runs)
    floor_rss = med(results["import floor"][0], "rss")
    summary = [
        f"- output: {out_layers} layers, {out_bytes / 1e9:.3f} GB of safetensors "
        f"(source 22 layers, {shard_bytes / 1e9:.3f} GB)",
        f"- cp (shards) scaled to the bytes written: {cp_scaled:.3f} s",
        f"- apply / cp-scaled: median {ratio:.2f}x, min/min {ratio_min:.2f}x (target <= {TIME_TARGET}x): "
        f"{'PASS' if ratio <= TIME_TARGET else 'MISS'}",
        f"- (apply - `import + AutoConfig` startup) / cp-scaled: {ratio_net:.2f}x "
        f"({'PASS' if ratio_net <= TIME_TARGET else 'MISS'})",
        f"- apply peak RSS max {rss_max / 1e6:.1f} MB vs target {rss_target / 1e6:.0f} MB "
        f"(largest tensor {LARGEST_TENSOR / 1e6:.0f} MB + 300 MB): {'PASS' if rss_max <= rss_target else 'MISS'}; "
        f"above the import floor: {(rss_max - floor_rss) / 1e6:.1f} MB",
    ]
    table = "\n".join(rows + [""] + summary)
    print("\n" + table)

    import torch  # only for the version line

    machine = (f"{shell('nproc')} cores ({platform.processor() or platform.machine()}), "
               f"kernel {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}")
    report = "\n".join([
        "# `surgery apply` streaming materialization: time and peak RSS", "",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {machine}", "", "```", "$ free -g", shell("free -g"), "```", "",
        f"- benchmark: `{' '.join(['python', f'benchmarks/{Path(__file__).name}', *sys.argv[1:]])}`",
        f"- apply command: `{' '.join(apply_cmd)}`",
        f"- import floor: `python -c \"{floor_code}\"`; `import + AutoConfig` also loads the source config",
        f"- {args.repeats} timed runs after 1 warm-up each (page cache warm, `sync` before every run); "
        "peak RSS = `ru_maxrss` of the child from `os.wait4`; 1 GB = 1e9 bytes", "", table, ""])
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "apply_memory.md").write_text(report)
    print(f"\nwrote {args.results / 'apply_memory.md'}")
    if args.plot:
        try:
            import matplotlib
        except ImportError:
            print("matplotlib not installed; skipping --plot")
            return
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = list(results)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        ax1.barh(labels, [med(results[k][0], "wall") for k in labels])
        ax1.set_xlabel("median wall time (s)")
        ax2.barh(labels, [med(results[k][0], "rss") / 1e6 for k in labels])
        ax2.axvline(rss_target / 1e6, color="red", linestyle="--", label="RSS target")
        ax2.set_xlabel("median peak RSS (MB)")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(args.results / "apply_memory.png", dpi=120)
        print(f"wrote {args.results / 'apply_memory.png'}")


if __name__ == "__main__":
    main()
