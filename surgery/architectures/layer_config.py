"""Per-layer config keys after surgery: each one follows its layers, or the plan is refused naming the key.

An output model has a new sequence of layers, each a copy of a source layer (``sources``: the source layer of
every output layer). Its config must build output layer ``j`` exactly as source layer ``sources[j]`` was built:

* lists with one entry per layer (``layer_types``, ``no_rope_layers``) are re-indexed;
* lists of layer indices (``mlp_only_layers``, ``moe_layers``) are renumbered;
* scalar keys that encode per-layer structure (:data:`surgery.architectures.detect.STRUCTURAL_KEYS`) are
  rewritten when a value expresses the new order (``first_k_dense_replace`` = the dense layers still form a
  prefix), turned into an explicit list when the config class takes one (``decoder_sparse_step`` ->
  ``mlp_only_layers``), or refused.

:func:`check_layer_config` then builds the output config's model on the meta device and compares every output
layer's signature with its source layer's: a per-layer key nobody listed cannot silently change a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from surgery.errors import SurgeryError


def _prefix_count(sources: Sequence[int], below: int, key: str, meaning: str) -> int:
    """How many output layers come from source layers ``< below``, which must all come first."""
    flags = [source < below for source in sources]
    count = sum(flags)
    if any(flags[count:]):
        raise SurgeryError(
            f"config {key}={below} ({meaning}) cannot express this layer order: source layers below {below} must "
            "stay before the others"
        )
    return count


def _decoder_sparse(config, sources: Sequence[int], updates: dict[str, Any]) -> None:
    """Qwen-MoE: a layer is sparse iff ``(i + 1) % decoder_sparse_step == 0`` and not in ``mlp_only_layers``."""
    step = config.decoder_sparse_step or 1
    dense = set(getattr(config, "mlp_only_layers", None) or [])
    experts = (getattr(config, "num_experts", 1) or 0) > 0

    def sparse(layer: int) -> bool:
        return experts and layer not in dense and (layer + 1) % step == 0

    updates["decoder_sparse_step"] = 1
    updates["mlp_only_layers"] = [index for index, source in enumerate(sources) if not sparse(source)]


def layer_config_updates(config, spec, sources: Sequence[int]) -> dict[str, Any]:
    """Config values for a model whose layer ``j`` is source layer ``sources[j]`` (``spec``: its ArchSpec)."""
    num_layers = config.num_hidden_layers
    identity = list(sources) == list(range(num_layers))
    updates: dict[str, Any] = {spec.count_key: len(sources)}
    for key in spec.per_layer_config:
        values = list(getattr(config, key))
        updates[key] = [values[source] for source in sources]
    for key in spec.index_config:
        chosen = set(getattr(config, key) or [])
        updates[key] = [index for index, source in enumerate(sources) if source in chosen]
    for key in spec.structural_config:
        value = getattr(config, key, None)
        if value is None or identity:
            continue
        if key == "max_window_layers" and "layer_types" not in spec.per_layer_config:
            updates[key] = _prefix_count(sources, value, key, "layers below it use full attention")
        elif key == "max_window_layers":  # explicit layer_types decide; keep the scalar consistent where it can be
            flags = [source < value for source in sources]
            updates[key] = sum(flags) if not any(flags[sum(flags) :]) else 0
        elif key == "first_k_dense_replace":
            updates[key] = _prefix_count(sources, value, key, "layers below it are dense, the rest MoE")
        elif key == "decoder_sparse_step":
            _decoder_sparse(config, sources, updates)
        elif key == "moe_layer_freq" and value != 1:
            first = getattr(config, "first_k_dense_replace", 0) or 0
            if any((source - first) % value != index % value for index, source in enumerate(sources) if index >= first):
                raise SurgeryError(
                    f"config moe_layer_freq={value} cannot express this layer order (every {value}-th layer is MoE)"
                )
        elif key == "scale_attn_by_inverse_layer_idx" and value:
            raise SurgeryError(
                f"config {key}=true: attention is scaled by each layer's position, so a moved layer computes "
                "something else"
            )
    return updates


def raw_layer_config_updates(raw: dict, spec, sources: Sequence[int]) -> dict[str, Any]:
    """:func:`layer_config_updates` from ``config.json`` alone, for identical layers whose per-layer keys are
    lists in the file (:func:`surgery.architectures.cache.plain_from_raw`): no transformers config needed."""
    updates: dict[str, Any] = {spec.count_key: len(sources)}
    updates.update({key: [raw[key][i] for i in sources] for key in spec.per_layer_config})
    return updates


def check_layer_config(config, spec, signatures: Sequence[str], sources: Sequence[int], updates: dict) -> None:
    """Build the model of ``config`` + ``updates`` on the meta device; every layer must match its source layer."""
    from surgery.architectures.detect import build_config, signatures_of

    values = {
        key: value for key, value in config.to_dict().items() if key not in ("model_type", "transformers_version")
    }
    values.update(updates)
    values["num_hidden_layers"] = len(sources)
    built = signatures_of(build_config(config.model_type, values), spec.generative)
    for index, (source, signature) in enumerate(zip(sources, built)):
        if signature != signatures[source]:
            differs = next(
                (line for line in signature.splitlines() if line not in signatures[source].splitlines()), "?"
            )
            keys = ", ".join((*spec.per_layer_config, *spec.index_config, *spec.structural_config)) or "none found"
            raise SurgeryError(
                f"model_type={config.model_type!r}: the output config would build layer {index} unlike its source "
                f"layer {source} (at {differs.split(':')[0] or 'the layer'}); per-layer config keys: {keys}"
            )
