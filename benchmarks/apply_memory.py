"""Run: python benchmarks/apply_memory.py [--repeats 3] [--plan skip:8-14] [--work-dir DIR] [--plot]

Benchmarks ``surgery apply``'s streaming materialization on a random TinyLlama-1.1B-shaped bf16 checkpoint
(generated once into the work dir, one shard in memory at a time): wall time and peak RSS of the CLI subprocess
against ``cp`` of the same data and the import floor (what the CLI imports before copying). Commands run
round-robin (round 0 is a warm-up: the page cache cannot be dropped), so drift hits all alike.
Writes benchmarks/results/apply_memory.md (and, with ``--plot``, a PNG when matplotlib is installed).
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
from dataclasses import dataclass, field
from pathlib import Path

from display import display_command

HERE = Path(__file__).resolve().parent
NUM_SHARDS = 5
LARGEST_TENSOR = 32000 * 2048 * 2  # embed_tokens / lm_head in bf16
RSS_TARGET = LARGEST_TENSOR + 300 * 10**6
TIME_TARGET = 1.3
CONFIG = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22)
CONFIG |= dict(num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048)
CONFIG |= dict(tie_word_embeddings=False, torch_dtype="bfloat16")


def llama_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a LlamaForCausalLM state dict, in save order, without building the model."""
    h, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    attn = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h)}
    mlp = {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    layer = {f"self_attn.{k}": v for k, v in attn.items()} | {f"mlp.{k}": v for k, v in mlp.items()}
    layer |= {"input_layernorm": (h,), "post_attention_layernorm": (h,)}
    n = c["num_hidden_layers"]
    layers = [(f"model.layers.{i}.{key}.weight", shape) for i in range(n) for key, shape in layer.items()]
    tail = [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    return [("model.embed_tokens.weight", (vocab, h)), *layers, *tail]


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
    gen, weight_map = torch.Generator().manual_seed(0), {}
    for number, group in enumerate(groups, 1):
        name = f"model-{number:05d}-of-{NUM_SHARDS:05d}.safetensors"
        shard = {key: torch.randn(shape, generator=gen, dtype=torch.bfloat16).mul_(0.02) for key, shape in group}
        shard |= {key: torch.ones_like(value) for key, value in shard.items() if value.dim() == 1}  # norms
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
    others: float  # CPU seconds the rest of the machine used meanwhile (/proc/stat busy time - ours)


@dataclass
class Job:
    label: str
    cmd: list[str]
    nbytes: int | None = None  # bytes it writes
    fresh_dir: Path | None = None  # removed before every run
    mkdir: bool = False  # ... and recreated empty
    inner: bool = False  # wall = the seconds the command prints last (its own timer), not the process time
    runs: list[Run] = field(default_factory=list)

    def stat(self, key: str, how: Callable[[Iterable[float]], float] = statistics.median) -> float:
        return how(getattr(r, key) for r in self.runs)


def run_once(cmd: list[str], inner: bool = False) -> Run:
    """Run ``cmd``; peak RSS from GNU time if present, else ``os.wait4`` (which can't go below this parent's RSS)."""
    timed = os.access("/usr/bin/time", os.X_OK)
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out, tempfile.NamedTemporaryFile("r") as rss_file:
        start, busy = time.perf_counter(), busy_seconds()
        timer = ["/usr/bin/time", "-f", "%M", "-o", rss_file.name] if timed else []
        proc = subprocess.Popen(timer + cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()}")
        rss_kb = int(rss_file.read().split()[-1]) if timed else usage.ru_maxrss
        if inner:
            out.seek(0)
            wall = float(out.read().split()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return Run(wall, rss_kb * 1024, cpu, max(0.0, busy_seconds() - busy - cpu))


def busy_seconds() -> float:
    """Non-idle CPU seconds of the whole machine since boot."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def bench(jobs: list[Job], repeats: int) -> None:
    """Round 0 is a warm-up; then ``repeats`` timed rounds, each running every job once after a ``sync``."""
    for round_ in range(repeats + 1):
        for job in jobs:
            if job.fresh_dir is not None:
                shutil.rmtree(job.fresh_dir, ignore_errors=True)
                if job.mkdir:
                    job.fresh_dir.mkdir(parents=True)
            os.sync()  # no dirty pages left over from the previous run
            run = run_once(job.cmd, job.inner)
            job.runs += [run] if round_ else []
        print(f"round {round_}/{repeats} done" + (" (warm-up)" if not round_ else ""), flush=True)


def shell(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.rstrip()


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
    src, out, out2, copy_dir = (work / name for name in ("tinyllama-random", "out", "out-inproc", "cp-out"))
    if args.generate_only:
        return make_checkpoint(src)
    # generate in a child: this parent must not import torch (exec'd children inherit its RSS high-water mark)
    subprocess.run([sys.executable, __file__, "--work-dir", str(work), "--generate-only"], check=True)
    shards = sorted(src.glob("*.safetensors"))
    src_bytes, shard_bytes = (sum(p.stat().st_size for p in files) for files in (src.glob("*"), shards))
    cli = shutil.which("surgery", path=str(Path(sys.executable).parent))
    apply_cmd = [cli] if cli else [sys.executable, "-m", "surgery.cli"]
    apply_cmd += ["apply", "--quiet", "--plan", args.plan, str(src), str(out)]
    floor_code = "import surgery.cli, surgery.apply.materialize"  # what `surgery apply` imports before copying
    inproc = "import time; from surgery.apply.materialize import apply_plan as a; t = time.perf_counter(); "
    inproc += f"a({str(src)!r}, {args.plan!r}, {str(out2)!r}); print(time.perf_counter() - t)"
    py = [sys.executable, "-c"]
    floor, apply, apply_fn, cp_dir, cp_shards = jobs = [
        Job("import floor", [*py, floor_code]),
        Job("surgery apply", apply_cmd, fresh_dir=out),
        Job("apply_plan() alone (in-process timer)", [*py, inproc], fresh_dir=out2, inner=True),
        Job("cp -r source dir", ["cp", "-r", str(src), str(copy_dir)], src_bytes, copy_dir),
        Job("cp source shards", ["cp", *map(str, shards), str(copy_dir)], shard_bytes, copy_dir, mkdir=True),
    ]
    jobs.insert(0, Job("python -c pass", [*py, "pass"]))
    print(f"source: {src} ({src_bytes / 1e9:.3f} GB); {args.repeats} rounds + 1 warm-up", flush=True)
    bench(jobs, args.repeats)
    busy = sum(r.others for job in jobs for r in job.runs)
    load = f"other processes used {busy:.1f} CPU-s during the timed runs (~0 when idle; more inflates times)"
    apply.nbytes = apply_fn.nbytes = out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    out_layers = json.loads((out / "config.json").read_text())["num_hidden_layers"]
    for path in (copy_dir, out2):
        shutil.rmtree(path, ignore_errors=True)

    columns = ["measurement", "GB written", "wall min (s)", "wall median (s)", "s/GB (median)", "peak RSS median (MB)"]
    columns += ["peak RSS max (MB)", "CPU user+sys median (s)", "wall per run (s)"]
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for job in jobs:
        gb, per_gb = (f"{job.nbytes / 1e9:.3f}", f"{job.stat('wall') * 1e9 / job.nbytes:.3f}") if job.nbytes else "--"
        cells = [job.label, gb, f"{job.stat('wall', min):.3f}", f"{job.stat('wall'):.3f}", per_gb]
        cells += [f"{job.stat('rss') / 1e6:.1f}", f"{job.stat('rss', max) / 1e6:.1f}", f"{job.stat('cpu'):.3f}"]
        rows.append("| " + " | ".join([*cells, ", ".join(f"{r.wall:.2f}" for r in job.runs)]) + " |")
    verdict = {True: "PASS", False: "MISS"}.__getitem__
    cp_scaled, cp_min = (cp_shards.stat("wall", how) / shard_bytes * out_bytes for how in (statistics.median, min))

    def ratios(job: Job) -> str:
        ratio = job.stat("wall") / cp_scaled
        return f"median {ratio:.2f}x, min/min {job.stat('wall', min) / cp_min:.2f}x: {verdict(ratio <= TIME_TARGET)}"

    rss_max = apply.stat("rss", max)
    table = "\n".join([*rows, "",
        f"- output: {out_layers} layers, {out_bytes / 1e9:.3f} GB of safetensors (source {shard_bytes / 1e9:.3f} GB)",
        f"- `cp` of the source shards, scaled to the bytes apply writes: {cp_scaled:.3f} s (median)",
        f"- `surgery apply` (whole CLI process) / cp-scaled (target <= {TIME_TARGET}x): {ratios(apply)}",
        f"- `apply_plan()` alone (no imports, no interpreter start/exit) / cp-scaled: {ratios(apply_fn)}",
        f"- apply peak RSS max {rss_max / 1e6:.1f} MB vs target {RSS_TARGET / 1e6:.0f} MB (largest tensor "
        f"{LARGEST_TENSOR / 1e6:.0f} MB + 300 MB): {verdict(rss_max <= RSS_TARGET)}; "
        f"{(rss_max - floor.stat('rss')) / 1e6:.1f} MB above the import floor", f"- contention: {load}"])  # fmt: skip
    print("\n" + table)
    cpu = shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.machine()
    versions = ", ".join(f"{pkg} {importlib.metadata.version(pkg)}" for pkg in ("torch", "transformers"))
    report = ["# `surgery apply` streaming materialization: time and peak RSS\n",
        f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {shell('nproc')} cores ({cpu}), kernel {platform.release()}, "
        f"Python {platform.python_version()}, {versions}\n", f"```\n$ free -g\n{shell('free -g')}\n```\n",
        f"- benchmark: `{' '.join(['python', 'benchmarks/apply_memory.py', *sys.argv[1:]])}`",
        f"- apply command: `{display_command(apply_cmd)}`", f'- import floor: `python -c "{floor_code}"`',
        f"- {args.repeats} timed rounds after 1 warm-up round, commands interleaved, `sync` before every run, "
        "page cache warm; peak RSS = GNU time `%M` of the child; 1 GB = 1e9 bytes, 1 MB = 1e6 bytes\n",
        table + "\n"]  # fmt: skip
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "apply_memory.md").write_text("\n".join(report))
    print(f"\nwrote {args.results / 'apply_memory.md'}")
    if args.plot:
        plot(jobs, args.results / "apply_memory.png")


def plot(jobs: list[Job], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return print("matplotlib is not installed; skipping --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax1.barh([j.label for j in jobs], [j.stat("wall") for j in jobs])
    ax2.barh([j.label for j in jobs], [j.stat("rss") / 1e6 for j in jobs])
    ax2.axvline(RSS_TARGET / 1e6, color="red", linestyle="--", label="RSS target")
    ax1.set_xlabel("median wall time (s)"), ax2.set_xlabel("median peak RSS (MB)"), ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
