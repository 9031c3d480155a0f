"""Model classes for surgery checkpoints: one wrapper around any supported source architecture.

Copied verbatim into checkpoints whose plan has a parallel block or tied repeats, and loaded with
``AutoModel*.from_pretrained(path, trust_remote_code=True)``; depends only on ``torch`` and ``transformers``.

How it works: the wrapped source model (``self.inner``, e.g. a ``LlamaForCausalLM``) is built with the
*stored* layers. Its block list is then replaced by an :class:`ExecutionList` whose registered children
are still those stored layers (so weights keep their usual names, ``inner.model.layers.3.mlp...``), but
whose iteration yields the executed *steps*. The source model's own forward loop therefore runs the plan:
embeddings, masks, rotary embeddings, final norm and head are untouched source code.

* A step runs one stored layer, or a parallel group: every member reads the same input and the step
  returns the mean of their outputs (paper §3.5).
* Every executed layer instance gets its own KV-cache slot (a layer run twice caches twice); a cache is a
  flat list of ``config.num_hidden_layers`` slots. Routing is computed once, when the list is built: a
  layer whose slot is its own index is called as is; otherwise its attention's ``layer_idx`` is pointed at
  the slot for the duration of the call.
* A parallel group of Llama-family layers (Llama, Mistral, Qwen2, Qwen3) runs *fused* at inference
  (``torch.is_grad_enabled()`` false, ``config.surgery_fuse_parallel`` true): the members' weights are
  stacked once (a copy, made on first use and rebuilt when the weights change; the checkpoint stores them
  per layer as usual), projections and MLPs run as batched matmuls, and attention runs once with the
  members as extra heads. Each member keeps its own KV-cache slot. Other groups, and training, run the
  members one after another.
* ``output_hidden_states`` gives one entry per step: the embedding output, each step's output, and, last,
  the model's ``last_hidden_state`` (after the final norm where the architecture has one), as in
  ``transformers``.
"""

from __future__ import annotations

import inspect
import sys
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_surgery import SurgeryConfig

# Decoder layers whose parallel groups can run fused: pre-norm RMSNorm, q/k/v/o projections, gated MLP.
FUSABLE_LAYERS = {
    "LlamaDecoderLayer": False,  # value: whether the attention has per-head q_norm / k_norm
    "MistralDecoderLayer": False,
    "Qwen2DecoderLayer": False,
    "Qwen3DecoderLayer": True,
}


class CacheSlotView(Cache):
    """A view of a cache that stores a layer's keys/values in one fixed slot, whatever its ``layer_idx``."""

    def __init__(self, cache: Cache, slot: int):  # noqa: D107 - deliberately skips Cache.__init__
        self._cache = cache
        self._slot = slot

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        return self._cache.update(key_states, value_states, self._slot, cache_kwargs)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._cache.get_seq_length(self._slot)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_cache"], name)


def _with_slot(value: Any, slot: int) -> Any:
    return CacheSlotView(value, slot) if isinstance(value, Cache) else value


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class SlotRoute:
    """Runs one stored layer so that it caches in a given slot (computed once per executed instance)."""

    def __init__(self, layer: nn.Module, slot: int):
        self.layer = layer
        self.slot = slot
        self.indexed = [module for module in layer.modules() if isinstance(getattr(module, "layer_idx", None), int)]
        self.direct = bool(self.indexed) and all(module.layer_idx == slot for module in self.indexed)

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.direct:
            return self.layer(hidden_states, *args, **kwargs)
        if not self.indexed:  # no layer_idx to point: route through a cache view instead
            args = tuple(_with_slot(value, self.slot) for value in args)
            kwargs = {key: _with_slot(value, self.slot) for key, value in kwargs.items()}
            return self.layer(hidden_states, *args, **kwargs)
        own = [module.layer_idx for module in self.indexed]
        for module in self.indexed:
            module.layer_idx = self.slot
        try:
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            for module, index in zip(self.indexed, own):
                module.layer_idx = index


def fusable(layers: list[nn.Module]) -> bool:
    """Whether a parallel group can run fused: same Llama-family class, plain ``nn.Linear`` projections.

    Wrapped projections (LoRA adapters, quantized linears) and any other architecture run unfused.
    """
    name = type(layers[0]).__name__
    if len(layers) < 2 or name not in FUSABLE_LAYERS or any(type(layer) is not type(layers[0]) for layer in layers):
        return False
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        linears = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(linear) is not nn.Linear for linear in linears):
            return False
    return True


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

    Built on first use and rebuilt when a member's weights change (updated in place, moved or cast); steps
    that run the same group (a looped parallel block) share one. q/k/v and gate/up are concatenated per member.
    """

    input_major = True  # store [M, in, out] (measured faster for Llama-7B decode); False: view of [M, out, in]

    def __init__(self, layers: list[nn.Module]):
        self.layers = layers
        self.qk_norm = FUSABLE_LAYERS[type(layers[0]).__name__]
        self._weights: dict[str, torch.Tensor | None] | None = None
        self._signature: tuple | None = None

    def get(self) -> dict[str, torch.Tensor | None]:
        """The stacked tensors (under ``torch.compile``: as built before compiling)."""
        if self._weights is not None and torch.compiler.is_compiling():
            return self._weights
        signature = tuple((param.data_ptr(), param._version, param.dtype) for param in self._tensors())
        if self._weights is None or signature != self._signature:
            self._weights = None  # free the old copy before building the new one
            self._weights, self._signature = self._stack(), signature
        return self._weights

    def _tensors(self) -> list[torch.Tensor]:
        tensors = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for linear in (
                attn.q_proj,
                attn.k_proj,
                attn.v_proj,
                attn.o_proj,
                mlp.gate_proj,
                mlp.up_proj,
                mlp.down_proj,
            ):
                tensors.append(linear.weight)
                if linear.bias is not None:
                    tensors.append(linear.bias)
            tensors += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
            if self.qk_norm:
                tensors += [attn.q_norm.weight, attn.k_norm.weight]
        return tensors

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
        first = self.layers[0]
        attn = first.self_attn
        members, (batch, length, width) = len(self.layers), hidden_states.shape
        rows, head_dim = batch * length, attn.head_dim
        q_size = attn.config.num_attention_heads * head_dim
        kv_size = attn.config.num_key_value_heads * head_dim

        normed = _scaled_rms(hidden_states, first.input_layernorm.variance_epsilon, w["norm1"])  # [M, B, T, D]
        qkv = _linear(normed.view(members, rows, width), w["qkv"], w["qkv_bias"])
        shape = (members, batch, length, -1, head_dim)
        query = qkv[..., :q_size].reshape(shape)
        key = qkv[..., q_size : q_size + kv_size].reshape(shape)
        value = qkv[..., q_size + kv_size :].reshape(shape)
        if self.stacked.qk_norm:
            query = _scaled_rms(query, attn.q_norm.variance_epsilon, w["q_norm"])
            key = _scaled_rms(key, attn.k_norm.variance_epsilon, w["k_norm"])

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
        sliding_window = getattr(attn, "sliding_window", getattr(attn.config, "sliding_window", None))
        kwargs.pop("position_ids", None)
        kwargs.pop("use_cache", None)
        attended, _ = interface(
            attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling,
            sliding_window=sliding_window, **kwargs,
        )  # fmt: skip
        # [B, T, M*H, d] -> [M, B*T, H*d]
        attended = attended.reshape(batch, length, members, -1).permute(2, 0, 1, 3).reshape(members, rows, -1)
        hidden = hidden_states + _linear(attended, w["out"], w["out_bias"]).view(members, batch, length, width)

        normed = _scaled_rms(hidden, first.post_attention_layernorm.variance_epsilon, w["norm2"])
        gate, up = _linear(normed.view(members, rows, width), w["gate_up"], w["gate_up_bias"]).chunk(2, dim=-1)
        mlp = _linear(first.mlp.act_fn(gate) * up, w["down"], w["down_bias"]).view(members, batch, length, width)
        return (hidden + mlp).mean(dim=0)


class ExecutedStep:
    """One position of the executed sequence: a stored layer, or a parallel group of them."""

    def __init__(
        self,
        layers: list[nn.Module],
        slots: list[int],
        owner: ExecutionList,
        stacked: StackedWeights | None = None,
        member_types: list[str | None] | None = None,
    ):
        self.layers = layers
        self.slots = slots
        self.owner = owner
        self.member_types = member_types or [getattr(layer, "attention_type", None) for layer in layers]
        # A group of sliding and full layers: each member gets its own mask (ExecutionList.member_masks).
        self.mixed = len(set(self.member_types)) > 1
        types = self.member_types
        self.attention_type = "full_attention" if self.mixed and "full_attention" in types else types[0]
        self.routes = [SlotRoute(layer, slot) for layer, slot in zip(layers, slots)]
        self.fused = FusedParallel(stacked, slots) if stacked is not None else None

    def __getattr__(self, name: str) -> Any:
        """What a source loop reads from its layers (``layer_type``, ``self_attn``, ...): the first member's;
        a method (``set_attention_type``) is called on every member."""
        if name.startswith("__") or "layers" not in self.__dict__:
            raise AttributeError(name)
        values = [getattr(layer, name) for layer in self.__dict__["layers"]]
        if callable(values[0]) and not isinstance(values[0], nn.Module):
            return lambda *args, **kwargs: [value(*args, **kwargs) for value in values][0]
        return values[0]

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if len(self.routes) == 1:
            result = self.routes[0](hidden_states, *args, **kwargs)
        elif (
            self.fused is not None
            and self.owner.fuse_parallel
            and not args
            and not torch.is_grad_enabled()
            and (torch.compiler.is_compiling() or fusable(self.layers))  # e.g. LoRA added after loading
        ):
            result = self.fused(hidden_states, **kwargs)
        elif self.mixed:
            masks = self.owner.member_masks()
            outputs = [
                route(hidden_states, *args, **{**kwargs, "attention_mask": masks[kind]})
                for route, kind in zip(self.routes, self.member_types)
            ]
            mean = torch.stack([_hidden(out) for out in outputs]).mean(dim=0)
            result = mean if isinstance(outputs[0], torch.Tensor) else (mean, *outputs[0][1:])
        else:
            outputs = [route(hidden_states, *args, **kwargs) for route in self.routes]
            mean = torch.stack([_hidden(out) for out in outputs]).mean(dim=0)
            result = mean if isinstance(outputs[0], torch.Tensor) else (mean, *outputs[0][1:])
        if self.owner.recorded is not None:
            self.owner.record(hidden_states, result)
        return result


class ExecutionList(nn.ModuleList):
    """Block list whose children are the stored layers but whose iteration yields the executed steps.

    ``fuse_parallel`` (default true) lets parallel groups of fusable layers run fused at inference.
    """

    def __init__(
        self,
        stored: nn.ModuleList,
        steps: list[list[int]],
        fuse_parallel: bool = True,
        layer_types: list[str] | None = None,
    ):
        nn.Module.__init__(self)  # ModuleList.__init__ would call our __len__
        for index, layer in enumerate(stored):
            self.add_module(str(index), layer)
        self.fuse_parallel = fuse_parallel
        self.recorded: list[torch.Tensor] | None = None
        slot = 0
        executed = []
        stacks: dict[tuple[int, ...], StackedWeights] = {}
        self._masks: dict[str, Any] | None = None
        for step in steps:
            layers = [stored[index] for index in step]
            types = [layer_types[index] for index in step] if layer_types is not None else None
            stacked = None
            if fusable(layers) and (types is None or len(set(types)) == 1):
                stacked = stacks.setdefault(tuple(step), StackedWeights(layers))
            executed.append(ExecutedStep(layers, list(range(slot, slot + len(step))), self, stacked, types))
            slot += len(step)
        self.steps = executed

    def watch_masks(self, owner: nn.Module) -> Any:
        """If a group mixes attention types: at every forward of ``owner`` (the block list's parent), build the
        mask of each attention type as the source model does, before any layer updates the cache; each member
        of a mixed group then gets its own (:meth:`member_masks`). Returns the hook handle, or None."""
        kinds = {kind for step in self.steps if step.mixed for kind in step.member_types}
        if not kinds:
            return None

        def build(module: nn.Module, args: tuple, kwargs: dict) -> None:
            from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

            builders = {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}
            mask, cache = kwargs.get("attention_mask"), kwargs.get("past_key_values")
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:  # only its batch, length, dtype and device are read
                ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
                embeds = torch.empty(
                    (*ids.shape, 1), dtype=module.get_input_embeddings().weight.dtype, device=ids.device
                )
            positions = kwargs.get("cache_position")
            if positions is None:
                seen = cache.get_seq_length() if cache is not None else 0
                positions = torch.arange(seen, seen + embeds.shape[1], device=embeds.device)
            position_ids = kwargs.get("position_ids")
            self._masks = mask if isinstance(mask, dict) else {
                kind: builders[kind](
                    config=module.config, input_embeds=embeds, attention_mask=mask, cache_position=positions,
                    past_key_values=cache, position_ids=positions[None] if position_ids is None else position_ids,
                )
                for kind in kinds
            }  # fmt: skip

        return owner.register_forward_pre_hook(build, with_kwargs=True)

    def member_masks(self) -> dict[str, Any]:
        """The attention mask of each attention type of this forward (see :meth:`watch_masks`)."""
        if self._masks is None:
            raise RuntimeError("a parallel group mixes attention types, but no mask was built for this forward")
        return self._masks

    @property
    def fused_steps(self) -> int:
        """How many steps run fused at inference (parallel groups of fusable layers, when enabled)."""
        return sum(step.fused is not None for step in self.steps) if self.fuse_parallel else 0

    def record(self, step_input: torch.Tensor, step_output: Any) -> None:
        if not self.recorded:
            self.recorded.append(_hidden(step_input))
        self.recorded.append(_hidden(step_output))

    @contextmanager
    def recording(self, enabled: bool):
        self.recorded = [] if enabled else None
        try:
            yield
        finally:
            if not enabled:
                self.recorded = None

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index):
        return self.steps[index]


def forward_recording_steps(model: PreTrainedModel, execution: ExecutionList, **kwargs: Any) -> Any:
    """Run ``model`` and set ``hidden_states`` to one entry per executed step.

    Entries: the input of the first step (embedding output), the output of every step but the last, and the
    model's ``last_hidden_state`` (after the final norm where the architecture has one), as in transformers.
    A parallel block is one step (its mean), whatever the source model's own hidden-state hooks record.
    """
    kwargs.pop("output_hidden_states", None)
    last_hidden: list[torch.Tensor] = []
    hook = model.base_model.register_forward_hook(lambda module, args, output: last_hidden.append(output[0]))
    try:
        with execution.recording(True):
            outputs = model(**kwargs, output_hidden_states=False)
            recorded = list(execution.recorded)
    finally:
        hook.remove()
    outputs["hidden_states"] = tuple(recorded[:-1]) + (last_hidden[-1],)
    return outputs


def _resolve_attr(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent = root
    *path, last = dotted.split(".")
    for name in path:
        parent = getattr(parent, name)
    return parent, last


def _build_inner(config: SurgeryConfig) -> nn.Module:
    import transformers

    inner_config = AutoConfig.for_model(config.source_model_type, **config.source_config_dict())
    model_class = getattr(transformers, config.source_architectures[0])
    implementation = config._attn_implementation
    supported = {"sdpa": "_supports_sdpa", "flex_attention": "_supports_flex_attn"}
    if implementation and implementation.startswith("flash"):
        supported[implementation] = "_supports_flash_attn"
    if implementation in supported and not getattr(model_class, supported[implementation], False):
        implementation = "eager"  # the wrapper accepts every kernel; the source class may not
    inner_config._attn_implementation = implementation
    inner = model_class(inner_config)
    parent, name = _resolve_attr(inner, config.surgery_layer_list)
    stored = getattr(parent, name)
    if len(stored) != config.surgery_stored_layers:
        raise ValueError(f"expected {config.surgery_stored_layers} stored layers, found {len(stored)}")
    execution = ExecutionList(
        stored, config.surgery_steps, config.surgery_fuse_parallel, config.surgery_stored_layer_types
    )
    setattr(parent, name, execution)
    execution.watch_masks(parent)
    # The source forward loop indexes per-position lists (head masks; EXAONE 4's layer_types) by executed step.
    inner.config.num_hidden_layers = len(config.surgery_steps)
    if config.surgery_stored_layer_types is not None:
        types = config.surgery_stored_layer_types
        inner.config.layer_types = [types[step[0]] for step in config.surgery_steps]  # a group has one type
    return inner


class SurgeryPreTrainedModel(PreTrainedModel):
    """Shared loading / weight-init plumbing of the surgery wrappers."""

    config_class = SurgeryConfig
    base_model_prefix = "inner"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: SurgeryConfig):
        super().__init__(config)
        self.inner = _build_inner(config)
        parent, name = _resolve_attr(self.inner, config.surgery_layer_list)
        # Not registered as a submodule: the stored layers already live under ``inner``.
        object.__setattr__(self, "_execution", getattr(parent, name))
        self._inner_params = set(inspect.signature(self.inner.forward).parameters)
        if getattr(config, "tie_word_embeddings", False) and self.inner.get_output_embeddings() is not None:
            self._tied_weights_keys = ["inner." + key for key in (self.inner._tied_weights_keys or [])]
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        self.inner._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.inner.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.inner.get_output_embeddings()

    def _run_inner(self, output_hidden_states: bool | None, **kwargs: Any) -> Any:
        return_dict = kwargs.pop("return_dict", None)
        return_dict = self.config.use_return_dict if return_dict is None else return_dict
        outputs = self._run_inner_dict(output_hidden_states, return_dict=True, **kwargs)
        return outputs if return_dict else outputs.to_tuple()

    def _run_inner_dict(self, output_hidden_states: bool | None, **kwargs: Any) -> Any:
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        kwargs = {key: value for key, value in kwargs.items() if value is not None and key in self._inner_params}
        if not output_hidden_states:
            return self.inner(**kwargs)
        return forward_recording_steps(self.inner, self._execution, **kwargs)


class SurgeryModel(SurgeryPreTrainedModel):
    """A surgery checkpoint of a non-generative source architecture (e.g. a BERT encoder)."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_hidden_states=None,
        **kwargs,
    ):
        # Named (not only **kwargs) so that signature-driven tools such as optimum's ONNX exporter see them.
        return self._run_inner(
            output_hidden_states,
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )


class SurgeryForCausalLM(SurgeryPreTrainedModel, GenerationMixin):
    """A surgery checkpoint of a causal LM; generation and KV cache work as for the source model."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.is_gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        return self._run_inner(
            output_hidden_states,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            cache_position=cache_position,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
