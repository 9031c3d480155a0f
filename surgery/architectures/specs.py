"""Architectures: what detection finds, plus the exceptions it cannot see.

Any ``model_type`` transformers knows is supported when :mod:`surgery.architectures.detect` finds its block list on a
meta-device instance (the ``nn.ModuleList`` of ``num_hidden_layers`` blocks, whose path is also the tensor-name
prefix of every per-layer weight) and nothing rules it out (encoder-decoder, composite/multimodal, or a
:data:`REFUSED` entry: cross-layer state detection cannot see). An :class:`ArchSpec` is detection's result with
the :data:`EXCEPTIONS` for that ``model_type`` applied on top: facts later stages key on that detection would
get wrong or cannot know (LoRA target groups, the optimum ONNX model type). Adding an exception is one entry in
either table. Surgery checkpoints (``model_type: "surgery"``) are looked through to their source architecture
by :func:`arch_for_config`.

:func:`layer_count` and :func:`check_model_type` are the cheap checks (no torch, no transformers) every command
runs before anything slow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from surgery.errors import SurgeryError
from surgery.io.model_code import CODE_CONFIG_KEYS

if TYPE_CHECKING:
    from surgery.architectures.detect import Detection


@dataclass(frozen=True)
class ArchSpec:
    """How to find and renumber the layers of one ``model_type`` (``layer_list`` is relative to the base model)."""

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
    index_config: tuple[str, ...] = ()  # config lists of layer indices (``mlp_only_layers``)
    structural_config: tuple[str, ...] = ()  # scalar config keys that encode per-layer structure
    count_key: str = "num_hidden_layers"  # config key of the layer count (``n_layer`` for GPT-2)

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


# Facts detection cannot see or would get wrong, by model_type (fields of ArchSpec).
EXCEPTIONS: dict[str, dict] = {
    "gpt_neox": {
        "lora_targets": (("attn", ("query_key_value", "dense")), ("mlp", ("dense_h_to_4h", "dense_4h_to_h"))),
    },
    "bert": {
        "lora_targets": (
            ("attn", ("query", "key", "value", "attention.output.dense")),
            ("mlp", ("intermediate.dense",)),
        ),
    },
}

# Architectures whose layers share state detection cannot see: refused with the reason.
REFUSED: dict[str, str] = {
    "gemma3n_text": "later layers reuse the KV cache of earlier ones (num_kv_shared_layers) and AltUp mixes "
    "hidden states across layers",
    "gemma3n": "later layers reuse the KV cache of earlier ones (num_kv_shared_layers)",
    "zamba": "one shared transformer block is interleaved across the mamba layers (cross-layer weights)",
    "zamba2": "shared transformer blocks are interleaved across the mamba layers (cross-layer weights)",
    "albert": "all layers share one set of weights (no per-layer blocks)",
    "xlnet": "memory (mems) carries hidden states across segments per layer index",
    "transfo-xl": "memory carries hidden states across segments per layer index",
    "funnel": "blocks pool the sequence between groups of layers",
    "esm": "the contact-prediction head reads every layer's attention maps (its size is layers x heads)",
}

LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
# Keys not passed on to the source architecture's config class: identity, and every key that names code
# (transformers' from_config would load a Hub kernel named by ``attn_implementation``; see surgery.io.model_code).
SOURCE_KEYS = ("model_type", "architectures", "transformers_version", *CODE_CONFIG_KEYS)


def check_model_type(config: Mapping) -> str:
    """The source ``model_type`` of a ``config.json`` (a string, not refused); cheap: no transformers import."""
    model_type = config.get("model_type")
    if model_type == "surgery":
        model_type = config.get("source_model_type")
    if not isinstance(model_type, str) or not model_type:
        raise SurgeryError(f"unsupported architecture model_type={model_type!r}: config.json must name a model_type")
    if model_type in REFUSED:
        raise SurgeryError(f"unsupported architecture model_type={model_type!r}: {REFUSED[model_type]}")
    return model_type


def layer_count_key(config: Mapping) -> str:
    """The key :func:`layer_count` reads: the first of :data:`LAYER_COUNT_KEYS` present (``num_hidden_layers``)."""
    return next((key for key in LAYER_COUNT_KEYS if key in config), "num_hidden_layers")


def layer_count(config: Mapping, given: str) -> int:
    """The layer count of a ``config.json`` (``num_hidden_layers`` or the model's own key, e.g. ``n_layer``)."""
    key = layer_count_key(config)
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SurgeryError(f"config of {given} has no positive integer {key} (got {value!r})")
    return value


def spec_from_detection(detection: Detection) -> ArchSpec:
    """The :class:`ArchSpec` for a detection result, with the ``model_type``'s :data:`EXCEPTIONS` applied."""
    spec = ArchSpec(
        name=detection.model_type,
        model_types=(detection.model_type,),
        layer_list=detection.layer_list,
        per_layer_config=detection.per_layer_keys,
        generative=detection.generative,
        embeddings=detection.embeddings,
        final_norm=detection.final_norm,
        head=detection.head,
        lora_targets=detection.lora_targets,
        index_config=detection.index_keys,
        structural_config=detection.structural_keys,
        count_key=detection.count_key,
    )
    return replace(spec, **EXCEPTIONS.get(detection.model_type, {}))


def source_config_values(config: Mapping) -> dict:
    """A ``config.json`` as its source architecture's config values (a surgery checkpoint: its stored layers)."""
    values = {key: value for key, value in config.items() if key not in SOURCE_KEYS}
    if config.get("model_type") == "surgery":
        values = {key: value for key, value in values.items() if not key.startswith(("surgery_", "source_"))}
        values["num_hidden_layers"] = config.get("surgery_stored_layers")
        if config.get("surgery_stored_layer_types") is not None:
            values["layer_types"] = config["surgery_stored_layer_types"]
    return values


def transformers_config(config: Mapping):
    """The transformers config object of a ``config.json`` mapping (surgery checkpoints: the source's)."""
    from surgery.architectures.detect import build_config

    return build_config(check_model_type(config), source_config_values(config))


def arch_for_config(config: Mapping) -> ArchSpec:
    """The :class:`ArchSpec` of a ``config.json``; a surgery checkpoint is looked through to its source."""
    from surgery.architectures.detect import detect

    return spec_from_detection(detect(transformers_config(config)))


def arch_for(model_type: str | None) -> ArchSpec:
    """The :class:`ArchSpec` of ``model_type`` with its default config; a clear error naming why if unsupported."""
    return arch_for_config({"model_type": model_type})
