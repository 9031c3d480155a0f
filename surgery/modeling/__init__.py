"""Standalone model classes written into checkpoints that need them (parallel blocks, tied repeats).

``configuration_surgery.py`` and ``modeling_surgery.py`` import nothing from ``surgery``; the
materializer copies them into the output directory and references them from ``auto_map``.
"""

from pathlib import Path

from surgery.modeling.configuration_surgery import SurgeryConfig
from surgery.modeling.modeling_surgery import SurgeryForCausalLM, SurgeryModel

MODELING_FILES = tuple(Path(__file__).parent / name for name in ("configuration_surgery.py", "modeling_surgery.py"))

__all__ = ["MODELING_FILES", "SurgeryConfig", "SurgeryForCausalLM", "SurgeryModel"]
