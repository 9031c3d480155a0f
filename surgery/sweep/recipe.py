"""Sweep recipes: one YAML per paper experiment, written in the paper's N and the model's T.

A recipe names the variants of a figure as plan *templates* over a small grid of parameters, so one file works
for a 30-, 32- or 80-layer model::

    # surgery sweep recipes/paper/fig04_skip.yaml --model smollm2-demo --data-dir ../shared/data --out runs/fig04
    version: 1
    figure: "4"
    title: Skip the middle layers N+1 .. T-N-1
    finding: Skipping middle layers degrades gracefully.
    kind: eval                       # eval (lm-eval benchmarks) | similarity | glue
    plot: curves                     # curves | heatmap | similarity | none
    x: N
    variants:
      - name: skip
        plan: "skip:{lo}-{hi}"
        grid: {N: "0 .. (T-2)//2"}

**The paper's N** (stated once, here and in the README): the first N and the last N layers are kept and the
layers N+1 .. T-N-1 (0-based, inclusive) are modified, so a paper point N is ``skip:(N+1)-(T-N-1)``; for T = 32
and N = 8 that is layers 9 .. 23. :func:`paper_range` is the one implementation; templates read it as ``{lo}``
and ``{hi}``.

Template fields (``{...}``) and grid bounds are integer expressions (``+ - * //``, parentheses) over ``T`` (the
model's layer count), the grid parameters (``N``, ``layer``, ``seed``, ``K``...) and, when ``N`` is a parameter,
``lo``/``hi`` (:func:`paper_range`), ``M`` (layers modified) and ``pct`` (``100 * M / T``); ``center`` is
``T // 2``. A grid value is an integer, a list of integers, or ``"A .. B"`` / ``"A .. B by S"`` (inclusive).
"""

from __future__ import annotations

import ast
import itertools
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from surgery.errors import SurgeryError

RECIPE_VERSION = 1
KINDS = ("eval", "similarity", "glue")
_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_FIELD = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(?P<a>.+?)\.\.(?P<b>.+?)(?:by(?P<step>.+))?$")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}
# Bounds checked from the counts, before anything is expanded: the paper's largest figure (fig 10 on an 80-layer
# model) has 40 x 28 = 1120 variants; a grid beyond these is a typo, not an experiment.
MAX_GRID_VALUES = 10_000  # values of one parameter
MAX_VARIANTS = 10_000  # variants of one recipe, all lines together


def paper_range(n: int, num_layers: int) -> tuple[int, int]:
    """The layers a paper point N modifies on a T-layer model: ``(N + 1, T - N - 1)``, 0-based and inclusive.

    The first N and last N layers (and layer N) run as usual. ``paper_range(8, 32) == (9, 23)``;
    ``paper_range(13, 32) == (14, 18)`` (the README's ``skip:14-18``).
    """
    lo, hi = n + 1, num_layers - n - 1
    if n < 0 or lo > hi:
        raise SurgeryError(f"paper N = {n} modifies no layers of a {num_layers}-layer model (0 <= N <= (T-2)//2)")
    return lo, hi


def max_paper_n(num_layers: int) -> int:
    """The largest N that still modifies a layer: ``(T - 2) // 2``."""
    return (num_layers - 2) // 2


def evaluate(expression: str, names: dict[str, int]) -> int:
    """An integer expression over ``names`` (``+ - * //``, unary minus, parentheses); one error line otherwise."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise SurgeryError(f"unknown name {node.id!r} in {expression!r} (known: {', '.join(sorted(names))})")
            return names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            right = walk(node.right)
            if isinstance(node.op, ast.FloorDiv) and right == 0:
                raise SurgeryError(f"division by zero in {expression!r}")
            return _OPS[type(node.op)](walk(node.left), right)
        raise SurgeryError(f"{expression!r} is not an integer expression (+ - * // and parentheses only)")

    if len(expression) > 200:
        raise SurgeryError("expression longer than 200 characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise SurgeryError(f"{expression!r} is not an integer expression") from None
    return walk(tree)


def derived_names(params: dict[str, int], num_layers: int) -> dict[str, Any]:
    """``T``, ``center``, the parameters and, with ``N``, ``lo``/``hi``/``M``/``pct`` (see the module docstring)."""
    names: dict[str, Any] = {"T": num_layers, "center": num_layers // 2, **params}
    if "N" in params:
        lo, hi = paper_range(params["N"], num_layers)
        names.update(lo=lo, hi=hi, M=hi - lo + 1, pct=round(100 * (hi - lo + 1) / num_layers, 2))
    return names


def expand_values(spec: int | list[int] | str, names: dict[str, int]) -> list[int]:
    """A grid value: an integer, a list of integers, or ``"A .. B [by S]"`` with expressions A, B, S."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list):
        if len(spec) > MAX_GRID_VALUES:
            raise SurgeryError(f"a list of {len(spec):,} values; a grid parameter takes at most {MAX_GRID_VALUES:,}")
        return list(spec)
    match = _RANGE.match(spec.strip())
    if not match:
        return [evaluate(spec, names)]
    first, last = evaluate(match["a"], names), evaluate(match["b"], names)
    step = evaluate(match["step"], names) if match["step"] else 1
    if step < 1:
        raise SurgeryError(f"step of {spec!r} must be >= 1")
    count = max(0, (last - first) // step + 1)
    if count > MAX_GRID_VALUES:
        raise SurgeryError(f"{spec!r} has {count:,} values; a grid parameter takes at most {MAX_GRID_VALUES:,}")
    return list(range(first, last + 1, step))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


GridValue = StrictInt | list[StrictInt] | str


class VariantSpec(_Strict):
    """One line of a figure: a plan template evaluated over the grid's cross product."""

    name: str = Field(pattern=_NAME)
    plan: str = Field(min_length=1, max_length=400)
    label: str | None = None
    grid: dict[str, GridValue] = Field(default_factory=dict)

    @field_validator("grid")
    @classmethod
    def _names(cls, grid: dict[str, GridValue]) -> dict[str, GridValue]:
        for name in grid:
            if not re.match(_NAME, name) or name in ("T", "center", "lo", "hi", "M", "pct"):
                raise ValueError(f"{name!r} is not a valid parameter name")
        return grid


class Recipe(_Strict):
    """A sweep recipe (schema version 1)."""

    version: Literal[1]
    figure: str = Field(min_length=1)
    title: str = Field(min_length=1)
    finding: str = Field(min_length=1)
    kind: Literal["eval", "similarity", "glue"]
    plot: Literal["curves", "heatmap", "similarity", "none"] = "curves"
    x: str = "N"
    x_label: str | None = None
    y: str | None = None  # heatmap rows (e.g. K)
    aggregate: str | None = None  # parameter averaged over in plots (mean +- spread), e.g. seed
    identity: bool = True
    tasks: list[str] | None = None
    settings: dict[str, StrictInt | float | str | bool] = Field(default_factory=dict)
    variants: list[VariantSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _something_to_run(self) -> Recipe:
        if not self.variants and not self.identity:
            raise ValueError("no variants and identity: false: nothing to run")
        if self.plot == "heatmap" and self.y is None:
            raise ValueError("a heatmap needs y (the rows, e.g. K)")
        return self


@dataclass(frozen=True)
class Variant:
    """One expanded variant: its recipe line, parameters, derived values and canonical plan."""

    name: str
    label: str
    params: dict[str, int]
    plan: str  # canonical plan text; "identity" for the full model
    derived: dict[str, Any] = field(default_factory=dict)


def _node_line(root: Any, loc: tuple) -> int | None:
    """The 1-based line of the YAML node at pydantic location ``loc`` (as deep as the document goes)."""
    from yaml.nodes import MappingNode, SequenceNode

    node, line = root, None
    if node is not None:
        line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def load_recipe(path: str | Path) -> tuple[Recipe, str]:
    """Read and validate a recipe file; returns ``(recipe, first line)``. Errors name the file and line."""
    import yaml

    from surgery.plan.yaml_loader import PlanLoader, parse_yaml_text, read_plan_file

    path = Path(path)
    if not path.is_file():
        raise SurgeryError(f"recipe file not found: {path}")
    if path.suffix not in (".yaml", ".yml"):
        raise SurgeryError(f"{path}: a recipe is a .yaml file")
    text = read_plan_file(str(path))
    data = parse_yaml_text(text, str(path))
    if not isinstance(data, dict):
        raise SurgeryError(f"{path}: a recipe is a YAML mapping (version, figure, title, kind, variants, ...)")
    try:
        recipe = Recipe(**data)
    except ValidationError as exc:
        errors = exc.errors()
        first = next((error for error in errors if error["type"] == "finite_number"), errors[0])  # .inf, .nan
        loc = tuple(
            part
            for part in first["loc"]
            if not (isinstance(part, str) and (part.startswith(("<", "str")) or part in ("int", "float", "bool")))
        )
        line = _node_line(yaml.compose(text, Loader=PlanLoader), loc)
        where = ".".join(str(part) for part in loc) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise SurgeryError(f"{path}:{line}: {where}: {message}") from None
    first_line = text.splitlines()[0] if text.strip() else ""
    return recipe, first_line


def expand(recipe: Recipe, num_layers: int, grid_override: dict[str, list[int]] | None = None) -> list[Variant]:
    """Every variant of ``recipe`` on a ``num_layers``-layer model, identity first, plans resolved and checked.

    ``grid_override`` replaces a parameter's values (e.g. ``{"N": [4, 8, 12]}`` to thin a sweep); values a
    variant cannot take on this model (an N that modifies no layer) are an error.
    """
    from surgery.plan import load_plan, resolve_plan

    variants = [Variant("identity", "full model", {}, "identity")] if recipe.identity else []
    lines = []
    for spec in recipe.variants:
        base = {"T": num_layers, "center": num_layers // 2}
        axes = {}
        for name, values in spec.grid.items():
            try:
                axes[name] = (
                    grid_override[name] if grid_override and name in grid_override else expand_values(values, base)
                )
            except SurgeryError as exc:
                raise SurgeryError(f"variant {spec.name}, grid {name} on T={num_layers}: {exc}") from None
        lines.append((spec, axes))
    count = sum(math.prod(len(values) for values in axes.values()) for _, axes in lines)
    if count > MAX_VARIANTS:
        sizes = "; ".join(
            f"{spec.name}: " + " x ".join(f"{len(values):,} {name}" for name, values in axes.items())
            for spec, axes in lines
        )
        raise SurgeryError(
            f"the grid expands to {count:,} variants on T={num_layers} ({sizes}); a recipe has at most {MAX_VARIANTS:,}"
        )
    for spec, axes in lines:
        for combo in itertools.product(*axes.values()):
            params = dict(zip(axes, combo))
            try:
                names = derived_names(params, num_layers)
                text = _FIELD.sub(lambda m, names=names: str(evaluate(m[1], names)), spec.plan)
                layer_plan = load_plan(text)
                resolve_plan(layer_plan, num_layers)
            except SurgeryError as exc:
                shown = ", ".join(f"{k}={v}" for k, v in params.items())
                raise SurgeryError(f"variant {spec.name} ({shown}) on T={num_layers}: {exc}") from None
            derived = {k: v for k, v in names.items() if k not in params and k != "T"}
            variants.append(Variant(spec.name, spec.label or spec.name, params, layer_plan.canonical, derived))
    return variants


def recipe_files(paths: list[str | Path]) -> list[Path]:
    """Recipe files named by ``paths`` (files, or folders searched recursively for ``*.yaml``), sorted."""
    found: list[Path] = []
    from surgery.fileio import path_is

    for given in paths:
        path = Path(given)
        if path_is(Path.is_dir, str(given)):
            found += sorted(path.rglob("*.yaml"))
        elif path_is(Path.is_file, str(given)):
            found.append(path)
        else:  # missing, or no possible file name (too long, a NUL byte)
            raise SurgeryError(f"no such recipe file or folder: {str(given)[:200]}")
    return found


def is_sweep_recipe(path: Path) -> bool:
    """True for a sweep recipe (a mapping with ``version`` and ``variants``), False for a plain ``apply`` plan."""
    from surgery.plan.yaml_loader import parse_yaml_text, read_plan_file

    data = parse_yaml_text(read_plan_file(str(path)), str(path))
    return isinstance(data, dict) and "variants" in data


def parse_grid_override(items: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """``["N=4,8,12", "seed=0..4"]`` -> ``{"N": [4, 8, 12], "seed": [0, 1, 2, 3, 4]}`` (no T-relative bounds)."""
    out: dict[str, list[int]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not re.match(_NAME, name.strip()) or not values.strip():
            raise SurgeryError(f"--grid {item!r}: expected NAME=VALUES, e.g. N=4,8,12 or N=0..14 by 2")
        parts = [part.strip() for part in values.split(",")]
        numbers: list[int] = []
        for part in parts:
            numbers += expand_values(part if ".." in part else str(evaluate(part, {})), {})
            if len(numbers) > MAX_GRID_VALUES:
                raise SurgeryError(f"--grid {name.strip()}: more than {MAX_GRID_VALUES:,} values")
        out[name.strip()] = numbers
    return out


VALIDATION_LAYERS = (30, 32, 80)  # SmolLM2-135M, Llama2-7B, Llama2-70B


def validate(path: Path, layer_counts: tuple[int, ...] = VALIDATION_LAYERS) -> Recipe:
    """Schema, first line (``# surgery sweep PATH ...`` or ``# surgery glue``) and expansion on each layer count.

    Plain ``apply`` plans (no ``variants``) are checked as plans instead.
    """
    path = Path(path)
    if not is_sweep_recipe(path):
        from surgery.plan import load_plan

        load_plan(str(path))
        return None  # type: ignore[return-value]
    recipe, first_line = load_recipe(path)
    if not first_line.startswith("# surgery sweep "):
        raise SurgeryError(f"{path}:1: the first line must be the command that runs it (# surgery sweep {path} ...)")
    if recipe.kind == "glue":
        layer_counts = (6, 12, 24)  # MiniLM, BERT-base, BERT-large
    names = {name for spec in recipe.variants for name in spec.grid}
    for count in layer_counts:
        variants = expand(recipe, count)
        if recipe.plot not in ("curves", "heatmap"):
            continue
        known = names | set(variants[-1].derived)
        for axis in (recipe.x, recipe.y, recipe.aggregate):
            if axis is not None and axis not in known:
                raise SurgeryError(f"{path}: {axis!r} (x, y or aggregate) is not a parameter or derived value")
    return recipe


def estimate(path: Path, num_layers: int) -> dict[str, Any]:
    """Figure, kind, title, variant count and evaluations (variants x default tasks) on ``num_layers`` layers."""
    recipe, _ = load_recipe(path)
    variants = len(expand(recipe, num_layers))
    tasks = len(recipe.tasks) if recipe.tasks else (6 if recipe.kind == "eval" else 5 if recipe.kind == "glue" else 1)
    return {
        "figure": recipe.figure,
        "kind": recipe.kind,
        "title": recipe.title,
        "variants": variants,
        "evaluations": variants * tasks,
    }


SETTING_KEYS = {
    "eval": (),
    "similarity": ("texts",),
    "glue": ("mode", "epochs", "lr", "batch_size", "max_length", "max_train"),
}


def parse_settings_override(items: list[str] | tuple[str, ...], kind: str) -> dict[str, Any]:
    """``["max_train=300", "epochs=2"]`` -> ``{"max_train": 300, "epochs": 2}``, keys checked against ``kind``."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not value.strip():
            raise SurgeryError(f"--set {item!r}: expected KEY=VALUE, e.g. max_train=300")
        if name not in SETTING_KEYS[kind]:
            known = ", ".join(SETTING_KEYS[kind]) or "none"
            raise SurgeryError(f"--set {name}: not a setting of {kind} recipes (settings: {known})")
        parsed = yaml.safe_load(value)
        if not isinstance(parsed, (int, float, str, bool)) or (isinstance(parsed, float) and not math.isfinite(parsed)):
            raise SurgeryError(f"--set {item!r}: the value must be a finite number, a word or true/false")
        out[name] = parsed
    return out
