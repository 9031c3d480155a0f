"""Supported architectures, described as data.

Each entry says where the block list lives (``layer_list``, a dotted module path suffix that is also the
tensor-name prefix of every per-layer weight), which config keys hold one entry per layer, and whether the
model generates with a KV cache. Adding an architecture whose blocks follow the usual transformers layout
is one entry here plus a tiny config in ``tests/tiny_models.py``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from surgery.errors import SurgeryError


@dataclass(frozen=True)
class ArchSpec:
    """How to find and renumber the layers of one family of ``model_type``s."""

    name: str
    model_types: tuple[str, ...]
    layer_list: str
    per_layer_config: tuple[str, ...] = ()
    generative: bool = True

    @property
    def layer_key_pattern(self) -> re.Pattern[str]:
        """Regex over tensor names: ``head`` (``model.layers.``), ``index`` and ``tail`` (``mlp.up_proj.weight``)."""
        return re.compile(rf"^(?P<head>(?:[\w.]*\.)?{re.escape(self.layer_list)}\.)(?P<index>\d+)\.(?P<tail>.+)$")


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), "layers"),
    ArchSpec("mistral", ("mistral",), "layers"),
    ArchSpec("qwen2", ("qwen2",), "layers", per_layer_config=("layer_types",)),
    ArchSpec("qwen3", ("qwen3",), "layers", per_layer_config=("layer_types",)),
    ArchSpec("gpt_neox", ("gpt_neox",), "layers"),
    ArchSpec("bert", ("bert",), "encoder.layer", generative=False),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for spec in ARCHITECTURES for t in spec.model_types)


def check_parallel_attention_types(steps, layer_types: list[str] | None) -> None:
    """Refuse a parallel group whose members have different attention types (they need different masks)."""
    if layer_types is None:
        return
    for step in steps:
        types = sorted({layer_types[i] for i in step.layers})
        if len(types) > 1:
            raise SurgeryError(f"parallel group {step} mixes attention types {types}")


def arch_for(model_type: str | None) -> ArchSpec:
    """The :class:`ArchSpec` for a config's ``model_type``; a clear error naming the supported ones otherwise."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise SurgeryError(
        f"unsupported architecture model_type={model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
