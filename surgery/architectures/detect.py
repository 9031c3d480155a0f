"""Find an architecture's block list and per-layer config keys by looking at it, not from a list.

Detection builds the model class ``surgery`` would write (``AutoModelForCausalLM`` for generative types,
``AutoModel`` for encoders) from the config on the ``meta`` device, so no weight is allocated, and reads:

* the **block list**: the outermost ``nn.ModuleList`` whose length is the config's layer count; its path
  relative to the base model (``layers``, ``h``, ``encoder.layer``) is also the tensor-name prefix of every
  per-layer weight;
* the **per-layer config keys**: config attributes that are lists with one entry per layer (``layer_types``,
  ``no_rope_layers``, ...), lists of layer indices from :data:`INDEX_LIST_KEYS` (``mlp_only_layers``), and the
  scalar keys of :data:`STRUCTURAL_KEYS` that encode per-layer structure (rewritten by
  :mod:`surgery.architectures.layer_config`);
* each layer's **signature** (submodule types, parameter shapes, scalar attributes such as ``attention_type``),
  used to check that a rewritten config builds every output layer as its source layer was built;
* the input embedding, final norm and output head modules, and default LoRA target groups.

Architectures that cannot be operated on layer by layer are refused with the reason (:func:`refusal`).
Everything here needs ``torch`` and ``transformers``; cheap checks that must not import them live in
:mod:`surgery.architectures.specs`.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from typing import Any

from surgery.errors import SurgeryError

# Lists of layer *indices* (not one entry per layer): renumbered, never permuted.
INDEX_LIST_KEYS = ("mlp_only_layers", "moe_layers")
# Scalar config keys that encode per-layer structure, with what they mean
# (rewrites: surgery.architectures.layer_config).
STRUCTURAL_KEYS = {
    "max_window_layers": "layers below it use full attention, the rest the sliding window",
    "sliding_window_pattern": "every N-th layer is global, the others sliding (derives layer_types)",
    "_sliding_window_pattern": "every N-th layer is global, the others sliding (derives layer_types)",
    "first_k_dense_replace": "layers below it are dense, the rest mixture-of-experts",
    "decoder_sparse_step": "every N-th layer is mixture-of-experts (with mlp_only_layers)",
    "moe_layer_freq": "every N-th layer (from first_k_dense_replace) is mixture-of-experts",
    "interleave_moe_layer_step": "every N-th layer is mixture-of-experts (derives moe_layers)",
    "no_rope_layer_interval": "every N-th layer has no rotary embedding (derives no_rope_layers)",
    "scale_attn_by_inverse_layer_idx": "attention is scaled by 1 / (layer index + 1): a layer's output depends on "
    "its position",
}
# Lists that are never per-layer, whatever their length.
NOT_PER_LAYER = frozenset(
    {
        "architectures",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "bad_words_ids",
        "suppress_tokens",
        "begin_suppress_tokens",
        "forced_decoder_ids",
        "mrope_section",
        "rope_scaling",
    }
)
# Module attributes that legitimately differ between layers (positions, not structure).
_POSITION_ATTRS = ("layer_idx", "layer_id", "layer_number", "layer_index", "block_idx", "idx", "seed")


@dataclass(frozen=True)
class Detection:
    """What detection found in one architecture (for one config)."""

    model_type: str
    generative: bool
    layer_list: str  # path relative to the base model: the tensor-name prefix of per-layer weights
    layer_path: str  # path in the class surgery writes (e.g. ``model.layers``)
    count_key: str  # config key holding the layer count (``num_hidden_layers``, ``n_layer``)
    per_layer_keys: tuple[str, ...]  # lists with one entry per layer
    index_keys: tuple[str, ...]  # lists of layer indices
    structural_keys: tuple[str, ...]  # scalar keys of STRUCTURAL_KEYS present in the config
    embeddings: str
    final_norm: str | None
    head: str | None
    lora_targets: tuple[tuple[str, tuple[str, ...]], ...]
    signatures: tuple[str, ...]  # one per source layer


def import_transformers():
    """``transformers`` with its logging quiet (meta builds warn about weights they never allocate)."""
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def is_generative(model_type: str) -> bool:
    """Whether ``model_type`` is a causal LM (has a causal-LM class and no masked-LM class)."""
    import_transformers()
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def count_key(config) -> str:
    """The config key that holds the layer count (``num_hidden_layers`` through the class's ``attribute_map``)."""
    return type(config).attribute_map.get("num_hidden_layers", "num_hidden_layers")


def refusal(config) -> str | None:
    """Why an architecture cannot be operated on layer by layer, or ``None`` when nothing rules it out."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model: two block lists, the decoder's cross-attention reads the encoder's output"
    sub = sorted(getattr(config, "sub_configs", None) or {})
    if sub:
        return f"composite/multimodal config (sub-configs {', '.join(sub)}): operate on its text model instead"
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        return "its config has no layer count (num_hidden_layers)"
    return None


def meta_model(config, generative: bool):
    """The class surgery writes for ``config``, instantiated on the meta device (no weights)."""
    import torch

    transformers = import_transformers()
    auto = transformers.AutoModelForCausalLM if generative else transformers.AutoModel
    try:
        with torch.device("meta"):
            return auto.from_config(config)
    except Exception as exc:  # any failure of transformers' own constructors: refuse, naming it
        line = (str(exc).strip().splitlines() or [""])[0]
        raise SurgeryError(
            f"model_type={config.model_type!r}: cannot build the model from its config ({type(exc).__name__}: {line})"
        ) from exc


def find_block_list(model, num_layers: int) -> str:
    """Dotted path of the outermost ``nn.ModuleList`` of length ``num_layers`` in ``model``."""
    from torch import nn

    found = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList)]
    found = [name for name in found if len(model.get_submodule(name)) == num_layers]
    outer = [name for name in found if not any(name.startswith(other + ".") for other in found if other != name)]
    if not outer:
        raise SurgeryError(
            f"{type(model).__name__} has no block list: no nn.ModuleList of {num_layers} layers (its layer count)"
        )
    if len(outer) > 1:
        raise SurgeryError(f"{type(model).__name__} has several lists of {num_layers} modules ({', '.join(outer)})")
    return outer[0]


def relative_layer_list(model, path: str) -> str:
    """``path`` without the base-model prefix (``model.layers`` -> ``layers``): the checkpoint tensor prefix."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix and path.startswith(prefix + ".") and hasattr(model, prefix):
        return path[len(prefix) + 1 :]
    return path


def layer_signature(layer) -> str:
    """A layer's structure: submodule types, parameter/buffer shapes, scalar attributes (not its position)."""
    parts = []
    for name, module in layer.named_modules():
        attrs = {
            key: value
            for key, value in vars(module).items()
            if not key.startswith("_")
            and key not in _POSITION_ATTRS
            and key != "training"
            and isinstance(value, (bool, int, float, str, type(None)))
        }
        params = {key: list(param.shape) for key, param in module.named_parameters(recurse=False)}
        parts.append(f"{name}:{type(module).__name__}:{json.dumps(attrs, sort_keys=True)}:{json.dumps(params)}")
    return "\n".join(parts)


def _module_name(model, target) -> str | None:
    if target is None:
        return None
    return next((name for name, module in model.named_modules() if module is target), None)


def _final_norm(model, layer_path: str) -> str | None:
    """The norm module that follows the block list in its container (``model.norm``, ``transformer.ln_f``)."""
    container_path = layer_path.rpartition(".")[0]
    while True:
        container = model.get_submodule(container_path) if container_path else model
        names = [name for name, _ in container.named_children()]
        tail = layer_path[len(container_path) + 1 :] if container_path else layer_path
        first = tail.split(".")[0]
        after = names[names.index(first) + 1 :] if first in names else []
        for name in after:
            child = getattr(container, name)
            if "norm" in type(child).__name__.lower() or "norm" in name.lower() or name in ("ln_f",):
                return f"{container_path}.{name}" if container_path else name
        if not container_path:
            return None
        container_path = container_path.rpartition(".")[0]


def _lora_targets(layer) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Linear modules of a layer, grouped ``attn`` (under an attention submodule) and ``mlp`` (the rest)."""
    from torch import nn

    names = [name for name, module in layer.named_modules() if isinstance(module, nn.Linear)]

    def short(name: str) -> str:  # the shortest suffix that names only this module
        parts = name.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            if sum(1 for other in names if other == suffix or other.endswith("." + suffix)) == 1:
                return suffix
        return name

    attn = tuple(dict.fromkeys(short(n) for n in names if "attn" in n or "attention" in n))
    mlp = tuple(dict.fromkeys(short(n) for n in names if short(n) not in attn))
    return (("attn", attn), ("mlp", mlp))


def per_layer_keys(config, num_layers: int) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(per-layer lists, index lists, structural scalars)`` found among ``config``'s attributes."""
    values = {key: getattr(config, key, None) for key in config.to_dict()}
    for key in INDEX_LIST_KEYS:
        values.setdefault(key, getattr(config, key, None))
    lists = tuple(
        key
        for key, value in values.items()
        if isinstance(value, (list, tuple))
        and len(value) == num_layers
        and key not in NOT_PER_LAYER
        and key not in INDEX_LIST_KEYS
        and not key.startswith("_")
    )
    index = tuple(key for key in INDEX_LIST_KEYS if isinstance(values.get(key), (list, tuple)))
    structural = tuple(key for key in STRUCTURAL_KEYS if values.get(key) is not None or hasattr(config, key))
    return lists, index, structural


_CACHE: dict[str, Detection] = {}


def detect(config) -> Detection:
    """Detect the layout of ``config``'s architecture (a transformers config object); cached per config."""
    key = type(config).__name__ + json.dumps(config.to_dict(), sort_keys=True, default=str)
    if key not in _CACHE:
        if len(_CACHE) > 64:
            _CACHE.clear()
        _CACHE[key] = _detect(config)
    return _CACHE[key]


def _detect(config) -> Detection:
    reason = refusal(config)
    if reason:
        raise SurgeryError(f"unsupported architecture model_type={config.model_type!r}: {reason}")
    generative = is_generative(config.model_type)
    num_layers = config.num_hidden_layers
    model = meta_model(config, generative)
    path = find_block_list(model, num_layers)
    layers = model.get_submodule(path)
    lists, index, structural = per_layer_keys(config, num_layers)
    embeddings = _module_name(model, model.get_input_embeddings())
    head = _module_name(model, model.get_output_embeddings()) if generative else None
    return Detection(
        model_type=config.model_type,
        generative=generative,
        layer_list=relative_layer_list(model, path),
        layer_path=path,
        count_key=count_key(config),
        per_layer_keys=lists,
        index_keys=index,
        structural_keys=structural,
        embeddings=embeddings or "embeddings",
        final_norm=_final_norm(model, path),
        head=head,
        lora_targets=_lora_targets(layers[0]),
        signatures=tuple(layer_signature(layer) for layer in layers),
    )


def build_config(model_type: str, values: dict[str, Any]):
    """A transformers config of ``model_type`` from ``values`` (a ``config.json`` mapping)."""
    transformers = import_transformers()
    try:
        return transformers.AutoConfig.for_model(model_type, **values)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        line = (str(exc).strip().splitlines() or [""])[0]
        raise SurgeryError(f"unsupported architecture model_type={model_type!r}: {line}") from exc


def signatures_of(config, generative: bool) -> tuple[str, ...]:
    """The layer signatures the model built from ``config`` would have (meta device)."""
    model = meta_model(config, generative)
    path = find_block_list(model, config.num_hidden_layers)
    return tuple(layer_signature(layer) for layer in model.get_submodule(path))


def accepts(config_class, key: str) -> bool:
    """Whether ``config_class.__init__`` takes ``key`` explicitly (so an explicit value is honoured)."""
    return key in inspect.signature(config_class.__init__).parameters
