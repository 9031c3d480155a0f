"""Write the healed model as a standalone checkpoint of the same kind as the input.

* plain transformers input -> ``save_pretrained(safe_serialization=True)``: loads without ``trust_remote_code``;
* surgery-class input (parallel blocks, tied repeats) -> the same class, its modeling files copied from
  :data:`surgery.modeling.MODELING_FILES` byte for byte (so the checkpoint stays trusted by hash); layers stored
  once stay stored once (a tied checkpoint does not grow);
* ``--plan`` -> the trained source model is saved to a temporary folder and the plan is materialized from it with
  :func:`surgery.apply.materialize.apply_plan`, exactly as ``surgery apply`` would write it.

``surgery.json`` carries the input's provenance (or a new record for a model that had none) plus a ``finetune``
stage.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from surgery.apply.provenance import PlanRecord, Provenance
from surgery.io.model_ref import ModelRef

SAVE_DTYPES = ("float16", "bfloat16")


def stored_dtype(raw_config: dict[str, Any]) -> str | None:
    """The input's stored float dtype when it is a half type (the output keeps it); None keeps fp32."""
    value = raw_config.get("dtype") or raw_config.get("torch_dtype")
    return value if value in SAVE_DTYPES else None


def save_same_kind(model, tokenizer, directory: Path, *, surgery_class: bool, dtype: str | None) -> None:
    """Weights, config, generation config and tokenizer of ``model`` into ``directory``."""
    import torch

    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(directory, safe_serialization=True)
    if surgery_class:
        from surgery.modeling import MODELING_FILES

        for path in MODELING_FILES:
            shutil.copyfile(path, Path(directory) / path.name)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_planned(model, tokenizer, plan: str, directory: Path, *, tie_repeats: bool, dtype: str | None) -> Provenance:
    """Materialize ``plan`` from the trained source ``model`` into ``directory``; returns apply's provenance."""
    from surgery.apply.materialize import ApplyOptions, apply_plan

    with tempfile.TemporaryDirectory(prefix="surgery-finetune-source-") as scratch:
        source = Path(scratch) / "source"
        save_same_kind(model, tokenizer, source, surgery_class=False, dtype=dtype)
        variant = Path(directory) / ".variant"
        apply_plan(str(source), plan, variant, ApplyOptions(tie_repeats=tie_repeats))
        for path in variant.iterdir():
            shutil.move(str(path), Path(directory) / path.name)
        variant.rmdir()
    return Provenance.read(directory)


def new_source(ref: ModelRef, num_layers: int) -> dict[str, Any]:
    """A ``source`` record for a model without ``surgery.json`` (the keys ``apply`` writes, where known)."""
    return {
        "given": ref.given,
        "kind": ref.kind,
        "source": str(ref.path) if ref.path is not None else None,
        "repo_id": ref.repo_id,
        "revision": ref.revision,
        "num_layers": num_layers,
    }


def input_provenance(ref: ModelRef, raw_config: dict[str, Any], num_layers: int) -> Provenance:
    """The input checkpoint's ``surgery.json``, or a new record (identity plan) for a model without one."""
    if ref.kind == "directory":
        record = Provenance.read(ref.path)
        if record is not None:
            return record
    from surgery.plan import load_plan, resolve_plan

    plan = load_plan("identity")
    execution = resolve_plan(plan, num_layers)
    return Provenance(
        plan=PlanRecord(
            given=plan.text,
            canonical=plan.canonical,
            executed=execution.describe(),
            steps=[list(step.layers) for step in execution.steps],
        ),
        source=new_source(ref, num_layers),
        output={
            "layout": "source",
            "architecture": (raw_config.get("architectures") or [None])[0],
            "executed_layers": num_layers,
            "stored_layers": num_layers,
            "stored_layer_sources": list(range(num_layers)),
            "tie_repeats": False,
        },
    )


def planned_source(ref: ModelRef, num_layers: int) -> dict[str, Any]:
    """The ``source`` record of a ``--plan`` output: the input's own source when the input is an identity
    ``apply`` output (e.g. a dequantized GGUF), else the input itself."""
    if ref.kind == "directory":
        record = Provenance.read(ref.path)
        if record is not None and record.plan.canonical == "identity":
            return {**record.source, "finetune_input": ref.given}
    return {**new_source(ref, num_layers), "finetune_input": ref.given}


def input_base_model(ref: ModelRef) -> str | None:
    """The ``base_model`` (``--base-model``) the input's ``surgery.json`` names: still the Hub ancestor of a
    ``--plan`` output made from it."""
    record = Provenance.read(ref.path) if ref.kind == "directory" else None
    return record.base_model if record is not None else None


def write_card(directory: Path, record: Provenance, name: str) -> None:
    """Re-render ``README.md`` (the model card) from the record, which now has a ``finetune`` stage."""
    from surgery.apply.card import render_model_card
    from surgery.fileio import atomic_write_text

    custom = record.output.get("layout") == "surgery"
    text = render_model_card(Path(directory), record, name=name, custom_class=custom, generative=True)
    atomic_write_text(Path(directory) / "README.md", text)
