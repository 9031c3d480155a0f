"""``surgery similarity`` as a function: :func:`run_similarity` loads the model, measures, plots and writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from surgery import __version__
from surgery.analysis.config import SimilarityConfig

ANALYSIS = "layer similarity (Transformer Layers as Painters, §3.1 Fig 3, A.3 Fig 14, A.4 Fig 15)"


def checkpoint_plan(model: str) -> dict | None:
    """The plan recorded in a ``surgery apply`` output (``surgery.json``), if MODEL is one."""
    from surgery.apply.provenance import Provenance

    directory = Path(model).expanduser()
    record = Provenance.read(directory) if directory.is_dir() else None
    return None if record is None else record.plan.model_dump()


def check(config: SimilarityConfig):
    """Everything that can be refused before the model loads (well under a second); returns the model ref."""
    from surgery.architectures.loading import check_loadable
    from surgery.cli.extras import require_extra
    from surgery.io.data_dir import resolve_data_dir

    require_extra("eval", "similarity", ("numpy", "matplotlib"))
    from surgery.io.output_dir import check_creatable

    check_creatable(config.out_dir, "--out", beside=False)  # written in place
    if resolve_data_dir(config.data_dir) is None and config.data.lower() == "lambada":
        from surgery.io.hub import prepare_hub

        prepare_hub()  # LAMBADA will come from the Hub: know now, and fast, if it cannot
    if config.plan is not None:
        from surgery.plan import load_plan

        load_plan(config.plan)
    ref, _, _ = check_loadable(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    return ref


def run_similarity(config: SimilarityConfig, *, progress: bool = True) -> dict[str, Any]:
    """Measure, plot and write ``similarity.json`` & co. into ``config.out_dir``; returns the summary record.

    The record's ``result`` and ``classes`` entries hold the :class:`SimilarityResult` and suggested classes.
    """
    ref = check(config)
    from surgery.analysis.texts import load_texts

    texts = load_texts(config.data, data_dir=config.data_dir, limit=config.limit, seed=config.seed)
    from surgery.analysis.plots import plot_heatmap, plot_layer_stats
    from surgery.analysis.report import FILES, write_result
    from surgery.analysis.similarity import compute_similarity, suggest_layer_classes
    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.io.data_dir import resolve_data_dir

    loaded, tokenizer = load_model_and_tokenizer(
        config.model,
        dtype=config.dtype,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    model_plan = checkpoint_plan(config.model)
    result = compute_similarity(
        loaded,
        tokenizer,
        texts.texts,
        plan=config.plan,
        batch_size=config.batch_size,
        max_length=config.max_length,
        final_norm=config.final_norm,
        exclude_special_tokens=config.exclude_special_tokens,
        source_steps=model_plan.get("steps") if model_plan else None,
        progress=progress,
    )
    classes = (
        suggest_layer_classes(result.matrix, config.num_classes) if 0 < config.num_classes <= result.size else None
    )
    out_dir = config.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    plans = [f"model plan {model_plan['canonical']}"] if model_plan else []
    plans += [f"plan {result.plan}"] if result.plan else []
    subtitle = " + ".join(plans) if plans else "no plan"
    data_name = "LAMBADA" if texts.source == "lambada" else Path(texts.location).name
    title = (
        f"Avg. cosine similarity between hidden states\n{ref.name} ({subtitle}; executed {result.executed})\n"
        f"{result.num_texts} {data_name} texts, {result.num_tokens} tokens"
    )
    plot_heatmap(result, out_dir / FILES["heatmap"], title=title, classes=classes)
    plot_layer_stats(
        [("", result)], out_dir / FILES["variance"], title=f"Hidden-state statistics per layer\n{ref.name} ({subtitle})"
    )
    data_dir = resolve_data_dir(config.data_dir) if texts.source == "lambada" else None
    settings = config.record()
    settings.pop("out_dir")
    record = {
        "surgery_version": __version__,
        "analysis": ANALYSIS,
        "config": {
            **settings,
            "model_plan": model_plan,
            "plan_canonical": result.plan,
            "data_dir": None if data_dir is None else str(data_dir),
            "data_location": texts.location,
        },
        "texts_available": texts.available,
        "hidden_states": result.to_dict(),
        "layer_classes": classes.to_dict(result.labels) if classes else None,
    }
    write_result(out_dir, result, record)
    return {**record, "result": result, "classes": classes}
