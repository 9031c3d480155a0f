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
  layer executed once has its attention's ``layer_idx`` pointed at its slot for good (``release`` gives it
  back) and is then called as itself, with nothing in between; a layer executed several times is pointed at
  each slot for the duration of the call.
* A parallel group of Llama-family layers (Llama, Mistral, Qwen2, Qwen3) runs *fused* (``fused_parallel.py``,
  shipped beside this file) at inference
  (``torch.is_grad_enabled()`` false, ``config.surgery_fuse_parallel`` true): the members' weights are
  stacked once (a copy beside the per-layer weights, made on first use; checked once per forward and rebuilt
  when the weights changed; the checkpoint stores them per layer as usual), projections and MLPs run as
  batched matmuls, and attention runs once with the members as extra heads. Each member keeps its own
  KV-cache slot. Other groups, and training, run the members one after another.
* Nothing above runs per layer call: per-forward decisions are made when the source loop starts iterating
  the block list (``ExecutionList.prepare``), and the class's forward reads no module tree.
* ``output_hidden_states`` gives one entry per step: the embedding output, each step's output, and, last,
  the model's ``last_hidden_state`` (after the final norm where the architecture has one), as in
  ``transformers``.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache

from .configuration_surgery import SurgeryConfig
from .fused_parallel import FusedParallel, StackedWeights, fusable


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
        for module in self.indexed:  # a plain attribute: written to __dict__, skipping nn.Module.__setattr__
            module.__dict__["layer_idx"] = self.slot
        try:
            return self.layer(hidden_states, *args, **kwargs)
        finally:
            for module, index in zip(self.indexed, own):
                module.__dict__["layer_idx"] = index


class ExecutedStep:
    """One position of the executed sequence: a stored layer, or a parallel group of them."""

    def __init__(
        self,
        layers: list[nn.Module],
        slots: list[int],
        owner: ExecutionList,
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
        self.fused: FusedParallel | None = None  # set by ExecutionList for a group of one fusable type
        self.fuse_now = False  # set once per forward by ExecutionList.prepare

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
            and not args
            and not torch.is_grad_enabled()
            # decided once per forward (ExecutionList.prepare); compiled: whenever enabled, as before compiling
            and (self.owner.fuse_parallel if torch.compiler.is_compiling() else self.fuse_now)
        ):
            result = self.fused(hidden_states, **kwargs)
        else:
            masks = self.owner.member_masks() if self.mixed else None
            outputs = [
                route(hidden_states, *args, **(kwargs if masks is None else {**kwargs, "attention_mask": masks[kind]}))
                for route, kind in zip(self.routes, self.member_types)
            ]
            mean = torch.stack([_hidden(out) for out in outputs]).mean(dim=0)
            result = mean if isinstance(outputs[0], torch.Tensor) else (mean, *outputs[0][1:])
        if self.owner.recorded is not None:
            self.owner.record(hidden_states, result)
        return result


class ExecutionList(nn.ModuleList):
    """Block list whose children are the stored layers but whose iteration yields the executed steps.

    ``fuse_parallel`` (default true) lets parallel groups of fusable layers run fused at inference.

    Per-step work is done once, not per layer call: routing when the list is built (a layer executed once is
    pointed at its cache slot for good, see :meth:`release`; a layer that runs in its own slot is yielded as
    itself), fusion decisions and the stacked copies' freshness once per forward (:meth:`prepare`, run when the
    source loop starts iterating).
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
        self._pinned = _pin_single_instances(stored, steps)
        slot = 0
        executed = []
        stacks: dict[tuple[int, ...], StackedWeights] = {}
        self._masks: dict[str, Any] | None = None
        for step in steps:
            layers = [stored[index] for index in step]
            types = [layer_types[index] for index in step] if layer_types is not None else None
            executed.append(ExecutedStep(layers, list(range(slot, slot + len(step))), self, types))
            if fusable(layers) and not executed[-1].mixed:  # a looped block's steps share one stacked copy
                executed[-1].fused = FusedParallel(
                    stacks.setdefault(tuple(step), StackedWeights(layers)), executed[-1].slots
                )
            slot += len(step)
        self.steps = executed
        self._fusing = [step for step in executed if step.fused is not None]
        # What the source loop iterates when no hidden states are recorded: a layer that runs in its own slot is
        # called as itself, with nothing in between.
        self._runners = [
            step.layers[0] if len(step.routes) == 1 and step.routes[0].direct else step for step in executed
        ]

    def prepare(self) -> None:
        """Once per forward, before the first step: which groups run fused, and their stacked copies up to date
        (rebuilt if a member's weights were updated in place, moved, cast or replaced since the last forward)."""
        if not self._fusing or torch.compiler.is_compiling():
            return
        fuse = self.fuse_parallel and not torch.is_grad_enabled()
        checked: dict[int, bool] = {}
        for step in self._fusing:
            stacked = step.fused.stacked
            if fuse and id(stacked) not in checked:
                checked[id(stacked)] = stacked.check()  # False: e.g. LoRA added after loading
            step.fuse_now = fuse and checked[id(stacked)]

    def release(self) -> None:
        """Give back the layers' own ``layer_idx`` (pointed at their cache slots when the list was built)."""
        for module, index in self._pinned:
            module.layer_idx = index
        self._pinned = []

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
        self.prepare()
        return iter(self.steps if self.recorded is not None else self._runners)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, index):
        if isinstance(index, slice):  # the source loop: ``for layer in self.layers[: num_hidden_layers]``
            self.prepare()
            return (self.steps if self.recorded is not None else self._runners)[index]
        return self.steps[index]


def _pin_single_instances(stored: nn.ModuleList, steps: list[list[int]]) -> list[tuple[nn.Module, int]]:
    """Point the ``layer_idx`` of every layer executed exactly once at its cache slot, for good (no switching
    per call); returns (module, own index) pairs to restore. Layers executed several times are switched per call
    (:class:`SlotRoute`)."""
    uses: dict[int, int] = {}
    for step in steps:
        for index in step:
            uses[index] = uses.get(index, 0) + 1
    pinned = []
    slot = 0
    for step in steps:
        for index in step:
            if uses[index] == 1:
                for module in stored[index].modules():
                    own = getattr(module, "layer_idx", None)
                    if isinstance(own, int) and own != slot:
                        pinned.append((module, own))
                        module.layer_idx = slot
            slot += 1
    return pinned


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
        if self.training and self.is_gradient_checkpointing:  # walks every module: only when training
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
