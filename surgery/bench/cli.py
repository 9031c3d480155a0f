"""``surgery bench MODEL... --backend torch,torch-compile,onnxruntime``: thin command over :mod:`surgery.bench.run`."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.cli.options import trust_remote_code_option


@click.command("bench")
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--backend",
    "backends",
    default="torch",
    show_default=True,
    help="Comma-separated: torch (eager generate), torch-compile (static-cache loop, compiled step), "
    "onnxruntime (ONNX folders).",
)
@click.option("--prompt-len", default=128, show_default=True, type=int)
@click.option("--new-tokens", default=64, show_default=True, type=int)
@click.option("--batch", default=1, show_default=True, type=int)
@click.option("--repeats", default=5, show_default=True, type=int, help="Timed rounds; each measures every model once.")
@click.option("--warmup", default=1, show_default=True, type=int, help="Untimed rounds before them.")
@click.option("--threads", type=int, help="Threads for torch and ONNX Runtime [default: every core].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--out", "out_dir", default="bench", show_default=True, type=click.Path(path_type=Path))
@trust_remote_code_option()
def bench(
    models, backends, prompt_len, new_tokens, batch, repeats, warmup, threads, device, dtype, out_dir, trust_remote_code
):
    """Latency of MODELS side by side (the first is the reference): prefill, decode per token, tokens/s.

    MODEL is a checkpoint folder (torch backends) or an ONNX export (onnxruntime). Each model runs in its own
    warm process, and the models of a backend are measured in interleaved rounds (every model once per round,
    the order rotated and reversed between rounds); a backend that cannot run a model is reported with the
    reason. Writes OUT/bench.json, OUT/bench.md and OUT/bench.png; the headline is each variant's ratio to the
    first model on the same backend (the median of per-round ratios, with their range; "noisy" when the rounds
    disagree by more than 10 %), beside two bounds: weight bytes and sequential steps per token. Everything is
    checked before anything is timed; until the run completes, OUT/bench.partial.json keeps the rounds measured.
    """
    from surgery.bench.config import BenchConfig
    from surgery.config import config_from_options

    config = config_from_options(
        BenchConfig,
        {"out_dir": "--out", "backends": "--backend", "models": "MODELS"},
        models=list(models),
        backends=[name.strip() for name in backends.split(",") if name.strip()],
        prompt_len=prompt_len,
        new_tokens=new_tokens,
        batch=batch,
        repeats=repeats,
        warmup=warmup,
        threads=threads,
        device=device,
        dtype=dtype,
        out_dir=out_dir,
        trust_remote_code=trust_remote_code,
    )
    from surgery.bench.report import table, write_report
    from surgery.bench.run import run_bench

    payload = run_bench(config, progress=lambda line: click.echo(line, err=True))
    written = write_report(payload, config.out_dir)
    click.echo(table(payload))
    click.echo("wrote " + ", ".join(str(path) for path in written))
