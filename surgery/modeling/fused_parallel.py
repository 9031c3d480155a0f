"""Fused parallel blocks for the surgery model class (shipped beside ``modeling_surgery.py`` in checkpoints).

A parallel group of Llama-family layers (Llama, Mistral, Qwen2, Qwen3) runs at inference as one computation over
its members' weights stacked once (:class:`StackedWeights`): batched projections and MLPs, attention once with
the members' heads side by side, each member's keys/values in its own KV-cache slot. Numerically the unfused
group. Depends only on ``torch`` and ``transformers``.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# Decoder layers whose parallel groups can run fused: pre-norm RMSNorm, q/k/v/o projections, gated MLP.
FUSABLE_LAYERS = {
    "LlamaDecoderLayer": False,  # value: whether the attention has per-head q_norm / k_norm
    "MistralDecoderLayer": False,
    "Qwen2DecoderLayer": False,
    "Qwen3DecoderLayer": True,
}


# The projections of a fusable layer, by parent module.
_LINEARS = (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def member_tensors(layers: list[nn.Module], qk_norm: bool) -> list[torch.Tensor] | None:
    """Every weight and bias the fused computation reads, member by member; None if a projection is not a plain
    ``nn.Linear`` (wrapped by LoRA, quantized) or a weight is not a plain parameter (pruned, parametrized: computed
    at each call). Read from the modules' registries (``_modules``/``_parameters``), not through
    ``nn.Module.__getattr__``: this runs once per forward, so a replaced module or parameter is seen."""
    tensors = []
    for layer in layers:
        modules = layer._modules
        attn = modules["self_attn"]._modules
        norms = [modules["input_layernorm"], modules["post_attention_layernorm"]]
        norms += [attn["q_norm"], attn["k_norm"]] if qk_norm else []
        for parent, names in _LINEARS:
            children = modules[parent]._modules
            for name in names:
                linear = children[name]
                if type(linear) is not nn.Linear or linear._parameters.get("weight") is None:
                    return None
                tensors.append(linear._parameters["weight"])
                if linear._parameters.get("bias") is not None:
                    tensors.append(linear._parameters["bias"])
        for norm in norms:
            if norm._parameters.get("weight") is None:
                return None
            tensors.append(norm._parameters["weight"])
    return tensors


def fusable(layers: list[nn.Module]) -> bool:
    """Whether a parallel group can run fused: same Llama-family class, plain ``nn.Linear`` projections.

    Wrapped projections (LoRA adapters, quantized linears) and any other architecture run unfused.
    """
    name = type(layers[0]).__name__
    if len(layers) < 2 or name not in FUSABLE_LAYERS or any(type(layer) is not type(layers[0]) for layer in layers):
        return False
    return member_tensors(layers, FUSABLE_LAYERS[name]) is not None


def _rms(hidden: torch.Tensor, eps: float) -> torch.Tensor:
    """The unscaled part of transformers' RMSNorm (float32 statistics, result in the input dtype)."""
    dtype = hidden.dtype
    hidden = hidden.to(torch.float32)
    hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
    return hidden.to(dtype)


def _scaled_rms(hidden: torch.Tensor, eps: float, weight: torch.Tensor) -> torch.Tensor:
    """Per-member RMSNorm: ``weight`` [M, 1, ..., D] times the normalized ``hidden`` (one input or one per member).

    The unsqueeze/index pair is free in PyTorch; it keeps ONNX Runtime's layer-norm fusion, which expects one
    scale vector, from matching (and failing on) the stacked scales.
    """
    return (_rms(hidden, eps).unsqueeze(0) * weight.unsqueeze(0))[0]


def _linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-member linear: ``hidden`` [M, N, in] by ``weight`` [M, in, out] (+ ``bias`` [M, 1, out])."""
    if bias is None:
        return torch.bmm(hidden, weight)
    return torch.baddbmm(bias, hidden, weight)


class StackedWeights:
    """The weights of a parallel group's members, stacked along a new first dimension (one copy per group).

    :meth:`check` runs once per forward (from :meth:`ExecutionList.prepare`), not per call: it rebuilds the copy
    when a member's weights changed (updated in place, moved, cast or replaced). Steps that run the same group (a
    looped parallel block) share one. q/k/v and gate/up are concatenated per member.
    """

    input_major = True  # store [M, in, out] (measured faster for Llama-7B decode); False: view of [M, out, in]

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.qk_norm = FUSABLE_LAYERS[type(layers[0]).__name__]
        self._weights: dict[str, torch.Tensor | None] | None = None
        self._signature: tuple | None = None

    def check(self) -> bool:
        """Whether the group can still run fused; if so, make the stacked copy match the members' weights."""
        tensors = member_tensors(self.layers, self.qk_norm)
        if tensors is None:  # e.g. LoRA added after loading
            return False
        signature = tuple((tensor.data_ptr(), tensor._version, tensor.dtype) for tensor in tensors)
        if self._weights is None or signature != self._signature:
            self._weights = None  # free the old copy before building the new one
            self._weights, self._signature = self._stack(), signature
        return True

    def get(self) -> dict[str, torch.Tensor | None]:
        """The stacked tensors as of the last :meth:`check` (built now if there was none)."""
        if self._weights is None:
            self.check()
        return self._weights

    def _stack(self) -> dict[str, torch.Tensor | None]:
        attns = [layer.self_attn for layer in self.layers]
        mlps = [layer.mlp for layer in self.layers]

        def stack(tensors: list[torch.Tensor], *trailing: None) -> torch.Tensor:
            return torch.stack([tensor.detach() for tensor in tensors])[(slice(None), *trailing)]

        def cat_linears(groups: list[list[nn.Linear]]) -> tuple[torch.Tensor, torch.Tensor | None]:
            """Per member, the group's weights concatenated: [M, in, out] (a view of [M, out, in] unless
            ``input_major``, which stores [M, in, out] itself), and biases [M, 1, out]."""
            first = groups[0][0].weight
            rows = sum(linear.weight.shape[0] for linear in groups[0])
            shape = (len(groups), first.shape[1], rows) if self.input_major else (len(groups), rows, first.shape[1])
            weight = torch.empty(shape, dtype=first.dtype, device=first.device)
            for member, group in enumerate(groups):  # one member at a time: no second full-size temporary
                concatenated = torch.cat([linear.weight.detach() for linear in group])
                weight[member].copy_(concatenated.T if self.input_major else concatenated)
            weight = weight if self.input_major else weight.transpose(1, 2)
            if groups[0][0].bias is None:
                return weight, None
            return weight, stack([torch.cat([linear.bias for linear in group]) for group in groups], None)

        qkv, qkv_bias = cat_linears([[a.q_proj, a.k_proj, a.v_proj] for a in attns])
        out, out_bias = cat_linears([[a.o_proj] for a in attns])
        gate_up, gate_up_bias = cat_linears([[m.gate_proj, m.up_proj] for m in mlps])
        down, down_bias = cat_linears([[m.down_proj] for m in mlps])
        weights = {
            "qkv": qkv, "qkv_bias": qkv_bias, "out": out, "out_bias": out_bias,
            "gate_up": gate_up, "gate_up_bias": gate_up_bias, "down": down, "down_bias": down_bias,
            "norm1": stack([layer.input_layernorm.weight for layer in self.layers], None, None),
            "norm2": stack([layer.post_attention_layernorm.weight for layer in self.layers], None, None),
        }  # fmt: skip
        if self.qk_norm:
            weights["q_norm"] = stack([a.q_norm.weight for a in attns], None, None, None)
            weights["k_norm"] = stack([a.k_norm.weight for a in attns], None, None, None)
        return weights


class FusedParallel:
    """A parallel group of Llama-family layers run as one computation over stacked weights.

    Numerically the unfused group (the same operations, batched over members): each member's input norm,
    q/k/v projections (and q/k norms), rotary embedding, attention over its own KV-cache slot, output
    projection, residual, post-attention norm and gated MLP; then the mean over members. Attention runs
    once, the members' heads side by side (member ``m``'s heads are ``m*H .. m*H+H-1``, its key/value heads
    ``m*KV ..``; grouped-query attention's head mapping is unchanged).
    """

    def __init__(self, stacked: StackedWeights, slots: list[int]):
        self.stacked = stacked
        self.layers = stacked.layers
        self.slots = slots
        source = sys.modules[type(self.layers[0].self_attn).__module__]  # the architecture's own helpers
        self._eager_attention = source.eager_attention_forward
        self._apply_rotary = source.apply_rotary_pos_emb
        # Read once: module attribute lookups cost more than the small kernels of a decode step.
        first = self.layers[0]
        self.attn = attn = first.self_attn
        self.head_dim = attn.head_dim
        self.q_size = attn.config.num_attention_heads * attn.head_dim
        self.kv_size = attn.config.num_key_value_heads * attn.head_dim
        self.eps = (first.input_layernorm.variance_epsilon, first.post_attention_layernorm.variance_epsilon)
        self.qk_eps = (attn.q_norm.variance_epsilon, attn.k_norm.variance_epsilon) if stacked.qk_norm else None
        self.act_fn = first.mlp.act_fn
        self.sliding_window = getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))

    def __call__(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        past_key_values: Cache | None = None,
        cache_position: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        w = self.stacked.get()
        attn, head_dim, q_size, kv_size = self.attn, self.head_dim, self.q_size, self.kv_size
        members, (batch, length, width) = len(self.slots), hidden_states.shape
        rows = batch * length

        normed = _scaled_rms(hidden_states, self.eps[0], w["norm1"])  # [M, B, T, D]
        qkv = _linear(normed.view(members, rows, width), w["qkv"], w["qkv_bias"])
        shape = (members, batch, length, -1, head_dim)
        query = qkv[..., :q_size].reshape(shape)
        key = qkv[..., q_size : q_size + kv_size].reshape(shape)
        value = qkv[..., q_size + kv_size :].reshape(shape)
        if self.qk_eps is not None:
            query = _scaled_rms(query, self.qk_eps[0], w["q_norm"])
            key = _scaled_rms(key, self.qk_eps[1], w["k_norm"])

        def heads(states: torch.Tensor) -> torch.Tensor:  # [M, B, T, h, d] -> [B, M*h, T, d]
            return states.permute(1, 0, 3, 2, 4).reshape(batch, -1, length, head_dim)

        query, key, value = heads(query), heads(key), heads(value)
        cos, sin = position_embeddings
        query, key = self._apply_rotary(query, key, cos, sin)
        if past_key_values is not None:
            cache_kwargs = {"sin": sin, "cos": cos, "cache_position": cache_position}
            keys, values = [], []
            for member, slot in enumerate(self.slots):
                part = slice(member * key.shape[1] // members, (member + 1) * key.shape[1] // members)
                member_key, member_value = past_key_values.update(key[:, part], value[:, part], slot, cache_kwargs)
                keys.append(member_key)
                values.append(member_value)
            key, value = torch.cat(keys, dim=1), torch.cat(values, dim=1)

        implementation = attn.config._attn_implementation
        interface = self._eager_attention if implementation == "eager" else ALL_ATTENTION_FUNCTIONS[implementation]
        kwargs.pop("position_ids", None)
        kwargs.pop("use_cache", None)
        attended, _ = interface(
            attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling,
            sliding_window=self.sliding_window, **kwargs,
        )  # fmt: skip
        # [B, T, M*H, d] -> [M, B*T, H*d]
        attended = attended.reshape(batch, length, members, -1).permute(2, 0, 1, 3).reshape(members, rows, -1)
        hidden = hidden_states + _linear(attended, w["out"], w["out_bias"]).view(members, batch, length, width)

        normed = _scaled_rms(hidden, self.eps[1], w["norm2"])
        gate, up = _linear(normed.view(members, rows, width), w["gate_up"], w["gate_up_bias"]).chunk(2, dim=-1)
        mlp = _linear(self.act_fn(gate) * up, w["down"], w["down_bias"]).view(members, batch, length, width)
        return (hidden + mlp).mean(dim=0)
