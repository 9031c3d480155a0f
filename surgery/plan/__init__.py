"""Layer plans: parsing (``spec``) and resolution against a model's layer count (``resolve``)."""

from surgery.plan.resolve import ExecutionPlan, Step, resolve_plan
from surgery.plan.spec import LayerPlan, Op, load_plan, parse_plan_text

__all__ = ["ExecutionPlan", "LayerPlan", "Op", "Step", "load_plan", "parse_plan_text", "resolve_plan"]
