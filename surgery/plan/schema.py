"""Pydantic models of plan YAML: strict types, no unknown keys, and one-line :class:`SurgeryError` messages.

These models check *shapes and types* only (``loops: 2.5``, ``layer: "5"`` or ``seed: [1]`` are refused here);
the meaning of the values (known op kinds, ranges, bounds) is checked by :mod:`surgery.plan.spec`, so the text
and YAML front ends share one set of semantic checks and messages.
"""

from __future__ import annotations

import reprlib
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
)

from surgery.errors import SurgeryError
from surgery.plan.limits import MAX_EXECUTED_STEPS


def _kind(value: Any) -> str | None:
    """Discriminator by Python type; ``None`` (no branch) gives the union's custom one-line error."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return "<int>"
    if isinstance(value, str):
        return "<str>"
    if isinstance(value, list):
        return "<list>"
    if isinstance(value, dict):
        return "<mapping>"
    return None


# Union branches are tagged "<...>"; the tags are dropped from error locations (they are not keys of the file).
LayerIndices = Annotated[list[StrictInt], Field(max_length=MAX_EXECUTED_STEPS)]

LayerRange = Annotated[
    Annotated[StrictInt, Tag("<int>")]
    | Annotated[StrictStr, Tag("<str>")]
    | Annotated[list[StrictInt], Field(min_length=2, max_length=2), Tag("<list>")],
    Discriminator(_kind, custom_error_type="layer_range", custom_error_message="expected 'A-B', an index, or [A, B]"),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OpMapping(_Strict):
    """``{op: parallel, layers: 8-23, loops: 3}``: one op of an ``ops:`` list in mapping form."""

    op: StrictStr
    layers: LayerRange
    seed: StrictInt | None = None
    layer: StrictInt | None = None
    loops: StrictInt | None = None


class ParallelMapping(_Strict):
    """``{parallel: [10, 11], loops: 2}`` or ``{parallel: '4-6'}``: a parallel group of a ``sequence:`` list."""

    parallel: Annotated[
        Annotated[LayerIndices, Tag("<list>")] | Annotated[StrictStr, Tag("<str>")],
        Discriminator(
            _kind, custom_error_type="parallel_group", custom_error_message="expected a list of layer indices or 'A-B'"
        ),
    ]
    loops: StrictInt = 1


OpItem = Annotated[
    Annotated[StrictStr, Tag("<str>")] | Annotated[OpMapping, Tag("<mapping>")],
    Discriminator(
        _kind,
        custom_error_type="op_item",
        custom_error_message="expected a string like 'skip:3-5' or a mapping like {op: skip, layers: 3-5}",
    ),
]

SequenceItem = Annotated[
    Annotated[StrictInt, Tag("<int>")]
    | Annotated[StrictStr, Tag("<str>")]
    | Annotated[LayerIndices, Tag("<list>")]
    | Annotated[ParallelMapping, Tag("<mapping>")],
    Discriminator(
        _kind,
        custom_error_type="sequence_item",
        custom_error_message="expected an index, 'A-B', a list (parallel group) or {parallel: ..., loops: K}",
    ),
]

PLAN_TEXT: TypeAdapter[str] = TypeAdapter(StrictStr)
OPS: TypeAdapter[list[str | OpMapping] | None] = TypeAdapter(list[OpItem] | None)
SEQUENCE: TypeAdapter[list[int | str | list[int] | ParallelMapping]] = TypeAdapter(list[SequenceItem])

_ALLOWED_KEYS = {"ops": sorted(OpMapping.model_fields), "sequence": sorted(ParallelMapping.model_fields)}
_HINTS = {"ops": "an op mapping needs 'op' and 'layers', e.g. {op: skip, layers: 13-19}"}
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 40
_short.maxlist = _short.maxdict = 4
_short.maxlevel = 2


def _location(key: str, loc: tuple[int | str, ...]) -> str:
    text = key
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not part.startswith("<"):
            text += f".{part}"
    return text


def one_line(exc: ValidationError, key: str) -> str:
    """The first validation error of ``exc`` as one line: where (``ops[1].loops``), what, and what was given."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_ALLOWED_KEYS.get(key, []))
        what = f"unknown key {loc[-1]!r}" + (f"; allowed: {allowed}" if allowed else "")
        loc = loc[:-1]
    elif error["type"] == "missing":
        what = f"missing required key {loc[-1]!r}" + (f"; {_HINTS[key]}" if key in _HINTS else "")
        loc = loc[:-1]
    else:
        what = f"{error['msg']}, got {_short.repr(error['input'])}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"malformed plan YAML at {_location(key, loc)}: {what}{more}"


def validate(adapter: TypeAdapter[Any], data: Any, key: str) -> Any:
    """Validate ``data`` (the value of the top-level ``key``); a :class:`ValidationError` becomes one SurgeryError."""
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise SurgeryError(one_line(exc, key)) from None
