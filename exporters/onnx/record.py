"""Which checkpoint an ONNX export was made from: written into ``export.json`` and read back, in one place.

The exporter records ``source_checkpoint``: ``path``, the checkpoint's location *relative to the export
folder* (so it still names the same folder when ``surgery bench`` or ``surgery push`` runs from another working
directory, or when both folders move together), and ``identity``, the checkpoint's fingerprint
(:func:`surgery.sweep.run.model_identity`: sha256 over ``config.json`` and each weight file's name, size and first
and last MiB; a Hub source records ``hub`` and its ``hub:ID@REVISION`` identity instead of a path).

Readers call :func:`export_source`: the checkpoint found at the recorded path is used only when its fingerprint
matches. Records written before ``source_checkpoint`` existed hold only ``checkpoint``, the path as given to
``export`` (relative to wherever it ran): it is tried relative to the export folder, then to the working
directory, and accepted only when the candidate's shape (layer instances, hidden size, vocabulary) and, when both
have one, its ``surgery.json`` plan and source agree with the export's — a weaker check, reported as such.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError

EXPORT_FILE = "export.json"
SHAPE_KEYS = ("num_hidden_layers", "hidden_size", "vocab_size")


def source_record(ref, model_config: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``export.json``'s ``source_checkpoint``: where the checkpoint is from ``out_dir``, and its fingerprint."""
    from surgery.sweep.run import model_identity

    identity = model_identity(ref, model_config)
    if ref.path is None:
        return {"hub": ref.repo_id, "revision": ref.revision, "identity": identity}
    return {"path": os.path.relpath(Path(ref.path).resolve(), Path(out_dir).resolve()), "identity": identity}


def read_export_record(directory: Path) -> dict[str, Any]:
    """``export.json`` of an export folder, checked for the keys readers rely on (one clear error otherwise)."""
    from surgery.io.model_ref import read_json_object

    path = Path(directory) / EXPORT_FILE
    record = read_json_object(path, EXPORT_FILE)
    source = record.get("source_checkpoint")
    if source is not None:
        if not isinstance(source, dict) or not isinstance(source.get("identity"), str):
            raise SurgeryError(f"{path}: source_checkpoint must be an object with an identity string")
        if not isinstance(source.get("path", source.get("hub")), str):
            raise SurgeryError(f"{path}: source_checkpoint needs a path (or hub id) string")
    checkpoint = record.get("checkpoint")
    if checkpoint is not None and not isinstance(checkpoint, str):
        raise SurgeryError(f"{path}: checkpoint must be a string, not {type(checkpoint).__name__}")
    return record


@dataclass(frozen=True)
class ExportSource:
    """The checkpoint behind an export: ``path`` when found and matched, else None and ``reason``."""

    path: Path | None
    reason: str | None = None
    verified_by: str | None = None  # "identity", or the weaker legacy check


def export_source(directory: Path) -> ExportSource:
    """The checkpoint an export folder was made from, verified (see the module docstring).

    Raises :class:`SurgeryError` for an unreadable or malformed ``export.json``; a checkpoint that is missing or
    is not the one exported is not an error here, it is returned with the reason (callers decide).
    """
    directory = Path(directory)
    if not (directory / EXPORT_FILE).is_file():
        return ExportSource(None, f"no {EXPORT_FILE} in {directory}")
    record = read_export_record(directory)
    source = record.get("source_checkpoint")
    if source is not None:
        return _by_identity(directory, source)
    if record.get("checkpoint") is None:
        return ExportSource(None, f"{EXPORT_FILE} names no checkpoint")
    return _legacy(directory, record["checkpoint"])


def _by_identity(directory: Path, source: dict[str, Any]) -> ExportSource:
    from surgery.io.model_ref import ModelRef
    from surgery.sweep.run import model_identity

    if "path" not in source:
        return ExportSource(None, f"exported from the Hub model {source['hub']}, not a local checkpoint")
    candidate = directory / Path(source["path"]).expanduser()
    if not (candidate / "config.json").is_file():
        return ExportSource(None, f"the checkpoint it was exported from ({candidate}) is not there")
    ref = ModelRef.parse(str(candidate))
    if model_identity(ref, ref.read_config()) != source["identity"]:
        return ExportSource(None, f"{candidate} is not the checkpoint it was exported from (its weights differ)")
    return ExportSource(candidate, verified_by="identity")


def _legacy(directory: Path, checkpoint: str) -> ExportSource:
    """An export.json without source_checkpoint: the path as given to export, matched by shape and plan."""
    from surgery.apply.provenance import Provenance
    from surgery.io.model_ref import ModelRef, read_json_object

    given = Path(checkpoint).expanduser()
    candidates = [given] if given.is_absolute() else [directory / given, Path.cwd() / given]
    exported = (
        read_json_object(directory / "config.json", "config.json") if (directory / "config.json").is_file() else {}
    )
    theirs = Provenance.read(directory)
    for candidate in candidates:
        if not (candidate / "config.json").is_file():
            continue
        config = ModelRef.parse(str(candidate)).read_config()
        if any(config.get(key) != exported.get(key) for key in SHAPE_KEYS):
            continue
        ours = Provenance.read(candidate)
        if ours is not None and theirs is not None:
            if (ours.plan.canonical, ours.source) != (theirs.plan.canonical, theirs.source):
                continue
        return ExportSource(candidate, verified_by="shape and plan only (export.json predates fingerprints)")
    return ExportSource(
        None, f"no checkpoint matching the export at {checkpoint!r} (export.json predates fingerprints)"
    )
