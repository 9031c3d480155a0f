"""``surgery similarity``: hidden-state similarity between layers of a (planned) model, written to a folder.

Registered on the main CLI with ``main.add_command(similarity)``; errors are :class:`SurgeryError`, which
the main group turns into one ``error: ...`` line.
"""

from __future__ import annotations

from pathlib import Path

import click

from surgery import __version__
from surgery.cli_options import data_dir_option, dtype_option, model_loading_options, plan_option, quiet_option
from surgery.errors import SurgeryError


def _checkpoint_plan(model: str) -> dict | None:
    """The plan recorded in a ``surgery apply`` output (``surgery.json``), if MODEL is one."""
    from surgery.provenance import Provenance

    directory = Path(model).expanduser()
    record = Provenance.read(directory) if directory.is_dir() else None
    return None if record is None else record.plan.model_dump()


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
    from surgery.extras import require_extra
    from surgery.io.data_dir import resolve_data_dir
    from surgery.io.loading import check_loadable

    # cheap checks first: arguments, model reference, data and plan errors before any heavy import
    require_extra("eval", "similarity", ("numpy", "matplotlib"))
    if out_dir.exists() and not out_dir.is_dir():
        raise SurgeryError(f"--out {out_dir} exists and is not a directory")
    if num_classes < 0:
        raise SurgeryError(f"--classes must be >= 0 (got {num_classes})")
    for name, value in (("--limit", limit), ("--batch-size", batch_size), ("--max-length", max_length)):
        if value < 1:
            raise SurgeryError(f"{name} must be >= 1 (got {value})")
    if plan_text is not None:
        from surgery.plan import load_plan

        load_plan(plan_text)
    ref, _, _ = check_loadable(model, revision=revision, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    from surgery.analysis.texts import load_texts

    texts = load_texts(data, data_dir=data_dir, limit=limit, seed=seed)
    from surgery.analysis.plots import plot_heatmap, plot_layer_stats
    from surgery.analysis.report import FILES, write_result
    from surgery.analysis.similarity import compute_similarity, suggest_layer_classes
    from surgery.io.loading import load_model_and_tokenizer

    loaded, tokenizer = load_model_and_tokenizer(
        model, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    checkpoint_plan = _checkpoint_plan(model)
    source_steps = checkpoint_plan.get("steps") if checkpoint_plan else None
    result = compute_similarity(
        loaded,
        tokenizer,
        texts.texts,
        plan=plan_text,
        batch_size=batch_size,
        max_length=max_length,
        final_norm=final_norm,
        exclude_special_tokens=exclude_special_tokens,
        source_steps=source_steps,
        progress=not quiet,
    )
    classes = suggest_layer_classes(result.matrix, num_classes) if 0 < num_classes <= result.size else None

    out_dir.mkdir(parents=True, exist_ok=True)
    name = ref.name
    plans = [f"model plan {checkpoint_plan['canonical']}"] if checkpoint_plan else []
    plans += [f"plan {result.plan}"] if result.plan else []
    subtitle = " + ".join(plans) if plans else "no plan"
    data_name = "LAMBADA" if texts.source == "lambada" else Path(texts.location).name
    title = (
        f"Avg. cosine similarity between hidden states\n{name} ({subtitle}; executed {result.executed})\n"
        f"{result.num_texts} {data_name} texts, {result.num_tokens} tokens"
    )
    plot_heatmap(result, out_dir / FILES["heatmap"], title=title, classes=classes)
    plot_layer_stats(
        [("", result)],
        out_dir / FILES["variance"],
        title=f"Hidden-state statistics per layer\n{name} ({subtitle})",
    )
    record = {
        "surgery_version": __version__,
        "analysis": "layer similarity (Transformer Layers as Painters, §3.1 Fig 3, A.3 Fig 14, A.4 Fig 15)",
        "config": {
            "model": model,
            "model_plan": checkpoint_plan,
            "plan": plan_text,
            "plan_canonical": result.plan,
            "data": data,
            "data_dir": None if texts.source != "lambada" else _str(resolve_data_dir(data_dir)),
            "data_location": texts.location,
            "limit": limit,
            "seed": seed,
            "batch_size": batch_size,
            "max_length": max_length,
            "final_norm": final_norm,
            "exclude_special_tokens": exclude_special_tokens,
            "dtype": dtype,
            "revision": revision,
        },
        "texts_available": texts.available,
        "hidden_states": result.to_dict(),
        "layer_classes": classes.to_dict(result.labels) if classes else None,
    }
    write_result(out_dir, result, record)
    if not quiet:
        click.echo(
            f"similarity of {result.size} hidden states ({result.executed}) over {result.num_tokens} tokens "
            f"of {result.num_texts} texts -> {out_dir}"
        )
        if result.num_truncated:
            click.echo(f"note: {result.num_truncated} texts truncated to {result.max_length} tokens")
        if classes is not None:
            click.echo(f"suggested classes: {classes.describe(result.labels)}")


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)
