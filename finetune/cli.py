"""``surgery finetune``: heal a variant with full or LoRA fine-tuning and write a standalone checkpoint.

A thin layer: options -> :class:`~surgery.finetune.config.FinetuneConfig` ->
:func:`~surgery.finetune.run.run_finetune` -> a summary line.
"""

from __future__ import annotations

from pathlib import Path

import click

from surgery.cli.options import data_dir_option, model_loading_options, plan_option, quiet_option
from surgery.config import config_from_options
from surgery.finetune.config import FinetuneConfig


@click.command("finetune")
@click.argument("checkpoint")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["full", "lora"]),
    required=True,
    help="'full': every weight trains (the paper's A.2); 'lora': PEFT adapters, merged into the output.",
)
@plan_option(
    what="applied in memory to CHECKPOINT (a source model) for training; the output is written as "
    "`surgery apply` would write the plan"
)
@click.option("--tie-repeats", is_flag=True, help="With --plan: store a repeated layer once (as `surgery apply`).")
@click.option(
    "--data",
    default="arc_challenge",
    show_default=True,
    help="'arc_challenge' / 'arc_easy' (train split, formatted as `surgery eval` scores ARC; loss on the "
    "answer) or a .jsonl file with a 'text' field (loss on all tokens) or 'prompt'/'completion' fields.",
)
@data_dir_option("arc/ARC-{Challenge,Easy}-Train.jsonl")
@click.option("--limit", type=int, help="Train on a seeded subsample of this many examples [default: all].")
@click.option("--epochs", default=1, show_default=True)
@click.option("--lr", default=5e-5, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--batch-size", default=64, show_default=True, help="Examples per optimizer step.")
@click.option(
    "--micro-batch-size",
    default=4,
    show_default=True,
    help="Examples per forward pass; the batch is accumulated over batch-size / micro-batch-size of them.",
)
@click.option("--max-length", default=512, show_default=True, help="Longer sequences keep their last tokens.")
@click.option("--seed", default=0, show_default=True, help="Data order and LoRA initialisation.")
@click.option("--warmup-ratio", default=0.1, show_default=True, help="Linear warm-up share of the steps.")
@click.option("--lora-rank", default=8, show_default=True)
@click.option("--lora-alpha", default=16.0, show_default=True)
@click.option(
    "--lora-targets",
    default="mlp",
    show_default=True,
    help="'mlp', 'attn', 'all', or comma-separated module names (e.g. q_proj,v_proj).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Compute dtype: bfloat16 runs the forward under autocast (weights stay float32).",
)
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (the schedule spans them).")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last saved step.")
@click.option("--save-every", default=10, show_default=True, help="Save the resumable state every N steps.")
@click.option("--save-adapter", is_flag=True, help="With --method lora: also keep the adapter in OUT_DIR/adapter/.")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUT_DIR.")
@model_loading_options
@quiet_option()
def finetune(checkpoint, out_dir, plan_text, quiet, **options):
    """Fine-tune CHECKPOINT (fully or with LoRA) and write the healed model to OUT_DIR (paper A.2, Fig 13).

    CHECKPOINT is a `surgery apply` output (plain or surgery class), a Hub id or a local model; the output is a
    standalone checkpoint of the same kind (LoRA merged), with train_log.jsonl, loss.png and surgery.json
    extended with a 'finetune' stage. The resumable state lives in .OUT_DIR.finetune-state/ beside OUT_DIR
    until the checkpoint is written.
    """
    config = config_from_options(
        FinetuneConfig,
        {"model": "CHECKPOINT", "out_dir": "OUT_DIR", "plan": "--plan"},
        model=checkpoint,
        out_dir=out_dir,
        plan=plan_text,
        **options,
    )
    from surgery.finetune.run import run_finetune

    details = run_finetune(config, progress=not quiet)
    if not quiet:
        tokens_per_s = details["tokens_per_s"]
        click.echo(
            f"{config.method} fine-tuning: {details['steps']} steps on {details['data']['examples']} examples, "
            f"loss {details['first_loss']:.4f} -> {details['final_loss']:.4f}"
            + (f", {tokens_per_s:.0f} tokens/s" if tokens_per_s else "")
            + f" -> {config.out_dir}"
        )
