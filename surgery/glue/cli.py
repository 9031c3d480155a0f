"""``surgery glue``: fine-tune-then-evaluate an encoder on GLUE tasks under a layer plan (paper A.8, A.9)."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.cli.options import data_dir_option, model_loading_options, plan_option, quiet_option


@click.command("glue")
@click.argument("model")
@plan_option(what="applied to the encoder in memory")
@click.option(
    "--tasks",
    default="all",
    show_default=True,
    help="Comma-separated GLUE tasks: cola, mrpc, qnli, rte, sst2, stsb, wnli; 'all' = the paper's seven.",
)
@click.option(
    "--mode",
    type=click.Choice(["full", "frozen"]),
    default="full",
    show_default=True,
    help="full: fine-tune every parameter; frozen: train only the task head (paper A.9).",
)
@click.option("--epochs", type=int, default=3, show_default=True)
@click.option("--lr", type=float, help="Peak learning rate.  [default: 2e-5 for full, 1e-3 for frozen]")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--max-length", type=int, default=128, show_default=True, help="Truncate inputs to this many tokens.")
@click.option("--max-train", type=int, help="Train on a seeded random sample of at most N examples per task.")
@click.option("--max-eval", type=int, help="Score on a fixed random sample of at most N validation examples.")
@data_dir_option("GLUE's <Task>/train.tsv and dev.tsv, or glue/<Task>/...; tasks not found there load nyu-mll/glue")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Write the results JSON here.")
@model_loading_options
@quiet_option()
def glue(
    model,
    plan_text,
    tasks,
    mode,
    epochs,
    lr,
    batch_size,
    max_length,
    max_train,
    max_eval,
    data_dir,
    seed,
    output,
    revision,
    trust_remote_code,
    allow_pickle,
    quiet,
):
    """Fine-tune MODEL (a BERT-style encoder) on GLUE tasks with a layer plan applied, and score each task.

    Prints a table of each task's GLUE metrics and the paper's unnormalized average over tasks (a task's score
    is its metric, or the mean of its two metrics for MRPC and STS-B).
    """
    from surgery.config import config_from_options
    from surgery.glue.config import GlueConfig
    from surgery.glue.data import resolve_tasks, tasks_with_local_data

    task_names = resolve_tasks(tasks)
    if tasks.strip().lower() == "all":
        task_names = tasks_with_local_data(task_names, data_dir)
    config = config_from_options(
        GlueConfig,
        {"plan": "--plan"},
        model=model,
        plan=plan_text,
        mode=mode,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        max_train=max_train,
        max_eval=max_eval,
        seed=seed,
        data_dir=data_dir,
        revision=revision,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
    )
    from surgery.glue.train import check, run_glue

    check(config, task_names, output)
    from surgery.glue.metrics import METRIC_LABELS
    from surgery.glue.report import format_table, write_report

    def announce(result) -> None:
        if not quiet:
            metrics = ", ".join(f"{METRIC_LABELS[k]} {100 * v:.1f}" for k, v in result.metrics.items())
            click.echo(f"{result.task}: {metrics}  ({result.details['seconds']:.0f} s)", err=True)

    report = run_glue(task_names, config, progress=not quiet, on_result=announce)
    if output is not None:
        write_report(report, output)
    click.echo(format_table(report))
    if output is not None:
        click.echo(f"wrote {output}")
