"""How a card names what a measurement file names by local path: models in a latency table, paths in a reason.

A card never shows a local path (``out/full``, ``../shared/...``): a ``surgery`` output is named by its plan
(:func:`variant_label`), a Hub model by its id, anything else by a numbered label (:func:`bench_label`).
"""

from __future__ import annotations

import re
from pathlib import Path

from surgery.apply.card import HUB_ID, last_stage, plain_line, public_name
from surgery.apply.provenance import Provenance

LABEL_PREFIXES = ("variant ", "source model", "local model", "model #", "a model ")  # labels bench_label gives


PATH_IN_TEXT = re.compile(
    r"(?<![\w/\\])(?:~|\.{1,2}|[A-Za-z]:)?[/\\][^\s'\"()\[\],;]+"  # absolute, ~/, ./, ../, C:\\
    r"|(?<![\w/])[\w.-]+(?:/[\w.-]+){2,}"  # relative with two or more separators (a Hub id has one)
)


def without_paths(text: str) -> str:
    """``text`` (a reason a row was not measured, a note) with every path in it reduced to its last part."""
    return PATH_IN_TEXT.sub(lambda match: Path(match.group(0).replace("\\", "/")).name or "…", text)


def variant_label(record: Provenance) -> str:
    """How a latency table names a ``surgery apply``/``finetune`` output: by its plan (and whether it was
    fine-tuned), never by the folder it was in."""
    tuned = ", fine-tuned" if last_stage(record, "finetune") else ""
    if record.plan.canonical == "identity":
        return f"source model{tuned}"
    return f"variant {plain_line(record.plan.canonical, 200)}{tuned}"


def _hub_cache_id(path: Path) -> str | None:
    """``owner/name`` of a folder in the Hub cache (``.../models--owner--name/snapshots/<commit>``)."""
    parts = path.resolve().parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        candidate = parts[-3].removeprefix("models--").replace("--", "/", 1)
        return candidate if HUB_ID.fullmatch(candidate) else None
    return None


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id or an unreadable cache: not known to be a Hub model
        return False


def bench_label(model: str, number: int | None = None) -> str:
    """What the card's latency table calls the ``model`` a ``surgery bench`` row measured (``number``: its place
    among the models, from 1), never a local path: a demo name or a Hub id (one the Hub cache holds) as is; a
    local ``surgery`` output by its plan (:func:`variant_label`); a GGUF file by its file name; a folder from the
    Hub cache by its repo id; any other local folder, or a path no longer there, as ``local model #N`` /
    ``model #N`` (without ``number``: ``local model`` / ``a model not found where the card was made``). A
    label given before is kept (labels are stored in ``surgery.json`` and validated again)."""
    from surgery.io.demo_models import DEMO_MODELS

    if model in DEMO_MODELS or model.startswith(LABEL_PREFIXES):
        return model
    path = Path(model).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):
        exists = False
    if exists and path.is_file():
        return public_name(path.name)
    if exists:
        try:
            record = Provenance.read(path)
        except Exception:  # noqa: BLE001 - an unreadable record names nothing
            record = None
        if record is not None:
            return variant_label(record)
        return _hub_cache_id(path) or ("local model" + (f" #{number}" if number else ""))
    looks_local = model.startswith(("/", "~", ".")) or "\\" in model or model.count("/") != 1
    if not looks_local and HUB_ID.fullmatch(model) and _in_hub_cache(model):
        return model
    return f"model #{number}" if number else "a model not found where the card was made"
