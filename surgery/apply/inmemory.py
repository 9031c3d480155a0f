"""Apply a layer plan to a loaded model in memory: no checkpoint written, no weights copied.

Sweeps (similarity, benchmarks) run hundreds of variants of one model. :func:`planned` swaps the model's
block list for the same :class:`~surgery.modeling.modeling_surgery.ExecutionList` the surgery checkpoints
use (its steps reference the model's own layers, so repeats share weights), sizes the config for one
KV-cache slot per executed instance, and restores everything on exit::

    with planned(model, "parallel:8-23x3"):
        logits = model(input_ids).logits
        hidden = forward_with_hidden_states(model, input_ids=input_ids).hidden_states  # one entry per step

Under a plan, use :func:`forward_with_hidden_states` rather than ``output_hidden_states=True``: the source
model's own hidden-state hooks fire once per *layer call*, so a parallel block would give one entry per member.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from surgery.errors import SurgeryError
from surgery.modeling.modeling_surgery import ExecutionList, forward_recording_steps
from surgery.plan import ExecutionPlan, LayerPlan, load_plan, resolve_plan


def find_layer_list(model: nn.Module, layer_list: str) -> tuple[nn.Module, str, nn.ModuleList]:
    """Locate the block list (e.g. ``model.layers``) in ``model``: (parent module, attribute, list)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and (name == layer_list or name.endswith("." + layer_list)):
            parent_name, _, attribute = name.rpartition(".")
            return (model.get_submodule(parent_name) if parent_name else model), attribute, module
    raise SurgeryError(f"no block list {layer_list!r} found in {type(model).__name__}")


def block_list_of(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The block list of a loaded model, detected: a plan's :class:`ExecutionList`, else the outermost
    ``nn.ModuleList`` of ``config.num_hidden_layers`` modules (:func:`surgery.architectures.detect.find_block_list`)."""
    from surgery.architectures.detect import find_block_list

    path = next((name for name, module in model.named_modules() if isinstance(module, ExecutionList)), None)
    if path is None:
        path = find_block_list(model, model.config.num_hidden_layers)
    return find_layer_list(model, path)


def resolve_for_model(model: nn.Module, plan: str | LayerPlan) -> ExecutionPlan:
    """Resolve a plan (text, YAML path or :class:`LayerPlan`) against ``model``'s layer count."""
    layer_plan = load_plan(plan) if isinstance(plan, str) else plan
    return resolve_plan(layer_plan, model.config.num_hidden_layers)


@contextmanager
def planned(
    model: nn.Module, plan: str | LayerPlan | ExecutionPlan, fuse_parallel: bool = True
) -> Iterator[ExecutionPlan]:
    """Run ``model`` with ``plan`` applied inside the ``with`` block; yields the resolved plan.

    ``fuse_parallel`` lets parallel groups of Llama-family layers run fused at inference (same numbers; see
    :class:`~surgery.modeling.modeling_surgery.FusedParallel`); false runs the members one by one.
    """
    parent, attribute, layers = block_list_of(model)
    if isinstance(layers, ExecutionList):
        raise SurgeryError("a plan is already applied to this model; nest plans by composing them instead")
    execution = plan if isinstance(plan, ExecutionPlan) else resolve_for_model(model, plan)
    if execution.num_source_layers != len(layers):
        raise SurgeryError(f"plan is for {execution.num_source_layers} layers, model has {len(layers)}")
    config = model.config
    saved = {"num_hidden_layers": config.num_hidden_layers, "layer_types": getattr(config, "layer_types", None)}
    layer_types = saved["layer_types"]
    steps = [list(step.layers) for step in execution.steps]
    execution_list = ExecutionList(layers, steps, fuse_parallel, layer_types)
    setattr(parent, attribute, execution_list)
    watch = execution_list.watch_masks(parent)  # groups mixing sliding and full attention: a mask per member
    # One cache slot per executed instance; loops that slice by num_hidden_layers still see every step.
    config.num_hidden_layers = len(execution.instances)
    if layer_types is not None:
        config.layer_types = [layer_types[i] for i in execution.instances]
    try:
        yield execution
    finally:
        if watch is not None:
            watch.remove()
        execution_list.release()  # the layers' own layer_idx back
        setattr(parent, attribute, layers)
        config.num_hidden_layers = saved["num_hidden_layers"]
        if layer_types is not None:
            config.layer_types = layer_types


def forward_with_hidden_states(model: nn.Module, **inputs):
    """Forward pass whose ``hidden_states`` has one entry per executed step (plus the embedding output).

    Without a plan applied this is ``model(**inputs, output_hidden_states=True)``; inside :func:`planned` it
    records the steps of the plan (a parallel block is one entry: the mean of its members).
    """
    _, _, layers = block_list_of(model)
    if not isinstance(layers, ExecutionList):
        return model(**inputs, output_hidden_states=True)
    return forward_recording_steps(model, layers, **inputs)
