"""``surgery card`` and ``surgery push``: thin commands over :mod:`surgery.publish.render` / ``.push``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from surgery.cli.options import base_model_option, quiet_option
from surgery.config import config_from_options
from surgery.publish.config import CardConfig, PushConfig

OPTION_NAMES = {"eval_files": "--eval", "include_onnx": "--include-onnx", "repo_id": "REPO_ID"}


def measurement_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--eval FILE`` (repeatable), ``--baseline FILE`` and ``--bench FILE``."""
    options = [
        click.option(
            "--eval",
            "eval_files",
            multiple=True,
            type=click.Path(path_type=Path),
            help="A `surgery eval --output` JSON of this checkpoint (repeatable: one per run). Replaces the "
            "results the card showed before.",
        ),
        click.option(
            "--baseline",
            type=click.Path(path_type=Path),
            help="The base model's `surgery eval --output` JSON (same tasks and --limit): shown beside each "
            "result, and the normalized median is computed against it.",
        ),
        click.option(
            "--bench",
            type=click.Path(path_type=Path),
            help="A `surgery bench` JSON: latency rows and ratios, with the machine they ran on.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _summary(card) -> str:
    measured = card.measurements
    tasks = len(measured.merged_results())
    parts = [
        f"{tasks} eval task(s)" if tasks else "",
        f"{len(measured.bench.results)} latency row(s)" if measured.bench else "",
    ]
    return ", ".join(part for part in parts if part) or "no measurements"


@click.command("card")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@measurement_options
@click.option(
    "--name",
    help="The Hub repo id (owner/name) the card tells users to load [default: the repo id of the last push; else "
    "the card shows a path/to/FOLDER placeholder to replace].",
)
@base_model_option()
@click.option("--print", "show", is_flag=True, help="Print the card after writing it.")
def card(checkpoint, eval_files, baseline, bench, name, base_model, show):
    """Re-render CHECKPOINT's README.md model card from its surgery.json and measurement files; no network.

    Results given once (--eval/--baseline/--bench) are kept in surgery.json, so later `surgery card` and
    `surgery push` runs show them without the options; giving an option again replaces that kind.
    """
    config = config_from_options(
        CardConfig,
        OPTION_NAMES,
        checkpoint=checkpoint,
        eval_files=list(eval_files),
        baseline=baseline,
        bench=bench,
        name=name,
        base_model=base_model,
    )
    from surgery.publish.render import update_card

    path, rendered = update_card(config)
    if show:
        click.echo(rendered.text)
    click.echo(f"wrote {path} ({_summary(rendered)}; model name {rendered.name})")


@click.command("push")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository private (an existing one keeps its visibility).")
@click.option("--revision", default="main", show_default=True, help="Branch to push to (created if missing).")
@click.option("--commit-message", help="Commit message [default: 'Upload REPO_ID: PLAN (surgery VERSION)'].")
@measurement_options
@click.option(
    "--include-onnx",
    type=click.Path(path_type=Path),
    help="Also upload this `surgery export onnx` folder as onnx/ (it must come from CHECKPOINT).",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the repo id, every file with its size and the card; upload nothing."
)
@click.option(
    "--token-env",
    default="HF_TOKEN",
    show_default=True,
    help="Environment variable holding a Hub token with write access.",
)
@base_model_option()
@quiet_option()
def push(
    checkpoint,
    repo_id,
    private,
    revision,
    commit_message,
    eval_files,
    baseline,
    bench,
    include_onnx,
    dry_run,
    token_env,
    base_model,
    quiet,
):
    """Publish the `surgery apply` output CHECKPOINT to the Hub as the model REPO_ID (owner/name).

    Uploads weights, config, tokenizer, the surgery class files when there are any, surgery.json (with a
    `push` stage) and a README.md card re-rendered for REPO_ID with the measured results. Rerunning an
    interrupted push resends only what is missing. The token comes from $HF_TOKEN (see --token-env).
    """
    config = config_from_options(
        PushConfig,
        OPTION_NAMES,
        checkpoint=checkpoint,
        repo_id=repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        eval_files=list(eval_files),
        baseline=baseline,
        bench=bench,
        include_onnx=include_onnx,
        dry_run=dry_run,
        token_env=token_env,
        base_model=base_model,
    )
    from surgery.apply.card import plain_line
    from surgery.fileio import format_bytes, format_table
    from surgery.publish.push import push_checkpoint

    if quiet:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    plan = push_checkpoint(config, log=(lambda line: None) if quiet else click.echo)
    if dry_run:
        visibility = "private" if private else "public"
        click.echo(f"repo:     {repo_id} (model, revision {revision}; created {visibility} if it does not exist)")
        click.echo(f"files:    {len(plan.files)}, {format_bytes(plan.total_bytes)} in all")
        rows = [[plain_line(name), format_bytes(size)] for name, size in plan.files]  # no terminal escapes
        click.echo("\n".join("  " + line for line in format_table(["path", "size"], rows).splitlines()))
        if plan.left_out:
            click.echo(f"left out: {', '.join(plain_line(name) for name in plan.left_out)}")
        click.echo("card (README.md):\n")
        click.echo(plan.card.text)
        click.echo("dry run: nothing was uploaded and no file was changed")
        return
    if not quiet:
        click.echo(
            f"pushed {len(plan.files)} files ({format_bytes(plan.total_bytes)}) to {plan.result['repo_url']}"
            f"\ncommit: {plan.result['commit_url']}"
        )
