"""Standalone model classes written into checkpoints that need them (parallel blocks, tied repeats).

``configuration_surgery.py``, ``modeling_surgery.py`` and ``fused_parallel.py`` (imported by the latter) import
nothing from ``surgery``; the materializer copies them into the output directory and references the first two
from ``auto_map``. The classes are
imported lazily: ``surgery apply`` only needs the files' paths, not torch or transformers' model code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MODELING_FILES = tuple(
    Path(__file__).parent / name for name in ("configuration_surgery.py", "modeling_surgery.py", "fused_parallel.py")
)

_LAZY = {
    "SurgeryConfig": "surgery.modeling.configuration_surgery",
    "SurgeryForCausalLM": "surgery.modeling.modeling_surgery",
    "SurgeryModel": "surgery.modeling.modeling_surgery",
}

__all__ = ["MODELING_FILES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
