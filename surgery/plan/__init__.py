"""Layer plans: parsing (``spec``) and resolution against a model's layer count (``resolve``).

Plans are untrusted input; the bounds they must respect live in :mod:`surgery.plan.limits`.
"""

from surgery.plan.limits import MAX_EXECUTED_STEPS, MAX_LAYER_INDEX, MAX_LOOPS, MAX_PLAN_BYTES, MAX_YAML_DEPTH
from surgery.plan.resolve import ExecutionPlan, Step, resolve_plan
from surgery.plan.spec import LayerPlan, Op, SequenceEntry, load_plan, make_op, parse_plan_mapping, parse_plan_text

__all__ = [
    "MAX_EXECUTED_STEPS",
    "MAX_LAYER_INDEX",
    "MAX_LOOPS",
    "MAX_PLAN_BYTES",
    "MAX_YAML_DEPTH",
    "ExecutionPlan",
    "LayerPlan",
    "Op",
    "SequenceEntry",
    "Step",
    "load_plan",
    "make_op",
    "parse_plan_mapping",
    "parse_plan_text",
    "resolve_plan",
]
