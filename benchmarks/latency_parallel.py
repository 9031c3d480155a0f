"""Latency of plans against the full model (paper §5): wrapper overhead, fused parallel blocks, compiled decode.

Random-weight Llama models built directly on the device (no downloads); every variant shares the full model's
weight tensors. Variants, per shape (N is the paper's: the first and last N layers are kept):

* ``full``: the stock ``LlamaForCausalLM``;
* ``surgery-identity``: the same layers through ``SurgeryForCausalLM`` (the class a checkpoint ships with);
* ``skip-plain`` / ``skip-surgery``: ``skip:(N+1)-(T-N-1)`` as a plain architecture and through the wrapper;
* ``parallel`` / ``parallel-unfused`` and ``parallel-x3`` / ``parallel-x3-unfused``: the paper's parallel and
  looped-parallel (3x) blocks over the same range, fused (default) and member by member; ``*-out-major``: fused
  with the stacked weights kept as a transposed view of ``[M, out, in]`` instead of stored ``[M, in, out]``.

Results in ``benchmarks/results/latency_parallel/`` were measured before ``[M, in, out]`` became the default:
there ``parallel`` / ``parallel-x3`` are the out-major layout and ``*-in-major`` today's default.

Eager: prefill = ``generate(max_new_tokens=1)``; decode per token = (``generate(1 + K)`` - prefill) / K, with a
dynamic cache. Compiled (``--compile``): the same with a static cache, which transformers' ``generate``
compiles (CUDA graphs on a GPU); graph breaks counted by torch._dynamo. Rounds are interleaved over variants;
medians; ratios are to ``full`` in the same run. Writes ``OUT/latency_parallel.json`` and ``.md``.

    python benchmarks/latency_parallel.py --device cuda --dtype bfloat16 --shapes 7b,1b --compile 1b
    python benchmarks/latency_parallel.py --device cpu --shapes smollm2     # the CPU report
    python benchmarks/latency_parallel.py --device cpu --shapes tiny --repeats 1 --compile tiny   # smoke

``--cpu-tiny``: the wrapper's per-step overhead without a GPU (issue 24). A tiny Llama (8 layers, hidden 64) on one
CPU thread, fp32, is dominated by per-step Python, as eager decode on a fast GPU is. Plain class against
``identity`` (and ``skip``, fused ``parallel``) through ``SurgeryForCausalLM``: greedy ``generate`` of
``--new-tokens`` tokens with a streamer that stamps each token (wall clock and this thread's CPU time); a round's
decode time is the median interval between tokens; rounds interleaved (order reversed every other round); medians
over rounds, ratios to the plain class, per-round ratio spread. Writes ``OUT/cpu_tiny/latency_cpu_tiny.{json,md}``.

    python benchmarks/latency_parallel.py --cpu-tiny --repeats 15 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from surgery.modeling.configuration_surgery import SurgeryConfig  # noqa: E402
from surgery.modeling.modeling_surgery import SurgeryForCausalLM  # noqa: E402
from surgery.plan import load_plan, resolve_plan  # noqa: E402

# name: (config, N). 7b: Llama-2-7B; 1b: TinyLlama-1.1B (GQA 32/4); smollm2: SmolLM2-135M (GQA 9/3)
SHAPES = {
    "7b": (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000), 8),
    "1b": (dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000), 6),
    "smollm2": (dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True), 8),
    "tiny": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128), 2),
}  # fmt: skip


def build_full(shape: str, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    """The full model with random weights, built on ``device`` in ``dtype``."""
    fields, _ = SHAPES[shape]
    config = LlamaConfig(**fields, max_position_embeddings=4096)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def build_surgery(
    full: LlamaForCausalLM, steps: list[list[int]], fuse: bool = True, input_major: bool | None = None
) -> SurgeryForCausalLM:
    """``SurgeryForCausalLM`` over the full model's layers, sharing its tensors (built on meta, then assigned)."""
    fields = full.config.to_dict()
    fields.pop("model_type", None)
    config = SurgeryConfig(
        source_model_type="llama",
        source_architectures=["LlamaForCausalLM"],
        surgery_layer_list="model.layers",
        surgery_stored_layers=full.config.num_hidden_layers,
        surgery_source_layers=list(range(full.config.num_hidden_layers)),
        surgery_steps=steps,
        surgery_fuse_parallel=fuse,
        **{**fields, "num_hidden_layers": sum(len(step) for step in steps)},
    )
    config._attn_implementation = full.config._attn_implementation
    with torch.device("meta"):
        model = SurgeryForCausalLM(config)
    state = {f"inner.{name}": tensor for name, tensor in full.state_dict().items()}
    model.load_state_dict(state, assign=True, strict=False)
    model.inner.model.rotary_emb = full.model.rotary_emb  # a buffer-only module: share it too
    for step in model.inner.model.layers.steps:
        if step.fused is not None and input_major is not None:
            step.fused.stacked.input_major = input_major  # stacked layout (a kernel choice), same numbers
    return model.eval()


def build_plain_skip(full: LlamaForCausalLM, kept: list[int]) -> LlamaForCausalLM:
    """What ``surgery apply`` writes for a skip plan: the stock class with fewer layers (shared tensors)."""
    config = LlamaConfig(**{**full.config.to_dict(), "num_hidden_layers": len(kept)})
    config._attn_implementation = full.config._attn_implementation
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = {}
    for name, tensor in full.state_dict().items():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers.") :].split(".", 1)
            if int(index) in kept:
                state[f"model.layers.{kept.index(int(index))}.{rest}"] = tensor
        else:
            state[name] = tensor
    model.load_state_dict(state, assign=True, strict=False)
    model.model.rotary_emb = full.model.rotary_emb
    return model.eval()


class Variant:
    """A named model to time."""

    def __init__(self, name: str, model):
        self.name, self.model = name, model

    def generate(self, ids: torch.Tensor, new_tokens: int, static: bool) -> None:
        options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
        if static:
            options["cache_implementation"] = "static"
            if ids.device.type != "cuda":  # generate compiles the decode step on CUDA only, unless told to
                from transformers import CompileConfig

                options["compile_config"] = CompileConfig(mode="default")
                options["compile_config"]._compile_all_devices = True
        self.model.generate(ids, **options)


def variants(shape: str, full: LlamaForCausalLM) -> list[Variant]:
    """The variants of one shape; plans are resolved by the project's plan language, as ``surgery apply`` does."""
    layers, n = full.config.num_hidden_layers, SHAPES[shape][1]
    middle = f"{n + 1}-{layers - n - 1}"  # the paper's N: layers N+1 .. T-N-1

    def steps(plan: str) -> list[list[int]]:
        return [list(step.layers) for step in resolve_plan(load_plan(plan), layers).steps]

    skipped = range(n + 1, layers - n)
    kept = [index for index in range(layers) if index not in skipped]
    return [
        Variant("full", full),
        Variant("surgery-identity", build_surgery(full, steps("identity"))),
        Variant("skip-plain", build_plain_skip(full, kept)),
        Variant("skip-surgery", build_surgery(full, steps(f"skip:{middle}"))),
        Variant("parallel", build_surgery(full, steps(f"parallel:{middle}"))),
        Variant("parallel-unfused", build_surgery(full, steps(f"parallel:{middle}"), fuse=False)),
        Variant("parallel-x3", build_surgery(full, steps(f"parallel:{middle}x3"))),
        Variant("parallel-x3-unfused", build_surgery(full, steps(f"parallel:{middle}x3"), fuse=False)),
        Variant("parallel-out-major", build_surgery(full, steps(f"parallel:{middle}"), input_major=False)),
        Variant("parallel-x3-out-major", build_surgery(full, steps(f"parallel:{middle}x3"), input_major=False)),
    ]


def measure(
    chosen: list[Variant], ids: torch.Tensor, new_tokens: int, repeats: int, static: bool, sync
) -> dict[str, dict[str, float]]:
    """Median prefill and decode-per-token milliseconds of each variant, rounds interleaved."""
    times: dict[str, dict[str, list[float]]] = {v.name: {"prefill": [], "total": []} for v in chosen}

    def timed(variant: Variant, tokens: int) -> float:
        sync()
        started = time.perf_counter()
        variant.generate(ids, tokens, static)
        sync()
        return (time.perf_counter() - started) * 1e3

    with torch.inference_mode():
        for variant in chosen:  # warm-up (and, with a static cache, compilation)
            timed(variant, 1)
            timed(variant, 1 + new_tokens)
            timed(variant, 1 + new_tokens)
        for _ in range(repeats):
            for variant in chosen:
                times[variant.name]["prefill"].append(timed(variant, 1))
                times[variant.name]["total"].append(timed(variant, 1 + new_tokens))
    result = {}
    for name, series in times.items():
        prefill = statistics.median(series["prefill"])
        decode = (statistics.median(series["total"]) - prefill) / new_tokens
        result[name] = {"prefill_ms": round(prefill, 3), "decode_ms_per_token": round(decode, 4)}
    return result


def executed_layers(model) -> tuple[int, int]:
    """(layer instances executed, sequential steps) of a variant."""
    if isinstance(model, SurgeryForCausalLM):
        steps = model.config.surgery_steps
        return sum(map(len, steps)), len(steps)
    return model.config.num_hidden_layers, model.config.num_hidden_layers


class StampStreamer:
    """A ``generate`` streamer that records when each token (first: the prompt) arrives: wall and thread CPU."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def put(self, value) -> None:  # noqa: ARG002 - the streamer protocol
        self.wall.append(time.perf_counter())
        self.cpu.append(time.thread_time())

    def end(self) -> None:
        pass


def cpu_tiny(args: argparse.Namespace, machine: dict) -> dict:
    """Per-step overhead of the surgery class on the tiny shape, one CPU thread (see the module docstring)."""
    torch.set_num_threads(1)
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    machine = machine | {
        "device": names[0] if names else platform.processor() or platform.machine(),
        "cpus": len(names) or None,
        "threads": torch.get_num_threads(),
    }
    torch.manual_seed(0)
    full = build_full("tiny", "cpu", torch.float32)
    layers = full.config.num_hidden_layers
    kept = [index for index in range(layers) if index not in range(3, 6)]
    chosen = [
        Variant("full", full),
        Variant("surgery-identity", build_surgery(full, [[index] for index in range(layers)])),
        Variant("skip-plain", build_plain_skip(full, kept)),
        Variant("skip-surgery", build_surgery(full, [[index] for index in kept])),
        Variant("parallel", build_surgery(full, [[0], [1], [2], [3, 4, 5], [6], [7]])),
    ]
    ids = torch.randint(1, full.config.vocab_size, (1, args.prompt_len))  # no pad id (0): no padding mask
    options = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}
    series: dict[str, dict[str, list[float]]] = {v.name: {"wall": [], "cpu": []} for v in chosen}

    def decode(variant: Variant) -> tuple[float, float]:
        streamer = StampStreamer()
        variant.model.generate(ids, streamer=streamer, pad_token_id=0, **options)
        walls, cpus = streamer.wall[2:], streamer.cpu[2:]  # [0]: prompt, [1]: first token (prefill)
        wall = statistics.median(b - a for a, b in zip(walls, walls[1:]))
        cpu = statistics.median(b - a for a, b in zip(cpus, cpus[1:]))
        return wall * 1e3, cpu * 1e3

    with torch.inference_mode():
        for variant in chosen:
            decode(variant)
        for round_index in range(args.repeats):
            for variant in chosen if round_index % 2 == 0 else chosen[::-1]:
                wall, cpu = decode(variant)
                series[variant.name]["wall"].append(wall)
                series[variant.name]["cpu"].append(cpu)
    rows = {}
    base = series["full"]
    for name, values in series.items():
        row = {}
        for clock in ("wall", "cpu"):
            ratios = sorted(value / reference for value, reference in zip(values[clock], base[clock]))
            row[clock] = {
                "decode_ms_per_token": round(statistics.median(values[clock]), 4),
                "ratio_of_medians": round(statistics.median(values[clock]) / statistics.median(base[clock]), 4),
                "round_ratio_median": round(statistics.median(ratios), 4),
                "round_ratio_quartiles": [round(q, 4) for q in _quartiles(ratios)],
                "round_ratio_min_max": [round(ratios[0], 4), round(ratios[-1], 4)],
            }
        rows[name] = row
    return {"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "variants": rows, "raw": series}


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    quartiles = statistics.quantiles(values, n=4)
    return quartiles[0], quartiles[2]


def render_cpu_tiny(report: dict) -> str:
    """Markdown table of the ``--cpu-tiny`` report."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"Machine: {machine['device']} (1 thread), torch {machine['torch']}, "
        f"transformers {machine['transformers']}, python {machine['python']}; tiny Llama (8 layers, hidden 64), "
        f"fp32, batch 1, prompt {settings['prompt_len']}, {settings['new_tokens']} new tokens; "
        f"{settings['repeats']} interleaved rounds.",
        "Command: `python benchmarks/latency_parallel.py --cpu-tiny --repeats "
        f"{settings['repeats']} --new-tokens {settings['new_tokens']} --prompt-len {settings['prompt_len']}`",
        "",
        "| variant | decode ms/token (wall) | × full (median of rounds) | round ratio IQR | min-max "
        "| decode ms/token (CPU) | × full (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["variants"].items():
        wall, cpu = row["wall"], row["cpu"]
        low, high = wall["round_ratio_quartiles"]
        least, most = wall["round_ratio_min_max"]
        lines.append(
            f"| {name} | {wall['decode_ms_per_token']:.3f} | {wall['round_ratio_median']:.3f} | {low:.3f}-{high:.3f} "
            f"| {least:.3f}-{most:.3f} | {cpu['decode_ms_per_token']:.3f} | {cpu['round_ratio_median']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--shapes", default="7b,1b")
    parser.add_argument("--compile", default="", help="Shapes also measured compiled (static cache).")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", default="", help="Comma-separated subset of the variants (default: all).")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_parallel"))
    parser.add_argument("--cpu-tiny", action="store_true", help="The wrapper's per-step overhead on one CPU thread.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    machine = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "python": platform.python_version(),
    }
    if args.cpu_tiny:
        report = cpu_tiny(args, machine)
        out = args.out / "cpu_tiny"
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency_cpu_tiny.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "latency_cpu_tiny.md").write_text(render_cpu_tiny(report))
        print(render_cpu_tiny(report))
        return
    report = {"machine": machine, "settings": vars(args) | {"out": str(args.out)}, "shapes": {}}
    for shape in args.shapes.split(","):
        torch.manual_seed(0)
        started = time.perf_counter()
        full = build_full(shape, device, dtype)
        chosen = variants(shape, full)
        if args.variants:
            chosen = [variant for variant in chosen if variant.name in args.variants.split(",")]
        ids = torch.randint(0, full.config.vocab_size, (1, args.prompt_len), device=device)
        print(f"[{shape}] built in {time.perf_counter() - started:.1f}s; eager ...", flush=True)
        entry = {"eager": measure(chosen, ids, args.new_tokens, args.repeats, False, sync), "layers": {}}
        for variant in chosen:
            entry["layers"][variant.name] = executed_layers(variant.model)
        if shape in args.compile.split(","):
            import torch._dynamo as dynamo

            names = ("full", "surgery-identity", "parallel", "parallel-x3", "parallel-x3-out-major")
            compiled = [v for v in chosen if v.name in names]
            dynamo.reset()
            dynamo.utils.counters.clear()
            print(f"[{shape}] compiled ...", flush=True)
            write(report | {"shapes": {**report["shapes"], shape: entry}}, args.out)
            entry["compiled"] = measure(compiled, ids, args.new_tokens, args.repeats, True, sync)
            breaks = dynamo.utils.counters["graph_break"]
            entry["compiled_graphs"] = dynamo.utils.counters["stats"]["unique_graphs"]
            entry["graph_breaks"] = {reason[:160]: count for reason, count in breaks.items()}
        report["shapes"][shape] = entry
        write(report, args.out)  # after each shape: a run cut short keeps what it measured
        del full, chosen
        if device == "cuda":
            torch.cuda.empty_cache()
    print(render(report))


def write(report: dict, out: Path) -> None:
    """``OUT/latency_parallel.json`` and ``.md`` (rewritten as results come in)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency_parallel.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "latency_parallel.md").write_text(render(report))


def render(report: dict) -> str:
    """Markdown tables: per shape and mode, each variant's times and ratios to ``full``."""
    machine, settings = report["machine"], report["settings"]
    lines = [
        f"Machine: {machine['device']} ({machine['threads']} threads), torch {machine['torch']}, "
        f"transformers {machine['transformers']}; {settings['dtype']}, batch 1, prompt {settings['prompt_len']}, "
        f"{settings['new_tokens']} new tokens, median of {settings['repeats']}.",
        "",
    ]
    for shape, entry in report["shapes"].items():
        for mode in ("eager", "compiled"):
            if mode not in entry:
                continue
            rows = entry[mode]
            base = rows["full"]
            lines += [
                f"### {shape}, {mode}",
                "",
                "| variant | layers run / steps | prefill ms | × full | decode ms/token | × full |",
                "|---|---|---|---|---|---|",
            ]
            for name, row in rows.items():
                run, steps = entry["layers"][name]
                prefill, decode = row["prefill_ms"], row["decode_ms_per_token"]
                lines.append(
                    f"| {name} | {run} / {steps} | {prefill:.2f} | {prefill / base['prefill_ms']:.2f} "
                    f"| {decode:.3f} | {decode / base['decode_ms_per_token']:.2f} |"
                )
            lines.append("")
        if "graph_breaks" in entry:
            breaks = entry["graph_breaks"]
            lines += [
                f"Compiled ({shape}): {entry['compiled_graphs']} graphs, {sum(breaks.values())} graph breaks",
                "",
            ]
            lines += [f"- {count}× {reason}" for reason, count in breaks.items()] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
