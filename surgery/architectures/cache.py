"""Architecture detection results kept on disk, one file per ``config.json``.

Detection (:mod:`surgery.architectures.detect`) builds the model on the ``meta`` device, which imports torch and
transformers: seconds of start-up for a command that otherwise streams bytes. Its result depends only on the
config's content and the transformers version, so it is cached under ``$SURGERY_CACHE_DIR/detect/`` (default
``~/.cache/surgery/detect/``), keyed by the sha256 of the canonical config JSON, the transformers version and
this package's version. A missing, unreadable or stale file is simply recomputed; an unwritable cache is ignored.

An entry is data from disk, not trusted: it is read only when it is a regular file (no FIFO, device or symbolic
link: ``O_NOFOLLOW | O_NONBLOCK``) owned by this user and at most :data:`MAX_ENTRY_BYTES`, and only used when
every field is well-typed and agrees with the ``config.json`` it describes (:func:`consistent`): the layer-count
key names the key whose value is the layer count, one signature per layer, the block list is a dotted path the
layer path ends with, every per-layer list, index list and structural key of the file is accounted for.
Anything else is ignored and recomputed, so a poisoned entry cannot change what ``apply`` writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from surgery import __version__
from surgery.fileio import atomic_write_json, open_regular

FORMAT = 1
MAX_ENTRY_BYTES = 32 << 20  # signatures of a few hundred layers fit many times over
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.\w+)*$")


def cache_dir() -> Path:
    """Where detection results are kept (``$SURGERY_CACHE_DIR``, else ``$XDG_CACHE_HOME/surgery``)."""
    root = os.environ.get("SURGERY_CACHE_DIR")
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "surgery")
    return Path(root) / "detect"


def _path(raw: dict) -> Path | None:
    try:
        transformers_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None
    text = json.dumps([FORMAT, __version__, transformers_version, raw], sort_keys=True, default=str)
    return cache_dir() / f"{hashlib.sha256(text.encode()).hexdigest()}.json"


def _tuples(value):
    return tuple(_tuples(item) for item in value) if isinstance(value, list) else value


def _read_entry(path: Path) -> Any:
    """The JSON of a cache entry, or None unless it is a regular file of this user's, not too big."""
    try:
        with open_regular(path, follow_symlinks=False, max_bytes=MAX_ENTRY_BYTES) as handle:
            if hasattr(os, "getuid") and os.fstat(handle.fileno()).st_uid != os.getuid():
                return None  # written by someone else (a shared cache folder): not ours to trust
            data = handle.read(MAX_ENTRY_BYTES + 1)
        return json.loads(data) if len(data) <= MAX_ENTRY_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None


def _strings(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(item, str) for item in value)


def _well_typed(detection) -> bool:
    d = detection
    optional = (d.final_norm, d.head)
    return (
        isinstance(d.generative, bool)
        and all(isinstance(v, str) for v in (d.model_type, d.layer_list, d.layer_path, d.count_key, d.embeddings))
        and all(v is None or isinstance(v, str) for v in optional)
        and all(_strings(v) for v in (d.per_layer_keys, d.index_keys, d.structural_keys, d.signatures))
        and isinstance(d.lora_targets, tuple)
        and all(
            isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], str) and _strings(group[1])
            for group in d.lora_targets
        )
    )


def consistent(detection, raw: dict) -> bool:
    """Whether a detection (:class:`~surgery.architectures.detect.Detection`) read back agrees with its config."""
    from surgery.architectures.detect import INDEX_LIST_KEYS, NOT_PER_LAYER, STRUCTURAL_KEYS
    from surgery.architectures.specs import layer_count_key

    if not _well_typed(detection):
        return False
    count_key = layer_count_key(raw)
    count = raw.get(count_key)
    if detection.count_key != count_key or type(count) is not int or len(detection.signatures) != count:
        return False
    if detection.model_type != raw.get("model_type"):
        return False
    paths = (detection.layer_list, detection.layer_path, detection.embeddings)
    if not all(_DOTTED.match(path) for path in paths) or not (
        detection.layer_path == detection.layer_list or detection.layer_path.endswith("." + detection.layer_list)
    ):
        return False
    not_per_layer = set(NOT_PER_LAYER) | set(INDEX_LIST_KEYS)
    per_layer = set(detection.per_layer_keys)
    if any(key in not_per_layer or key.startswith("_") for key in per_layer):
        return False
    in_file = {
        key
        for key, value in raw.items()
        if isinstance(value, list) and len(value) == count and key not in not_per_layer and not key.startswith("_")
    }
    index_in_file = {key for key in INDEX_LIST_KEYS if isinstance(raw.get(key), list)}
    structural_in_file = {key for key in STRUCTURAL_KEYS if raw.get(key) is not None}
    return (
        in_file <= per_layer
        and index_in_file <= set(detection.index_keys) <= set(INDEX_LIST_KEYS)
        and structural_in_file <= set(detection.structural_keys) <= set(STRUCTURAL_KEYS)
    )


def load(raw: dict):
    """The cached :class:`~surgery.architectures.detect.Detection` of this ``config.json`` content, or None.

    None also when the entry is not a plain file of this user's or does not agree with ``raw``
    (:func:`consistent`): the caller then detects again and overwrites it.
    """
    from surgery.architectures.detect import Detection

    path = _path(raw)
    data = _read_entry(path) if path is not None else None
    if not isinstance(data, dict) or set(data) != {field.name for field in fields(Detection)}:
        return None
    try:
        detection = Detection(**{key: _tuples(value) for key, value in data.items()})
    except (TypeError, ValueError):
        return None
    return detection if consistent(detection, raw) else None


def plain_from_raw(detection, raw: dict) -> bool:
    """Whether a plain output can be configured from ``config.json`` alone: identical layers, per-layer keys
    stored as lists in the file, no index lists or structural scalars to rewrite (nothing needs transformers)."""
    return (
        len(set(detection.signatures)) == 1
        and not detection.index_keys
        and not detection.structural_keys
        and all(isinstance(raw.get(key), list) for key in detection.per_layer_keys)
    )


def store(raw: dict, detection) -> None:
    """Keep ``detection`` for this ``config.json`` content (best effort)."""
    path = _path(raw)
    if path is None:
        return
    try:
        atomic_write_json(path, asdict(detection))
    except OSError:
        pass
