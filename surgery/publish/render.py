"""``surgery card``: re-render a checkpoint's README.md from ``surgery.json`` and measurement files, no network."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.apply.provenance import Provenance
from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_text
from surgery.io.model_ref import first_line
from surgery.publish.checkpoint import Checkpoint, read_checkpoint
from surgery.publish.config import CardConfig, CardInputs
from surgery.publish.labels import variant_label
from surgery.publish.measurements import Measurements, resolve_measurements
from surgery.publish.results import OnnxExport, card_extras


@dataclass
class RenderedCard:
    """A card and the record it was rendered from (``measurements`` updated, not yet written)."""

    record: Provenance
    text: str
    measurements: Measurements
    name: str


def render_card(
    checkpoint: Checkpoint, inputs: CardInputs, *, name: str, onnx: OnnxExport | None = None
) -> RenderedCard:
    """The card of ``checkpoint`` under ``name`` with the measurements ``inputs`` give (or the kept ones)."""
    measurements = resolve_measurements(
        checkpoint.record, eval_files=list(inputs.eval_files), baseline=inputs.baseline, bench=inputs.bench
    )
    record = checkpoint.record.model_copy(deep=True)
    record.measurements = measurements.dump()
    if inputs.base_model is not None:
        record.base_model = inputs.base_model
    extras = card_extras(measurements, name=name, onnx=onnx, own_label=variant_label(record))
    text = checkpoint.render_card(record, name=name, extras=extras)
    return RenderedCard(record, hub_checked(text), measurements, name)


def hub_checked(text: str) -> str:
    """``text`` once ``huggingface_hub.ModelCard`` has parsed it and re-rendered it to the same bytes."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except ValueError as exc:
        raise SurgeryError(f"huggingface_hub cannot parse the card's metadata: {first_line(exc)}") from None
    if str(card) != text:
        raise RuntimeError("the card changes when huggingface_hub re-renders it (front matter not in its format)")
    return text


def update_card(config: CardConfig) -> tuple[Path, RenderedCard]:
    """Re-render README.md in place (and keep the measurements in ``surgery.json``); returns the card's path."""
    checkpoint = read_checkpoint(config.checkpoint)
    card = render_card(checkpoint, config, name=config.name or checkpoint.default_name())
    if (card.record.measurements, card.record.base_model) != (
        checkpoint.record.measurements,
        checkpoint.record.base_model,
    ):
        card.record.write(checkpoint.path)
    path = checkpoint.path / "README.md"
    atomic_write_text(path, card.text)
    return path, card
