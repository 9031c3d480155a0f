"""``surgery.json``: the typed provenance record of a checkpoint, which every stage appends to.

``apply`` creates it (plan as given / canonical / executed, source, output layout); later stages (fine-tuning,
export, push) read it back with :meth:`Provenance.read`, add one :class:`Stage` each with
:meth:`Provenance.add_stage` and write it again. Validated with pydantic at the edge, so a hand-edited or
hostile ``surgery.json`` gives one clear error instead of a ``KeyError`` deep in a command. It is a record of
what was done, never evidence of trust: code in a checkpoint is checked by hash (:mod:`surgery.io.model_ref`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from surgery import __version__
from surgery.config import validation_message
from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_text

PROVENANCE_FILE = "surgery.json"


class PlanRecord(BaseModel):
    """The plan as the user gave it, its canonical text, the executed sequence and its steps."""

    model_config = ConfigDict(extra="allow")

    given: str
    canonical: str
    executed: str
    steps: list[list[int]]


class Stage(BaseModel):
    """One stage that produced or changed the checkpoint (``apply``, ``finetune``, ``export``, ``push``...)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    surgery_version: str = __version__
    date: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    details: dict[str, Any] = Field(default_factory=dict)


class Provenance(BaseModel):
    """The whole record; ``source`` and ``output`` are open mappings (their keys are listed in the README)."""

    model_config = ConfigDict(extra="allow")

    surgery_version: str = __version__
    plan: PlanRecord
    source: dict[str, Any]
    output: dict[str, Any]
    history: list[Stage] = Field(default_factory=list)
    # What the model card shows as measured (eval / baseline / bench payloads, validated and trimmed by
    # surgery.publish.measurements); set by `surgery card` / `surgery push`, absent until then.
    measurements: dict[str, Any] | None = None
    # The Hub model the source is a copy of (``--base-model owner/name`` of apply, card or push): the card's
    # ``base_model``, so a pushed variant links to its parent in the Hub's model tree. Absent until given.
    base_model: str | None = None

    def add_stage(self, stage: str, **details: Any) -> Stage:
        """Append a stage (with this package's version and the UTC time) and return it."""
        record = Stage(stage=stage, details=details)
        self.history.append(record)
        return record

    def write(self, directory: Path) -> None:
        atomic_write_text(Path(directory) / PROVENANCE_FILE, self.to_json())

    def to_json(self) -> str:
        """The text of ``surgery.json`` (``measurements`` and ``base_model`` left out while there are none)."""
        exclude = {key for key in ("measurements", "base_model") if getattr(self, key) is None}
        return self.model_dump_json(indent=2, exclude=exclude or None) + "\n"

    @classmethod
    def read(cls, directory: Path) -> Provenance | None:
        """The record of a checkpoint directory, or None when it has no ``surgery.json``."""
        path = Path(directory) / PROVENANCE_FILE
        if not path.is_file():
            return None
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise SurgeryError(f"invalid {PROVENANCE_FILE} in {directory}: {validation_message(exc)}") from None
