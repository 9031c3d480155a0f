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
  flat list of ``config.num_hidden_layers`` slots.
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


def _mean_outputs(outputs: list[Any]) -> Any:
    """Average layer outputs (tensors, or tuples whose first element is the hidden state)."""
    if len(outputs) == 1:
        return outputs[0]
    if isinstance(outputs[0], torch.Tensor):
        return torch.stack(outputs).mean(dim=0)
    mean = torch.stack([out[0] for out in outputs]).mean(dim=0)
    return (mean, *outputs[0][1:])


def _hidden(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


class ExecutedStep:
    """One position of the executed sequence: a stored layer, or a parallel group of them."""

    def __init__(self, layers: list[nn.Module], slots: list[int], owner: ExecutionList):
        self.layers = layers
        self.slots = slots
        self.owner = owner
        types = {getattr(layer, "attention_type", None) for layer in layers}
        if len(types) > 1:
            raise ValueError(f"a parallel group mixes attention types {sorted(map(str, types))}")
        self.attention_type = types.pop()

    def __call__(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        outputs = []
        for layer, slot in zip(self.layers, self.slots):
            slot_args = [_with_slot(value, slot) for value in args]
            slot_kwargs = {key: _with_slot(value, slot) for key, value in kwargs.items()}
            outputs.append(layer(hidden_states, *slot_args, **slot_kwargs))
        result = _mean_outputs(outputs)
        self.owner.record(hidden_states, result)
        return result


class ExecutionList(nn.ModuleList):
    """Block list whose children are the stored layers but whose iteration yields the executed steps."""

    def __init__(self, stored: nn.ModuleList, steps: list[list[int]]):
        nn.Module.__init__(self)  # ModuleList.__init__ would call our __len__
        for index, layer in enumerate(stored):
            self.add_module(str(index), layer)
        slot = 0
        executed = []
        for step in steps:
            layers = [stored[index] for index in step]
            executed.append(ExecutedStep(layers, list(range(slot, slot + len(step))), self))
            slot += len(step)
        self.steps = executed
        self.recorded: list[torch.Tensor] | None = None

    def record(self, step_input: torch.Tensor, step_output: Any) -> None:
        if self.recorded is None:
            return
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
    inner_config._attn_implementation = config._attn_implementation
    model_class = getattr(transformers, config.source_architectures[0])
    inner = model_class(inner_config)
    parent, name = _resolve_attr(inner, config.surgery_layer_list)
    stored = getattr(parent, name)
    if len(stored) != config.surgery_stored_layers:
        raise ValueError(f"expected {config.surgery_stored_layers} stored layers, found {len(stored)}")
    setattr(parent, name, ExecutionList(stored, config.surgery_steps))
    # The source forward loop indexes per-position lists (e.g. head masks) by executed step.
    inner.config.num_hidden_layers = len(config.surgery_steps)
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
