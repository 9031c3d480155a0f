"""Architecture detection results kept on disk, one file per ``config.json``.

Detection (:mod:`surgery.detect`) builds the model on the ``meta`` device, which imports torch and transformers:
seconds of start-up for a command that otherwise streams bytes. Its result depends only on the config's content
and the transformers version, so it is cached under ``$SURGERY_CACHE_DIR/detect/`` (default
``~/.cache/surgery/detect/``), keyed by the sha256 of the canonical config JSON, the transformers version and
this package's version. A missing, unreadable or stale file is simply recomputed; an unwritable cache is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from surgery import __version__
from surgery.fileio import atomic_write_json

FORMAT = 1


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


def load(raw: dict):
    """The cached :class:`~surgery.detect.Detection` of this ``config.json`` content, or None."""
    from surgery.detect import Detection

    path = _path(raw)
    try:
        fields = json.loads(path.read_text()) if path is not None else None
        return Detection(**{key: _tuples(value) for key, value in fields.items()}) if fields else None
    except (OSError, ValueError, TypeError):
        return None


def store(raw: dict, detection) -> None:
    """Keep ``detection`` for this ``config.json`` content (best effort)."""
    path = _path(raw)
    if path is None:
        return
    try:
        atomic_write_json(path, asdict(detection))
    except OSError:
        pass
