"""Supported architectures, described as data.

Each entry says where the block list lives (``layer_list``, a dotted module path suffix that is also the
tensor-name prefix of every per-layer weight), which config keys hold one entry per layer, whether the model
generates with a KV cache, and the facts later stages key on instead of guessing from names: the input
embedding and final-norm modules, the output head, the default LoRA targets, the optimum ONNX model type.
Adding an architecture whose blocks follow the usual transformers layout is one entry here plus a tiny config
in ``tests/tiny_models.py``. Surgery checkpoints (``model_type: "surgery"``) are looked through to their
source architecture by :func:`arch_for_config`.
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
    embeddings: str = "model.embed_tokens"  # input embedding module (dotted path in the source model)
    final_norm: str | None = "model.norm"  # norm applied after the last block (None: post-LN encoders)
    head: str | None = "lm_head"  # output projection of the generative class
    lora_targets: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
        ("mlp", ("gate_proj", "up_proj", "down_proj")),
    )
    onnx_model_type: str | None = None  # optimum's ONNX config name; None: same as ``name``

    @property
    def auto_class(self) -> str:
        """The transformers auto class that loads this architecture's checkpoints."""
        return "AutoModelForCausalLM" if self.generative else "AutoModel"

    @property
    def wrapper_class(self) -> str:
        """The surgery wrapper class written for plans the source architecture cannot express."""
        return "SurgeryForCausalLM" if self.generative else "SurgeryModel"

    def lora_target_modules(self, which: str) -> tuple[str, ...]:
        """Module names for LoRA: ``attn``, ``mlp`` or ``all``."""
        groups = dict(self.lora_targets)
        if which == "all":
            return tuple(name for names in groups.values() for name in names)
        return groups[which]

    def is_embedding_tensor(self, name: str) -> bool:
        """Whether tensor ``name`` belongs to the input embeddings (written before the layers)."""
        return self.embeddings.rpartition(".")[2] in name.split(".")

    @property
    def layer_key_pattern(self) -> re.Pattern[str]:
        """Regex over tensor names: ``head`` (``model.layers.``), ``index`` and ``tail`` (``mlp.up_proj.weight``)."""
        return re.compile(rf"^(?P<head>(?:[\w.]*\.)?{re.escape(self.layer_list)}\.)(?P<index>\d+)\.(?P<tail>.+)$")


ARCHITECTURES: tuple[ArchSpec, ...] = (
    ArchSpec("llama", ("llama",), "layers"),
    ArchSpec("mistral", ("mistral",), "layers"),
    ArchSpec("qwen2", ("qwen2",), "layers", per_layer_config=("layer_types",)),
    ArchSpec("qwen3", ("qwen3",), "layers", per_layer_config=("layer_types",)),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        "layers",
        embeddings="gpt_neox.embed_in",
        final_norm="gpt_neox.final_layer_norm",
        head="embed_out",
        lora_targets=(("attn", ("query_key_value", "dense")), ("mlp", ("dense_h_to_4h", "dense_4h_to_h"))),
    ),
    ArchSpec(
        "bert",
        ("bert",),
        "encoder.layer",
        generative=False,
        embeddings="embeddings",
        final_norm=None,
        head=None,
        lora_targets=(
            ("attn", ("query", "key", "value", "attention.output.dense")),
            ("mlp", ("intermediate.dense",)),
        ),
    ),
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


def arch_for_config(config: dict) -> ArchSpec:
    """The :class:`ArchSpec` of a ``config.json``; a surgery checkpoint is looked through to its source."""
    model_type = config.get("model_type")
    if model_type == "surgery":
        model_type = config.get("source_model_type")
    return arch_for(model_type)


def arch_for(model_type: str | None) -> ArchSpec:
    """The :class:`ArchSpec` for a config's ``model_type``; a clear error naming the supported ones otherwise."""
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    raise SurgeryError(
        f"unsupported architecture model_type={model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )
