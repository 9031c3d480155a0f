"""``surgery glue``: fine-tune-then-evaluate an encoder on GLUE tasks under a layer plan (paper A.8, A.9)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from surgery.errors import SurgeryError
from surgery.glue.metrics import METRIC_LABELS, TASK_METRICS

PLAN_HELP = "Layer plan applied to the encoder in memory (e.g. 'skip:2-3', 'parallel:1-4x2', or a YAML file)."


def format_table(report: dict) -> str:
    """A plain-text table of the report: each task's metrics and score (x100), then the average."""
    config = report["config"]
    rows = []
    for task, values in report["results"].items():
        metrics = "  ".join(f"{METRIC_LABELS[name]} {100 * values[name]:.1f}" for name in TASK_METRICS[task])
        rows.append((task, metrics, f"{100 * values['score']:.1f}"))
    average = report["average"]
    rows.append((f"average ({len(average['tasks'])} tasks, unnormalized)", "", f"{100 * average['score']:.1f}"))
    width = max(len(row[0]) for row in rows)
    metric_width = max(len("metrics (x100)"), *(len(row[1]) for row in rows))
    executed = {details["executed"] for details in report["details"].values()}
    plan = config["plan"] or "identity"
    lines = [
        f"GLUE  model: {config['model']}  plan: {plan} ({', '.join(sorted(executed))})  mode: {config['mode']}  "
        f"epochs: {config['epochs']}  lr: {config['lr']:g}  seed: {config['seed']}",
        f"{'task':<{width}}  {'metrics (x100)':<{metric_width}}  score",
    ]
    lines += [f"{task:<{width}}  {metrics:<{metric_width}}  {score:>5}" for task, metrics, score in rows]
    return "\n".join(lines)


@click.command("glue")
@click.argument("model")
@click.option("--plan", "plan_text", help=PLAN_HELP + "  [default: none, the unmodified model]")
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
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    help="Folder with GLUE's <Task>/train.tsv and dev.tsv (or glue/<Task>/...); default $SURGERY_DATA_DIR; tasks "
    "not found there load nyu-mll/glue from the Hub.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Write the results JSON here.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-task lines.")
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
    quiet,
):
    """Fine-tune MODEL (a BERT-style encoder) on GLUE tasks with a layer plan applied, and score each task.

    Prints a table of each task's GLUE metrics and the paper's unnormalized average over tasks (a task's score
    is its metric, or the mean of its two metrics for MRPC and STS-B).
    """
    from surgery.glue.data import resolve_tasks
    from surgery.glue.train import GlueConfig, run_glue

    task_names = resolve_tasks(tasks)
    config = GlueConfig(
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
        data_dir=str(data_dir) if data_dir is not None else None,
    )
    if output is not None and output.is_dir():
        raise SurgeryError(f"--output {output} is a directory; give a file name such as glue.json")

    def announce(result) -> None:
        if not quiet:
            metrics = ", ".join(f"{METRIC_LABELS[k]} {100 * v:.1f}" for k, v in result.metrics.items())
            click.echo(f"{result.task}: {metrics}  ({result.details['seconds']:.0f} s)", err=True)

    report = run_glue(task_names, config, progress=not quiet, on_result=announce)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(format_table(report))
    if output is not None:
        click.echo(f"wrote {output}")
