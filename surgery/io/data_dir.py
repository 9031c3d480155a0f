"""The local benchmark-data folder: ``--data-dir DIR``, else ``$SURGERY_DATA_DIR``, else none (the Hub).

The folder is laid out like the project's shared data (``lambada/``, ``arc/``, ``winogrande/``, ``gsm8k/``,
``hellaswag/``, ``glue/``); each command looks for its own files in it and says which are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from surgery.errors import SurgeryError

DATA_DIR_ENV = "SURGERY_DATA_DIR"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    """``data_dir`` if given, else ``$SURGERY_DATA_DIR`` if set, else ``None``; a named folder must exist."""
    origin = "--data-dir"
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or None
        origin = f"${DATA_DIR_ENV}"
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise SurgeryError(f"{origin} {data_dir} is not a directory")
    return path
