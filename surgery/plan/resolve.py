"""Resolve a :class:`~surgery.plan.spec.LayerPlan` against a model with T layers.

The result, an :class:`ExecutionPlan`, is the executed sequence of *steps*: each step runs one source
layer, or a parallel group of source layers that read the same input and whose outputs are averaged.
This module is pure (no weights, no torch) so everything about a plan can be tested and shown cheaply.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from surgery.errors import SurgeryError
from surgery.plan.limits import MAX_EXECUTED_STEPS
from surgery.plan.spec import LayerPlan, Op, check_overlaps, clip, describe_steps


@dataclass(frozen=True)
class Step:
    """One position of the executed sequence: a source layer, or a parallel group (``len(layers) > 1``)."""

    layers: tuple[int, ...]

    @property
    def parallel(self) -> bool:
        return len(self.layers) > 1

    def __str__(self) -> str:
        return "[" + " ".join(map(str, self.layers)) + "]" if self.parallel else str(self.layers[0])


@dataclass(frozen=True)
class ExecutionPlan:
    """The executed sequence of steps over a source model's ``num_source_layers`` layers."""

    num_source_layers: int
    steps: tuple[Step, ...]

    @property
    def instances(self) -> tuple[int, ...]:
        """Source layer of every executed layer instance, in execution order (one KV-cache slot each)."""
        return tuple(layer for step in self.steps for layer in step.layers)

    @property
    def has_parallel(self) -> bool:
        return any(step.parallel for step in self.steps)

    @property
    def has_repeats(self) -> bool:
        """Whether some source layer runs more than once."""
        return len(set(self.instances)) != len(self.instances)

    @property
    def is_identity(self) -> bool:
        return self.instances == tuple(range(self.num_source_layers)) and not self.has_parallel

    @property
    def skipped(self) -> tuple[int, ...]:
        used = set(self.instances)
        return tuple(i for i in range(self.num_source_layers) if i not in used)

    def needs_custom_class(self, tie_repeats: bool = False) -> bool:
        """True when the plan cannot be expressed as the source architecture (parallel, or tied repeats)."""
        return self.has_parallel or (tie_repeats and self.has_repeats)

    def describe(self) -> str:
        """Compact one-line form, ``0-9 [10 11]x2 12 13x2 14-29`` (see :func:`~surgery.plan.spec.describe_steps`)."""
        return describe_steps([step.layers for step in self.steps])


def _check_in_range(index: int, total: int, where: str) -> None:
    if not 0 <= index < total:
        raise SurgeryError(
            f"layer index {clip(str(index), 24)} out of range in {clip(where)}: "
            f"this model has {total} layers (0-{total - 1})"
        )


def _op_instances(op: Op) -> int:
    """Executed layer instances of ``op``, computed without expanding it."""
    width = op.end - op.start + 1
    if op.kind == "skip":
        return 0
    if op.kind in ("loop", "parallel"):
        return width * op.loops
    return width  # reverse, shuffle, repeat


def _check_executed(executed: int, plan: LayerPlan, total: int) -> None:
    if executed > MAX_EXECUTED_STEPS:
        raise SurgeryError(
            f"plan {clip(plan.canonical)!r} executes {clip(str(executed), 24)} layer instances on this {total}-layer "
            f"model, over the limit MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS} (each instance is a KV-cache slot "
            "and a forward step)"
        )
    if executed == 0:
        raise SurgeryError(f"plan {clip(plan.canonical)!r} executes no layers")


def _op_steps(op: Op, total: int) -> list[Step]:
    block = range(op.start, op.end + 1)
    if op.kind == "skip":
        return []
    if op.kind == "reverse":
        return [Step((i,)) for i in reversed(block)]
    if op.kind == "shuffle":
        order = list(block)
        random.Random(op.seed).shuffle(order)
        return [Step((i,)) for i in order]
    if op.kind == "repeat":
        layer = total // 2 if op.layer is None else op.layer
        return [Step((layer,)) for _ in block]
    if op.kind == "loop":
        return [Step((i,)) for _ in range(op.loops) for i in block]
    if op.kind == "parallel":
        group = Step(tuple(block))
        return [group] * op.loops
    raise SurgeryError(f"unknown op {op.kind!r}")  # unreachable: spec validates kinds


def resolve_plan(plan: LayerPlan, num_layers: int) -> ExecutionPlan:
    """Resolve ``plan`` for a model with ``num_layers`` blocks; raises :class:`SurgeryError` if it can't run.

    Every index is checked against the model and the executed length is computed arithmetically before any
    step is built, so an unbounded plan fails at once (see :data:`~surgery.plan.limits.MAX_EXECUTED_STEPS`).
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int):
        raise SurgeryError(f"the model's layer count must be an integer, got {num_layers!r}")
    if num_layers < 1:
        raise SurgeryError(f"model has no layers to operate on (num_layers={num_layers})")
    steps: list[Step] = []
    if plan.sequence is not None:
        executed = 0
        for position, entry in enumerate(plan.sequence):
            for layer in entry.layers:
                _check_in_range(layer, num_layers, f"sequence[{position}]")
            executed += len(entry.layers) * entry.loops
        _check_executed(executed, plan, num_layers)
        for entry in plan.sequence:
            steps.extend([Step(entry.layers)] * entry.loops)
    else:
        ops = check_overlaps(plan.ops)
        for op in ops:
            _check_in_range(op.start, num_layers, str(op))
            _check_in_range(op.end, num_layers, str(op))
            if op.kind == "repeat":
                _check_in_range(num_layers // 2 if op.layer is None else op.layer, num_layers, str(op))
        owned = sum(op.end - op.start + 1 for op in ops)
        _check_executed(num_layers - owned + sum(_op_instances(op) for op in ops), plan, num_layers)
        layer = 0
        for op in ops:
            steps.extend(Step((i,)) for i in range(layer, op.start))
            steps.extend(_op_steps(op, num_layers))
            layer = op.end + 1
        steps.extend(Step((i,)) for i in range(layer, num_layers))
    return ExecutionPlan(num_source_layers=num_layers, steps=tuple(steps))
