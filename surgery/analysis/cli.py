"""``surgery similarity``: hidden-state similarity between layers of a (planned) model, written to a folder.

A thin layer: options -> :class:`~surgery.analysis.config.SimilarityConfig` ->
:func:`~surgery.analysis.run.run_similarity` -> a summary line.
"""

from __future__ import annotations

from pathlib import Path

import click

from surgery.analysis.config import SimilarityConfig
from surgery.cli.options import data_dir_option, dtype_option, model_loading_options, plan_option, quiet_option
from surgery.config import config_from_options


@click.command("similarity")
@click.argument("model")
@plan_option(what="applied in memory before measuring (the matrix then covers the executed sequence)")
@click.option(
    "--data",
    default="lambada",
    show_default=True,
    help="'lambada' (LAMBADA test texts), or a .jsonl file (a 'text' field per line) / .txt file (a text per line).",
)
@data_dir_option("lambada/lambada_test.jsonl")
@click.option("--limit", default=100, show_default=True, help="Number of texts (the paper uses 100 LAMBADA samples).")
@click.option("--seed", type=int, help="Draw the --limit texts at random with this seed [default: the first ones].")
@click.option(
    "--out",
    "out_dir",
    default="similarity-out",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder (created; files of an earlier run there are replaced).",
)
@click.option("--batch-size", default=8, show_default=True, help="Texts per forward pass (right-padded).")
@click.option("--max-length", default=512, show_default=True, help="Truncate texts to this many tokens.")
@click.option(
    "--final-norm/--no-final-norm",
    default=True,
    show_default=True,
    help="Whether the last hidden state is taken after the model's final norm (transformers' convention).",
)
@click.option("--exclude-special-tokens", is_flag=True, help="Do not count tokens the tokenizer adds (BOS, CLS, SEP).")
@click.option(
    "--classes",
    "num_classes",
    default=3,
    show_default=True,
    help="Suggest this many contiguous layer classes (beginning/middle/end for 3); 0 for none.",
)
@dtype_option(help_text="Model weights dtype (sums are float64 regardless).")
@model_loading_options
@quiet_option()
def similarity(
    model,
    plan_text,
    data,
    data_dir,
    limit,
    seed,
    out_dir,
    batch_size,
    max_length,
    final_norm,
    exclude_special_tokens,
    num_classes,
    dtype,
    revision,
    trust_remote_code,
    allow_pickle,
    quiet,
):
    """Average cosine similarity between the hidden states of every pair of layers of MODEL (paper §3.1, Fig 3).

    MODEL is a Hub id, a local checkpoint (including `surgery apply` outputs) or a .gguf file. Writes to
    --out: similarity.json (config, counts, per-layer variance and norm, suggested classes), matrix.json and
    matrix.npy (the (T+1)x(T+1) matrix: entry 0 = embeddings, entry k = after executed step k, the last one
    after the model's final norm where it has one), heatmap.png and variance.png.
    """
    config = config_from_options(
        SimilarityConfig,
        {"out_dir": "--out", "num_classes": "--classes", "plan": "--plan"},
        model=model,
        plan=plan_text,
        data=data,
        data_dir=data_dir,
        limit=limit,
        seed=seed,
        out_dir=out_dir,
        batch_size=batch_size,
        max_length=max_length,
        final_norm=final_norm,
        exclude_special_tokens=exclude_special_tokens,
        num_classes=num_classes,
        dtype=dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    from surgery.analysis.run import run_similarity

    summary = run_similarity(config, progress=not quiet)
    result, classes = summary["result"], summary["classes"]
    if not quiet:
        click.echo(
            f"similarity of {result.size} hidden states ({result.executed}) over {result.num_tokens} tokens "
            f"of {result.num_texts} texts -> {config.out_dir}"
        )
        if result.num_truncated:
            click.echo(f"note: {result.num_truncated} texts truncated to {result.max_length} tokens")
        if classes is not None:
            click.echo(f"suggested classes: {classes.describe(result.labels)}")
