"""Command line: ``surgery apply``, ``surgery plan show``, ``surgery demo``, and the stage commands.

Every user error becomes one ``error: ...`` line on stderr and exit 2; ``surgery --debug ...`` (or
``SURGERY_DEBUG=1``) shows the traceback instead. SIGTERM (what ``timeout``, docker and Slurm send) is handled
like Ctrl-C: the running command cleans up its temporary files and exits non-zero.

Every other command (``similarity``, ``eval``, ``bench``, ``export``, ``finetune``, ``push`` ...: the names in
:data:`LAZY_COMMANDS`) lives with its package and is imported only when run, so ``surgery apply`` and
``surgery --help`` stay lean.
"""

from __future__ import annotations

import errno
import importlib
import os
import signal
import sys
from pathlib import Path

import click

from surgery import __version__
from surgery.cli.options import allow_pickle_option, base_model_option, plan_option, quiet_option, revision_option
from surgery.errors import SurgeryError
from surgery.io.hub import redact_url_secrets

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1

# name -> (module, attribute, one-line help shown by `surgery --help` without importing the module)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "similarity": (
        "surgery.analysis.cli",
        "similarity",
        "Cosine similarity between the hidden states of every pair of layers (paper Fig 3).",
    ),
    "eval": (
        "surgery.evaluation.cli",
        "eval_command",
        "Score a model, with a plan applied in memory, on the paper's benchmarks.",
    ),
    "glue": ("surgery.glue.cli", "glue", "Fine-tune and score an encoder on GLUE with a plan applied in memory."),
    "push": ("surgery.publish.cli", "push", "Publish a checkpoint to the Hugging Face Hub with a truthful model card."),
    "card": ("surgery.publish.cli", "card", "Re-render a checkpoint's model card with eval and bench results."),
    "bench": ("surgery.bench.cli", "bench", "Latency of variants side by side: prefill, decode, ratios to the first."),
    "finetune": (
        "surgery.finetune.cli",
        "finetune",
        "Heal a variant with full or LoRA fine-tuning; writes a standalone checkpoint.",
    ),
    "export": (
        "surgery.exporters.onnx.cli",
        "export",
        "Export a checkpoint to ONNX (KV cache) and check it against PyTorch.",
    ),
    "sweep": (
        "surgery.sweep.cli",
        "sweep",
        "Run a recipe's variants (a paper figure) on a model; resumable, local or on Ray.",
    ),
    "plot": ("surgery.sweep.cli", "plot", "Draw a sweep's paper-style figures and its table of scores."),
    "recipe": ("surgery.sweep.cli", "recipe", "List and validate sweep recipes (recipes/paper/)."),
}


class Terminated(BaseException):
    """Raised from the SIGTERM handler so ``finally`` / ``except BaseException`` clean-ups run."""


_handler_pid: int | None = None  # the process whose SIGTERM handler is _on_sigterm (set by SurgeryGroup.invoke)


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """Raise :class:`Terminated` in the CLI process; anywhere else (a forked child) die as SIGTERM's default does.

    A forked child inherits this handler; lm-eval's bootstrap pool is such a child, and ``Pool.terminate``
    sends SIGTERM to its workers: raising there printed worker tracebacks and could leave the parent waiting
    for a worker that never exits. :func:`_default_sigterm_in_child` resets the handler at fork; this check
    covers a child made without ``os.fork`` hooks.
    """
    if os.getpid() != _handler_pid:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


def _default_sigterm_in_child() -> None:
    """After ``os.fork`` (multiprocessing's fork workers included): SIGTERM kills the child, as by default."""
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread of the main interpreter: the handler cannot be ours
        pass


os.register_at_fork(after_in_child=_default_sigterm_in_child)


class SurgeryGroup(click.Group):
    """Click group that turns exceptions into one clear line unless debugging, and loads commands lazily."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attribute, _ = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in LAZY_COMMANDS and name not in self.commands:
                rows.append((name, LAZY_COMMANDS[name][2]))
            else:
                command = self.commands[name]
                rows.append((name, command.get_short_help_str(limit=formatter.width - 6 - len(name))))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        global _handler_pid
        _handler_pid = os.getpid()
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return super().invoke(ctx)
        except SurgeryError as exc:
            if _debug(ctx):
                raise
            click.echo(f"error: {redact_url_secrets(exc)}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo("error: terminated (SIGTERM)", err=True)
            ctx.exit(143)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG or _debug(ctx):
                raise
            # only a path from the command line can be this long: the user's input, not an internal error
            name = str(exc.filename or "")
            shown = name if len(name) <= 80 else name[:77] + "..."
            click.echo(f"error: path too long for the file system (a name over 255 bytes): {shown}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
            if _debug(ctx):
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            shown = redact_url_secrets(first)
            click.echo(f"error: {type(exc).__name__}: {shown} (run with --debug for the traceback)", err=True)
            ctx.exit(EXIT_INTERNAL_ERROR)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _debug(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool((root.obj or {}).get("debug")) or os.environ.get("SURGERY_DEBUG") == "1"


@click.group(cls=SurgeryGroup)
@click.version_option(__version__, prog_name="surgery")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Layer surgery on pretrained transformers: skip, reorder, repeat or parallelize layers."""
    ctx.obj = {"debug": debug}


@main.command()
@plan_option(required=True)
@click.argument("model")
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    help="Store floating tensors in this dtype (default: source dtype).",
)
@click.option(
    "--shard-size",
    default="5GB",
    show_default=True,
    help="Maximum safetensors shard size. From a safetensors source, output shards also end where the source's "
    "files end (each shard copies from one source file, page-aligned, at the speed of cp), so a model can have "
    "more, smaller shards than this size asks for.",
)
@click.option("--tie-repeats", is_flag=True, help="Store each unique layer once (uses the surgery model class).")
@click.option(
    "--surgery-class",
    is_flag=True,
    help="Always write the surgery model class (even when the source architecture could express the plan).",
)
@click.option(
    "--no-fuse",
    is_flag=True,
    help="Surgery class: run a parallel block's members one by one instead of fused (same numbers, slower).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@base_model_option()
@revision_option()
@allow_pickle_option()
@quiet_option()
def apply(
    plan_text,
    model,
    out_dir,
    dtype,
    shard_size,
    tie_repeats,
    surgery_class,
    no_fuse,
    overwrite,
    base_model,
    revision,
    allow_pickle,
    quiet,
):
    """Apply a layer plan to MODEL (Hub id, directory or .gguf) and write a standalone checkpoint to OUT_DIR."""
    from surgery.apply.materialize import ApplyOptions, apply_plan
    from surgery.config import config_from_options
    from surgery.io.safetensors_stream import parse_size

    options = config_from_options(
        ApplyOptions,
        dtype=dtype,
        shard_size=parse_size(shard_size),
        tie_repeats=tie_repeats,
        surgery_class=surgery_class,
        fuse_parallel=not no_fuse,
        overwrite=overwrite,
        base_model=base_model,
        revision=revision,
        allow_pickle=allow_pickle,
        progress=not quiet,
    )
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if quiet:
            return
        if bar is None:
            from tqdm.std import tqdm  # not tqdm.auto: its notebook probe costs ~20 ms of start-up

            bar = tqdm(total=total, unit="B", unit_scale=True, desc="writing weights", file=sys.stderr)
        bar.update(done - bar.n)

    try:
        result = apply_plan(model, plan_text, out_dir, options, progress)
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        execution = result.execution
        layout = "surgery model class (trust_remote_code=True)" if result.custom_class else "source architecture"
        click.echo(f"wrote {result.out_dir}  ({result.bytes_written / 1e6:.1f} MB of weights, {layout})")
        click.echo(
            f"layers: {execution.num_source_layers} source -> {len(execution.instances)} executed, "
            f"{result.num_stored_layers} stored"
        )
        click.echo(f"executed sequence: {execution.describe()}")


@main.group()
def plan() -> None:
    """Inspect layer plans without touching weights."""


@plan.command("show")
@plan_option(required=True)
@click.argument("model", required=False)
@click.option("--layers", "num_layers", type=int, help="Number of source layers (instead of reading MODEL's config).")
@click.option("--json", "as_json", is_flag=True, help="Print the resolved plan as JSON.")
def plan_show(plan_text, model, num_layers, as_json):
    """Print the executed layer sequence of a plan for MODEL (or for --layers T).

    With MODEL, also the detected block list and every per-layer config key with the value it gets.
    """
    import json

    from surgery.architectures.specs import check_model_type, layer_count
    from surgery.io.model_ref import ModelRef
    from surgery.plan import load_plan, resolve_plan

    if (model is None) == (num_layers is None):
        raise SurgeryError("give either MODEL or --layers T (not both)")
    layer_plan = load_plan(plan_text)
    config = None
    if num_layers is None:
        config = ModelRef.parse(model).read_config()
        check_model_type(config)
        num_layers = layer_count(config, model)
    elif num_layers < 1:
        raise SurgeryError(f"--layers must be >= 1 (got {num_layers})")
    execution = resolve_plan(layer_plan, num_layers)
    layers = _detected_layers(config, execution) if config is not None else None
    if as_json:
        payload = {
            "plan": layer_plan.canonical,
            "source_layers": num_layers,
            "steps": [list(step.layers) for step in execution.steps],
            "executed_layers": len(execution.instances),
            "skipped": list(execution.skipped),
            "needs_custom_class": execution.needs_custom_class(),
        }
        if layers is not None:
            payload["layer_list"], payload["per_layer_config"] = layers
        click.echo(json.dumps(payload))
        return
    click.echo(f"plan:      {layer_plan.canonical}")
    click.echo(f"source:    {num_layers} layers")
    click.echo(f"executed:  {len(execution.instances)} layer instances in {len(execution.steps)} steps")
    click.echo(f"skipped:   {' '.join(map(str, execution.skipped)) or '-'}")
    click.echo(f"sequence:  {execution.describe()}")
    layout = "surgery model class (parallel block)" if execution.has_parallel else "source architecture"
    click.echo(f"output:    {layout}")
    if layers is not None:
        click.echo(f"layers:    {layers[0]} (detected block list; tensor prefix of every per-layer weight)")
        if not layers[1]:
            click.echo("per-layer: no per-layer config keys")
        for key, (before, after) in layers[1].items():
            click.echo(f"per-layer: {key}: {_short(before)} -> {_short(after)}")


def _short(value, limit: int = 160) -> str:
    """A config value on one line; lists as runs (``[full_attention x6, sliding_attention x2]``)."""
    import json
    from itertools import groupby

    if isinstance(value, list):
        runs = [(item, len(list(group))) for item, group in groupby(value)]
        text = (
            "[" + ", ".join(f"{json.dumps(item)}" + (f" x{count}" if count > 1 else "") for item, count in runs) + "]"
        )
    else:
        text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _detected_layers(config: dict, execution) -> tuple[str, dict]:
    """The detected block list and ``{per-layer config key: (source value, output value)}`` for ``plan show``.

    Detection comes from, and goes to, the detection cache (:mod:`surgery.architectures.cache`, keyed by the
    config's content): a cached config whose layers are identical and whose per-layer keys are lists in the file
    is answered from the file alone, without importing torch or transformers.
    """
    from surgery.architectures import cache as detection_cache
    from surgery.architectures.layer_config import raw_layer_config_updates
    from surgery.architectures.specs import spec_from_detection

    sources = list(execution.instances)
    cached = detection_cache.load(config)
    if cached is not None and detection_cache.plain_from_raw(cached, config):
        updates = raw_layer_config_updates(config, spec_from_detection(cached), sources)
        keys = {cached.count_key: None, **dict.fromkeys(updates)}
        return cached.layer_path, {key: (config.get(key), updates.get(key, config.get(key))) for key in keys}
    from surgery.architectures.detect import detect
    from surgery.architectures.layer_config import layer_config_updates
    from surgery.architectures.specs import transformers_config

    source = transformers_config(config)
    detection = detect(source)
    if config.get("model_type") != "surgery":  # a surgery checkpoint is detected as its source architecture
        detection_cache.store(config, detection)
    updates = layer_config_updates(source, spec_from_detection(detection), sources)
    keys = {detection.count_key: None, **dict.fromkeys(updates)}
    changes = {key: (getattr(source, key, None), updates.get(key, getattr(source, key, None))) for key in keys}
    return detection.layer_path, changes


@main.command()
@plan_option(default="skip:13-19")
@click.option(
    "--out",
    "out_dir",
    default="demo-out",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Output folder of the demo checkpoint (replaced on every run).",
)
@click.option("--prompt", default="What is the capital of France?", show_default=True)
@click.option("--max-new-tokens", default=24, show_default=True)
def demo(plan_text, out_dir, prompt, max_new_tokens):
    """Apply a plan to the bundled SmolLM2-135M-Instruct and compare it with the source model."""
    from surgery.apply.demo import run_demo

    run_demo(plan_text, out_dir, prompt, max_new_tokens)


if __name__ == "__main__":  # pragma: no cover
    main()
