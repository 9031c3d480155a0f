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

Plans are untrusted input: numbers are ASCII digits only, and the bounds of :mod:`surgery.plan.limits`
(loop count, executed layer instances, index size, file size) are checked before anything is expanded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgery.errors import SurgeryError
from surgery.fileio import path_is
from surgery.plan.limits import MAX_EXECUTED_STEPS, MAX_LAYER_INDEX, MAX_LOOPS, MAX_PLAN_BYTES, MAX_SEED

if TYPE_CHECKING:  # the pydantic schema costs ~60 ms to build: imported only when a YAML plan is parsed
    from surgery.plan import schema

OP_KINDS = ("skip", "reverse", "shuffle", "repeat", "loop", "parallel")
SEQUENCE_PREFIX = "sequence:"

# ASCII digits only ([0-9], re.ASCII): Python's \d and int() also accept e.g. Arabic-Indic digits.
_OP_RE = re.compile(
    r"(?P<kind>[a-z_]+):(?P<start>[0-9]+)(?:-(?P<end>[0-9]+))?(?:@(?P<at>-?[0-9]+))?(?:x(?P<times>-?[0-9]+))?", re.ASCII
)
_RANGE_RE = re.compile(r"(?P<start>[0-9]+)(?:-(?P<end>[0-9]+))?", re.ASCII)
_MAX_DIGITS = len(str(MAX_SEED))  # a longer number exceeds every bound: refuse it without converting it


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
        """The plan in canonical text form: ops sorted by range, or ``sequence:0-9 [10 11]x2 12-29``.

        Whatever this prints, :func:`parse_plan_text` (and so ``--plan``) accepts and reads back as the same plan.
        """
        if self.sequence is not None:
            return SEQUENCE_PREFIX + describe_steps(
                [entry.layers for entry in self.sequence], [entry.loops for entry in self.sequence]
            )
        return ",".join(str(op) for op in self.ops) or "identity"


def describe_steps(steps: Sequence[tuple[int, ...]], counts: Sequence[int] | None = None) -> str:
    """Compact one-line form of executed steps: ``0-9 [10 11]x2 12 13x2 14-29``.

    Each step is a tuple of source layers (several: a parallel group). ``A-B`` is a run of strictly consecutive
    ascending single layers, ``[..]`` a parallel group, and ``xN`` a step run N times in a row; a run stops
    before a layer that repeats, so a repeated layer is never hidden in the end of one run and the start of the
    next (``12-13 13-29``). The ``sequence:`` plan text form reads this back (:func:`parse_plan_text`).
    ``counts`` (one per step): step ``i`` runs ``counts[i]`` times in a row, so a huge loop count is never expanded.
    """
    runs: list[list] = []  # [step, times in a row], equal neighbours merged
    for step, count in zip(steps, counts if counts is not None else [1] * len(steps)):
        if runs and runs[-1][0] == step:
            runs[-1][1] += count
        elif count > 0:
            runs.append([step, count])
    parts: list[str] = []
    index = 0
    while index < len(runs):
        step, count = runs[index]
        if len(step) > 1 or count > 1:
            text = "[" + " ".join(map(str, step)) + "]" if len(step) > 1 else str(step[0])
            parts.append(text + (f"x{count}" if count > 1 else ""))
            index += 1
            continue
        run_end = index
        while (
            run_end + 1 < len(runs)
            and len(runs[run_end + 1][0]) == 1
            and runs[run_end + 1][0][0] == runs[run_end][0][0] + 1
            and runs[run_end + 1][1] == 1
        ):
            run_end += 1
        first, last = step[0], runs[run_end][0][0]
        parts.append(f"{first}-{last}" if run_end > index else str(first))
        index = run_end + 1
    return " ".join(parts)


def clip(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, so a hostile plan cannot blow up an error line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_ascii_digits(text: str, where: str) -> None:
    for char in text:
        if not char.isascii() and (char.isdigit() or char.isnumeric()):
            raise SurgeryError(f"non-ASCII digit {char!r} in {clip(where)!r}: write layer numbers with 0-9 only")


def _to_int(digits: str, where: str) -> int:
    """``int(digits)`` for a regex-matched ``-?[0-9]+``, refusing numbers too long to fit any bound."""
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        raise SurgeryError(f"number {clip(digits, 16)!r} ({len(digits)} digits) out of range in {clip(where)!r}")
    return int(digits)


def _show(value: int) -> str:
    return clip(str(value), 24)


def parse_op(op_text: str) -> Op:
    """Parse one op such as ``skip:13-19``, ``shuffle:4-25@3`` or ``parallel:8-23x3``."""
    text = op_text.strip()
    where = clip(text)
    _check_ascii_digits(text, where)
    match = _OP_RE.fullmatch(text)
    if not match:
        kind = text.split(":", 1)[0]
        if ":" in text and kind not in OP_KINDS:
            raise SurgeryError(f"unknown op {clip(kind, 30)!r} in {where!r}; known ops: {', '.join(OP_KINDS)}")
        raise SurgeryError(
            f"malformed plan op {where!r}; expected e.g. skip:13-19, shuffle:4-25@3, repeat:8-23@15, "
            "loop:8-12x2, parallel:8-23x3"
        )
    kind = match["kind"]
    if kind not in OP_KINDS:
        raise SurgeryError(f"unknown op {clip(kind, 30)!r} in {where!r}; known ops: {', '.join(OP_KINDS)}")
    start = _to_int(match["start"], where)
    end = _to_int(match["end"], where) if match["end"] is not None else start
    at = _to_int(match["at"], where) if match["at"] is not None else None
    times = _to_int(match["times"], where) if match["times"] is not None else None
    return make_op(kind, start, end, at=at, times=times, where=where)


def _require_int(value: Any, name: str, where: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SurgeryError(f"{name} must be an integer in {clip(where)!r}, got {clip(repr(value), 30)}")


def _check_layer_index(index: int, where: str) -> None:
    if index < 0:
        raise SurgeryError(f"negative layer index in {clip(where)!r}")
    if index >= MAX_LAYER_INDEX:
        raise SurgeryError(
            f"layer index {_show(index)} out of range in {clip(where)!r}: "
            f"plan layer indices must be below MAX_LAYER_INDEX={MAX_LAYER_INDEX}"
        )


def _check_loops(loops: int, where: str) -> None:
    if loops < 1:
        raise SurgeryError(f"loop count K must be >= 1, got {_show(loops)} in {clip(where)!r}")
    if loops > MAX_LOOPS:
        raise SurgeryError(
            f"loop count K={_show(loops)} in {clip(where)!r} exceeds the limit MAX_LOOPS={MAX_LOOPS}: "
            "every loop adds a KV-cache slot and a forward step per layer of the block"
        )


def make_op(kind: str, start: int, end: int, *, at: int | None, times: int | None, where: str) -> Op:
    """Build and validate an :class:`Op` (shared by the text and YAML front ends)."""
    if not isinstance(kind, str) or kind not in OP_KINDS:
        raise SurgeryError(f"unknown op {clip(repr(kind), 30)} in {clip(where)!r}; known ops: {', '.join(OP_KINDS)}")
    _require_int(start, "layer index", where)
    _require_int(end, "layer index", where)
    _require_int(at, "'@' argument", where, optional=True)
    _require_int(times, "loop count", where, optional=True)
    if start < 0 or end < 0:
        raise SurgeryError(f"negative layer index in {clip(where)!r}")
    if end < start:
        block = "empty parallel block" if kind == "parallel" else "empty range"
        raise SurgeryError(f"{block} in {clip(where)!r}: {_show(start)}-{_show(end)} has end < start")
    _check_layer_index(end, where)
    if at is not None and kind not in ("shuffle", "repeat"):
        raise SurgeryError(f"{kind} takes no '@' argument ({clip(where)!r})")
    if times is not None and kind not in ("loop", "parallel"):
        raise SurgeryError(f"{kind} takes no 'x' argument ({clip(where)!r})")
    if kind == "shuffle" and at is None:
        raise SurgeryError(f"shuffle needs a seed, e.g. shuffle:{start}-{end}@0 ({clip(where)!r})")
    if kind == "loop" and times is None:
        raise SurgeryError(f"loop needs a count, e.g. loop:{start}-{end}x2 ({clip(where)!r})")
    loops = 1 if times is None else times
    _check_loops(loops, where)
    if kind == "repeat" and at is not None:
        if at < 0:
            raise SurgeryError(f"negative repeat layer in {clip(where)!r}")
        _check_layer_index(at, where)
    if kind == "shuffle" and at is not None and abs(at) > MAX_SEED:
        raise SurgeryError(f"shuffle seed {_show(at)} out of range in {clip(where)!r}: |seed| must be <= 2**63 - 1")
    return Op(
        kind=kind,
        start=start,
        end=end,
        seed=at if kind == "shuffle" else None,
        layer=at if kind == "repeat" else None,
        loops=loops,
    )


def check_overlaps(ops: list[Op] | tuple[Op, ...]) -> tuple[Op, ...]:
    """``ops`` sorted by start; raises if two ops own a common layer."""
    ordered = sorted(ops, key=lambda op: op.start)
    for previous, current in zip(ordered, ordered[1:]):
        if current.start <= previous.end:
            raise SurgeryError(f"overlapping ranges: {previous} and {current} both own layer {current.start}")
    return tuple(ordered)


def parse_plan_text(text: str) -> LayerPlan:
    """Parse a plan string (comma-separated ops; ``identity`` or empty for the unmodified model)."""
    if not isinstance(text, str):
        raise SurgeryError(f"a plan must be text, got {type(text).__name__}")
    if len(text) > MAX_PLAN_BYTES:
        raise SurgeryError(f"plan text is {len(text)} characters; the limit is MAX_PLAN_BYTES={MAX_PLAN_BYTES}")
    stripped = text.strip()
    if stripped in ("", "identity", "none"):
        return LayerPlan(ops=(), text=text)
    if stripped.startswith(SEQUENCE_PREFIX):
        return LayerPlan(sequence=_parse_sequence_text(stripped[len(SEQUENCE_PREFIX) :]), text=text)
    if ":" not in stripped and stripped[0] in "0123456789[":
        return LayerPlan(sequence=_parse_sequence_text(stripped), text=text)
    parts = stripped.split(",")
    if any(not part.strip() for part in parts):
        raise SurgeryError(f"malformed plan {clip(stripped)!r}: empty op between commas")
    return LayerPlan(ops=check_overlaps([parse_op(part) for part in parts]), text=text)


def _parse_range(value: str, where: str) -> tuple[int, int]:
    """``'A-B'`` or ``'A'`` (ASCII digits) as ``(A, B)``; the range is not expanded."""
    _check_ascii_digits(value, where)
    match = _RANGE_RE.fullmatch(value.strip())
    if not match:
        raise SurgeryError(f"malformed layer range {clip(value, 30)!r} in {where}; expected 'A-B' or an index")
    start = _to_int(match["start"], where)
    return start, _to_int(match["end"], where) if match["end"] is not None else start


def _op_from_mapping(item: schema.OpMapping, where: str) -> Op:
    if isinstance(item.layers, int):
        start = end = item.layers
    elif isinstance(item.layers, str):
        start, end = _parse_range(item.layers, where)
    else:
        start, end = item.layers
    if item.seed is not None and item.layer is not None:
        raise SurgeryError(f"{where} gives both 'seed' (shuffle) and 'layer' (repeat); give the one its op takes")
    at = item.seed if item.seed is not None else item.layer
    return make_op(item.op, start, end, at=at, times=item.loops, where=where)


def _bounded_range(value: str, where: str) -> range:
    """The layers of ``'A-B'``, refusing an empty range or one longer than MAX_EXECUTED_STEPS before expanding."""
    start, end = _parse_range(value, where)
    if end < start:
        raise SurgeryError(f"empty range in {where}: {clip(value, 30)!r}")
    _check_layer_index(end, where)
    if end - start + 1 > MAX_EXECUTED_STEPS:
        raise SurgeryError(
            f"range {clip(value, 30)!r} in {where} has {end - start + 1} layers, over the limit "
            f"MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS} executed layer instances"
        )
    return range(start, end + 1)


def _parallel_entry(group: list[int], loops: int, where: str) -> SequenceEntry:
    if not group:
        raise SurgeryError(f"empty parallel block in {where}")
    for layer in group:
        _check_layer_index(layer, where)
    if len(set(group)) != len(group):
        raise SurgeryError(f"parallel group in {where} names a layer twice: {clip(str(group))}")
    return SequenceEntry(layers=tuple(group), parallel=len(group) > 1, loops=loops)


def _sequence_entries(items: list[Any]) -> tuple[SequenceEntry, ...]:
    """Expand validated ``sequence:`` items, counting executed instances before each expansion."""
    entries: list[SequenceEntry] = []
    executed = 0
    for index, item in enumerate(items):
        where = f"sequence[{index}]"
        if isinstance(item, int):
            _check_layer_index(item, where)
            new = [SequenceEntry(layers=(item,))]
        elif isinstance(item, str):
            layers = _bounded_range(item, where)
            _check_executed(executed + len(layers), where)
            new = [SequenceEntry(layers=(i,)) for i in layers]
        elif isinstance(item, list):
            new = [_parallel_entry(item, 1, where)]
        else:
            group = item.parallel if isinstance(item.parallel, list) else list(_bounded_range(item.parallel, where))
            if item.loops < 1:
                raise SurgeryError(f"loop count K must be an integer >= 1 in {where}, got {_show(item.loops)}")
            _check_loops(item.loops, where)
            new = [_parallel_entry(group, item.loops, where)]
        executed += sum(len(entry.layers) * entry.loops for entry in new)
        _check_executed(executed, where)
        entries.extend(new)
    return tuple(entries)


@dataclass(frozen=True)
class _Group:
    """A parallel group of the ``sequence:`` text form, shaped like the YAML schema's mapping entry."""

    parallel: list[int]
    loops: int


_SEQUENCE_TOKEN_RE = re.compile(
    r"\[(?P<group>[^\[\]]*)\](?:x(?P<group_loops>[0-9]+))?|(?P<start>[0-9]+)(?:-(?P<end>[0-9]+))?(?:x(?P<loops>[0-9]+))?",
    re.ASCII,
)
_SEPARATORS = " \t\n\r,"


def _parse_sequence_text(body: str) -> tuple[SequenceEntry, ...]:
    """Entries of ``sequence:0-9 [10 11]x2 12x2 13-29`` (what :func:`describe_steps` prints).

    Entries are separated by spaces or commas: ``N`` one layer, ``A-B`` layers A..B in order, ``Nx K`` layer N
    K times in a row, ``[a b A-B]`` a parallel group, ``[..]xK`` that group looped K times.
    """
    _check_ascii_digits(body, body)
    items: list[Any] = []
    position = 0
    while True:
        while position < len(body) and body[position] in _SEPARATORS:
            position += 1
        if position == len(body):
            break
        match = _SEQUENCE_TOKEN_RE.match(body, position)
        end = match.end() if match else position
        if not match or (end < len(body) and body[end] not in _SEPARATORS):
            near = body[position : position + 20]
            raise SurgeryError(
                f"malformed sequence entry at {clip(near, 24)!r}; expected e.g. sequence:0-9 [10 11]x2 12x2 13-29"
            )
        where = clip(match[0], 30)
        if match["group"] is not None:
            members: list[int] = []
            for member in match["group"].replace(",", " ").split():
                members.extend(_bounded_range(member, where))
                if len(members) > MAX_EXECUTED_STEPS:
                    _check_executed(len(members), where)
            loops = _to_int(match["group_loops"], where) if match["group_loops"] is not None else 1
            items.append(_Group(parallel=members, loops=loops))
        elif match["loops"] is not None:
            if match["end"] is not None:
                raise SurgeryError(f"'x' repeats one layer or a [group], not the run {where!r}: write each layer")
            times = _to_int(match["loops"], where)
            _check_loops(times, where)
            items.extend([_to_int(match["start"], where)] * times)
        elif match["end"] is not None:
            items.append(match[0])
        else:
            items.append(_to_int(match["start"], where))
        position = end
    if not items:
        raise SurgeryError("an explicit sequence needs at least one layer, e.g. sequence:0-12 20-29")
    return _sequence_entries(items)


def _check_executed(executed: int, where: str) -> None:
    if executed > MAX_EXECUTED_STEPS:
        raise SurgeryError(
            f"the sequence executes more than MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS} layer instances "
            f"(reached at {where}); each instance is a KV-cache slot and a forward step"
        )


def parse_plan_mapping(data: Any, text: str) -> LayerPlan:
    """Build a plan from parsed YAML: ``plan: "..."``, ``ops: [...]`` or ``sequence: [...]``.

    Shapes and types are validated by the pydantic models of :mod:`surgery.plan.schema` (strict integers, no
    unknown keys); a problem is one :class:`SurgeryError` naming where it is, e.g. ``ops[1].loops``.
    """
    from surgery.plan import schema

    if isinstance(data, str):
        return parse_plan_text(data)
    if not isinstance(data, dict):
        raise SurgeryError("plan YAML must be a mapping with one of: plan, ops, sequence")
    keys = {"plan", "ops", "sequence"}.intersection(key for key in data if isinstance(key, str))
    if len(keys) != 1:
        raise SurgeryError("plan YAML must have exactly one of the keys: plan, ops, sequence")
    if "plan" in keys:
        return parse_plan_text(schema.validate(schema.PLAN_TEXT, data["plan"], "plan"))
    if "ops" in keys:
        items = schema.validate(schema.OPS, data["ops"], "ops") or []
        ops = [
            parse_op(item) if isinstance(item, str) else _op_from_mapping(item, f"ops[{index}]")
            for index, item in enumerate(items)
        ]
        return LayerPlan(ops=check_overlaps(ops), text=text)
    items = schema.validate(schema.SEQUENCE, data["sequence"], "sequence")
    if not items:
        raise SurgeryError("'sequence' must be a non-empty list")
    return LayerPlan(sequence=_sequence_entries(items), text=text)


def load_plan(plan: str) -> LayerPlan:
    """Load a plan given on the command line: plan text, or the path of a ``.yaml``/``.yml`` file.

    Plan files are read with the restricted loader of :mod:`surgery.plan.yaml_loader` (no anchors or aliases,
    bounded size and depth, UTF-8 only).
    """
    if not isinstance(plan, str):
        raise SurgeryError(f"a plan must be text or a file path, got {type(plan).__name__}")
    if plan.endswith((".yaml", ".yml")) or path_is(Path.is_file, plan):
        from surgery.plan.yaml_loader import parse_yaml_text, read_plan_file  # PyYAML only for plan files

        text = read_plan_file(plan)
        return parse_plan_mapping(parse_yaml_text(text, plan), text)
    try:
        return parse_plan_text(plan)
    except SurgeryError:
        if path_is(Path.is_dir, plan):
            raise SurgeryError(f"plan path {plan} is a directory, not a plan file or plan text") from None
        raise
