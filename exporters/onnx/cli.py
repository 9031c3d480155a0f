"""``surgery export onnx CHECKPOINT OUT_DIR``: a thin command over :func:`surgery.exporters.onnx.export.export_onnx`."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.cli.options import revision_option, trust_remote_code_option


@click.group("export")
def export() -> None:
    """Export a checkpoint for deployment (ONNX with KV cache), checked against PyTorch."""


@export.command("onnx")
@click.argument("checkpoint")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--dtype", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset.")
@click.option(
    "--optimize",
    type=click.Choice(["O1", "O2", "O3"]),
    help="ONNX Runtime graph optimizations (optimum's levels; O3 adds GELU approximation).",
)
@click.option("--no-cache", is_flag=True, help="Export without KV cache inputs/outputs (every step recomputes).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@revision_option()
@trust_remote_code_option()
def onnx(checkpoint, out_dir, dtype, opset, optimize, no_cache, device, overwrite, revision, trust_remote_code):
    """Export CHECKPOINT (any `surgery apply` output, or a supported model) to ONNX in OUT_DIR.

    After the export, ONNX Runtime is compared with PyTorch (logits on a few prompts; greedy generation of 32
    tokens with the KV cache, token for token); the result is printed and saved in OUT_DIR/export.json, and
    nothing is installed at OUT_DIR when the check fails. The folder loads with plain
    `optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(OUT_DIR)`, without trust_remote_code.
    """
    from surgery.config import config_from_options
    from surgery.exporters.onnx.config import ExportConfig

    config = config_from_options(
        ExportConfig,
        checkpoint=checkpoint,
        out_dir=out_dir,
        dtype=dtype,
        opset=opset,
        optimize=optimize,
        cache=not no_cache,
        device=device,
        overwrite=overwrite,
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    from surgery.exporters.onnx.export import export_onnx

    record = export_onnx(config)
    parity = record["parity"]
    click.echo(f"wrote {out_dir}  ({record['layout']}, task {record['task']}, {record['kv_cache_pairs']} KV pairs)")
    click.echo(
        f"parity: max |logits ONNX Runtime - PyTorch| = {parity['max_abs_diff']:.2e} "
        f"(tolerance {parity['tolerance']:.0e}) over {len(parity['prompts'])} prompts"
        + (
            f"; greedy generation of {parity['generated_tokens']} tokens with KV cache identical"
            if parity["generation_checked"]
            else ""
        )
    )
