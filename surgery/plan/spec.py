"""The layer-plan language: parsing and model-independent validation.

A plan is a comma-separated list of ops over 0-based, inclusive ranges of the source model's layers::

    skip:A-B          layers A..B are not run
    reverse:A-B       A..B run in reverse order
    shuffle:A-B@S     A..B run in the order random.Random(S).shuffle(list(range(A, B + 1))) gives
    repeat:A-B@L      every position A..B runs layer L (default L = T // 2)
    loop:A-BxK        the block A..B runs K times in sequence
    parallel:A-B      every layer of A..B reads the same input; the block outputs their mean
    parallel:A-BxK    looped parallel: the parallel block applied K times

A single index ``A`` means ``A-A``. ``identity`` (or an empty plan) runs every layer once.
A plan may also be a YAML file (see :func:`load_plan`). Checks that need the model's layer count
(indices in range, default repeat layer) happen in :mod:`surgery.plan.resolve`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from surgery.errors import SurgeryError

OP_KINDS = ("skip", "reverse", "shuffle", "repeat", "loop", "parallel")

_OP_RE = re.compile(r"^(?P<kind>[a-z_]+):(?P<start>\d+)(?:-(?P<end>\d+))?(?:@(?P<at>-?\d+))?(?:x(?P<times>-?\d+))?$")
_RANGE_RE = re.compile(r"^(?P<start>\d+)(?:-(?P<end>\d+))?$")


@dataclass(frozen=True)
class Op:
    """One op of a plan, owning the original layers ``start..end`` (inclusive)."""

    kind: str
    start: int
    end: int
    seed: int | None = None  # shuffle
    layer: int | None = None  # repeat (None: T // 2)
    loops: int = 1  # loop / parallel

    def __str__(self) -> str:
        text = f"{self.kind}:{self.start}" if self.start == self.end else f"{self.kind}:{self.start}-{self.end}"
        if self.kind == "shuffle":
            text += f"@{self.seed}"
        if self.kind == "repeat" and self.layer is not None:
            text += f"@{self.layer}"
        if self.kind == "loop" or (self.kind == "parallel" and self.loops != 1):
            text += f"x{self.loops}"
        return text


@dataclass(frozen=True)
class SequenceEntry:
    """An entry of an explicit ``sequence:`` plan: one layer, or a parallel group applied ``loops`` times."""

    layers: tuple[int, ...]
    parallel: bool = False
    loops: int = 1


@dataclass(frozen=True)
class LayerPlan:
    """A validated plan: either ops over ranges, or an explicit executed sequence."""

    ops: tuple[Op, ...] = ()
    sequence: tuple[SequenceEntry, ...] | None = None
    text: str = ""

    @property
    def canonical(self) -> str:
        """The plan in canonical text form (ops sorted by range), or ``sequence:...`` for explicit plans."""
        if self.sequence is not None:
            parts = []
            for entry in self.sequence:
                if entry.parallel:
                    group = "[" + " ".join(map(str, entry.layers)) + "]"
                    parts.append(group if entry.loops == 1 else f"{group}x{entry.loops}")
                else:
                    parts.append(str(entry.layers[0]))
            return "sequence:" + " ".join(parts)
        return ",".join(str(op) for op in self.ops) or "identity"


def parse_op(op_text: str) -> Op:
    """Parse one op such as ``skip:13-19``, ``shuffle:4-25@3`` or ``parallel:8-23x3``."""
    text = op_text.strip()
    match = _OP_RE.match(text)
    if not match:
        kind = text.split(":", 1)[0]
        if ":" in text and kind not in OP_KINDS:
            raise SurgeryError(f"unknown op {kind!r} in {text!r}; known ops: {', '.join(OP_KINDS)}")
        raise SurgeryError(
            f"malformed plan op {text!r}; expected e.g. skip:13-19, shuffle:4-25@3, repeat:8-23@15, "
            "loop:8-12x2, parallel:8-23x3"
        )
    kind = match["kind"]
    if kind not in OP_KINDS:
        raise SurgeryError(f"unknown op {kind!r} in {text!r}; known ops: {', '.join(OP_KINDS)}")
    start = int(match["start"])
    end = int(match["end"]) if match["end"] is not None else start
    at = int(match["at"]) if match["at"] is not None else None
    times = int(match["times"]) if match["times"] is not None else None
    return make_op(kind, start, end, at=at, times=times, where=text)


def make_op(kind: str, start: int, end: int, *, at: int | None, times: int | None, where: str) -> Op:
    """Build and validate an :class:`Op` (shared by the text and YAML front ends)."""
    if kind not in OP_KINDS:
        raise SurgeryError(f"unknown op {kind!r} in {where!r}; known ops: {', '.join(OP_KINDS)}")
    if start < 0 or end < 0:
        raise SurgeryError(f"negative layer index in {where!r}")
    if end < start:
        block = "empty parallel block" if kind == "parallel" else "empty range"
        raise SurgeryError(f"{block} in {where!r}: {start}-{end} has end < start")
    if at is not None and kind not in ("shuffle", "repeat"):
        raise SurgeryError(f"{kind} takes no '@' argument ({where!r})")
    if times is not None and kind not in ("loop", "parallel"):
        raise SurgeryError(f"{kind} takes no 'x' argument ({where!r})")
    if kind == "shuffle" and at is None:
        raise SurgeryError(f"shuffle needs a seed, e.g. shuffle:{start}-{end}@0 ({where!r})")
    if kind == "loop" and times is None:
        raise SurgeryError(f"loop needs a count, e.g. loop:{start}-{end}x2 ({where!r})")
    loops = 1 if times is None else times
    if loops < 1:
        raise SurgeryError(f"loop count K must be >= 1, got {loops} in {where!r}")
    if kind == "repeat" and at is not None and at < 0:
        raise SurgeryError(f"negative repeat layer in {where!r}")
    return Op(
        kind=kind,
        start=start,
        end=end,
        seed=at if kind == "shuffle" else None,
        layer=at if kind == "repeat" else None,
        loops=loops,
    )


def _check_overlaps(ops: list[Op]) -> tuple[Op, ...]:
    ordered = sorted(ops, key=lambda op: op.start)
    for previous, current in zip(ordered, ordered[1:]):
        if current.start <= previous.end:
            raise SurgeryError(f"overlapping ranges: {previous} and {current} both own layer {current.start}")
    return tuple(ordered)


def parse_plan_text(text: str) -> LayerPlan:
    """Parse a plan string (comma-separated ops; ``identity`` or empty for the unmodified model)."""
    stripped = text.strip()
    if stripped in ("", "identity", "none"):
        return LayerPlan(ops=(), text=text)
    parts = stripped.split(",")
    if any(not part.strip() for part in parts):
        raise SurgeryError(f"malformed plan {stripped!r}: empty op between commas")
    return LayerPlan(ops=_check_overlaps([parse_op(part) for part in parts]), text=text)


def _parse_range(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise SurgeryError(f"malformed layer range {value!r} in {where}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, str) and (match := _RANGE_RE.match(value.strip())):
        start = int(match["start"])
        return start, int(match["end"]) if match["end"] is not None else start
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return value[0], value[1]
    raise SurgeryError(f"malformed layer range {value!r} in {where}; expected 'A-B' or an index")


def _op_from_yaml(item: Any, index: int) -> Op:
    where = f"ops[{index}]"
    if isinstance(item, str):
        return parse_op(item)
    if not isinstance(item, dict):
        raise SurgeryError(f"malformed plan entry {where}: expected a string like 'skip:3-5' or a mapping")
    known = {"op", "layers", "seed", "layer", "loops"}
    if unknown := set(item) - known:
        raise SurgeryError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(known)}")
    if "op" not in item or "layers" not in item:
        raise SurgeryError(f"{where} needs 'op' and 'layers', e.g. {{op: skip, layers: 13-19}}")
    start, end = _parse_range(item["layers"], where)
    at = item.get("seed", item.get("layer"))
    return make_op(str(item["op"]), start, end, at=at, times=item.get("loops"), where=where)


def _sequence_entry(item: Any, index: int) -> list[SequenceEntry]:
    where = f"sequence[{index}]"
    if isinstance(item, bool):
        raise SurgeryError(f"malformed {where}: {item!r}")
    if isinstance(item, int):
        return [SequenceEntry(layers=(item,))]
    if isinstance(item, str):
        start, end = _parse_range(item, where)
        if end < start:
            raise SurgeryError(f"empty range in {where}: {item!r}")
        return [SequenceEntry(layers=(i,)) for i in range(start, end + 1)]
    if isinstance(item, list):
        return [_parallel_entry(item, 1, where)]
    if isinstance(item, dict) and "parallel" in item:
        if unknown := set(item) - {"parallel", "loops"}:
            raise SurgeryError(f"unknown key(s) {sorted(unknown)} in {where}")
        group = item["parallel"]
        if isinstance(group, str):
            start, end = _parse_range(group, where)
            group = list(range(start, end + 1))
        loops = item.get("loops", 1)
        if not isinstance(loops, int) or isinstance(loops, bool) or loops < 1:
            raise SurgeryError(f"loop count K must be an integer >= 1 in {where}, got {loops!r}")
        return [_parallel_entry(group, loops, where)]
    raise SurgeryError(f"malformed {where}: expected an index, 'A-B', a list (parallel group) or {{parallel: ...}}")


def _parallel_entry(group: Any, loops: int, where: str) -> SequenceEntry:
    if not isinstance(group, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in group):
        raise SurgeryError(f"malformed parallel group in {where}: expected a list of layer indices")
    if not group:
        raise SurgeryError(f"empty parallel block in {where}")
    if len(set(group)) != len(group):
        raise SurgeryError(f"parallel group in {where} names a layer twice: {group}")
    return SequenceEntry(layers=tuple(group), parallel=len(group) > 1, loops=loops)


def parse_plan_mapping(data: Any, text: str) -> LayerPlan:
    """Build a plan from parsed YAML: ``plan: "..."``, ``ops: [...]`` or ``sequence: [...]``."""
    if isinstance(data, str):
        return parse_plan_text(data)
    if not isinstance(data, dict):
        raise SurgeryError("plan YAML must be a mapping with one of: plan, ops, sequence")
    keys = set(data) & {"plan", "ops", "sequence"}
    if len(keys) != 1:
        raise SurgeryError("plan YAML must have exactly one of the keys: plan, ops, sequence")
    if "plan" in data:
        return parse_plan_text(str(data["plan"]))
    if "ops" in data:
        items = data["ops"] or []
        if not isinstance(items, list):
            raise SurgeryError("'ops' must be a list")
        ops = [_op_from_yaml(item, i) for i, item in enumerate(items)]
        return LayerPlan(ops=_check_overlaps(ops), text=text)
    items = data["sequence"]
    if not isinstance(items, list) or not items:
        raise SurgeryError("'sequence' must be a non-empty list")
    entries = [entry for i, item in enumerate(items) for entry in _sequence_entry(item, i)]
    return LayerPlan(sequence=tuple(entries), text=text)


def load_plan(plan: str) -> LayerPlan:
    """Load a plan given on the command line: plan text, or the path of a ``.yaml``/``.yml`` file."""
    if plan.endswith((".yaml", ".yml")) or (plan and Path(plan).is_file()):
        path = Path(plan)
        if not path.is_file():
            raise SurgeryError(f"plan file not found: {plan}")
        text = path.read_text()
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "invalid YAML"
            raise SurgeryError(f"malformed plan YAML {plan}: {first}") from None
        return parse_plan_mapping(data, text)
    return parse_plan_text(plan)
