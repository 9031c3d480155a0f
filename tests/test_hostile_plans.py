"""Hostile plans: each is refused with one clear SurgeryError line, by a bound checked before expanding anything.

No test here times anything: an unbounded plan that got expanded would run out of memory or hang, and each
test asserts that the error names the bound (``MAX_LOOPS``, ``MAX_EXECUTED_STEPS``, ...) that stopped it first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from surgery.errors import SurgeryError
from surgery.plan import (
    MAX_EXECUTED_STEPS,
    MAX_LOOPS,
    MAX_PLAN_BYTES,
    MAX_YAML_DEPTH,
    ExecutionPlan,
    LayerPlan,
    Op,
    SequenceEntry,
    load_plan,
    make_op,
    parse_plan_text,
    resolve_plan,
)

LAYERS = 30  # SmolLM2-135M


def _error(action: Callable[..., object], *args: object, **kwargs: object) -> str:
    """Run ``action``, assert it raises a SurgeryError of one short line, and return the message."""
    with pytest.raises(SurgeryError) as raised:
        action(*args, **kwargs)
    message = str(raised.value)
    assert "\n" not in message, message
    assert len(message) < 400, message  # clipped: a hostile plan must not blow up the error line
    return message


def _resolve_text(plan: str, layers: int = LAYERS) -> ExecutionPlan:
    return resolve_plan(parse_plan_text(plan), layers)


def _resolve_file(path: Path, text: str | bytes, layers: int = LAYERS) -> ExecutionPlan:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return resolve_plan(load_plan(str(path)), layers)


@pytest.mark.parametrize(
    "plan",
    ["loop:0-29x1000000000", "parallel:0-1x1000000000", f"loop:0-1x{MAX_LOOPS + 1}", "parallel:3x999999"],
)
def test_huge_loop_counts_in_text(plan: str) -> None:
    """A loop count K above MAX_LOOPS is refused while parsing, naming the limit."""
    assert f"exceeds the limit MAX_LOOPS={MAX_LOOPS}" in _error(_resolve_text, plan)


@pytest.mark.parametrize(
    "text",
    [
        "ops: [{op: loop, layers: 0-29, loops: 1000000000}]\n",
        "ops: [{op: parallel, layers: [0, 1], loops: 65}]\n",
        "sequence: [0, {parallel: [1, 2], loops: 1000000000}]\n",
        "sequence: [{parallel: '0-29', loops: 100}]\n",
    ],
)
def test_huge_loop_counts_in_yaml(tmp_path: Path, text: str) -> None:
    """The same bound holds for the YAML ``ops:`` and ``sequence:`` forms."""
    assert f"MAX_LOOPS={MAX_LOOPS}" in _error(_resolve_file, tmp_path / "plan.yaml", text)


def test_loop_count_at_the_limit_is_accepted() -> None:
    """K = MAX_LOOPS itself is a valid plan, so the bound is not off by one."""
    execution = _resolve_text(f"loop:0-1x{MAX_LOOPS}")
    assert len(execution.instances) == 2 * MAX_LOOPS + LAYERS - 2


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        ("skip:0-999999999", "layer index 999999999 out of range"),
        ("repeat:0-1@999999999", "layer index 999999999 out of range"),
        ("reverse:0-999999", "layer index 999999 out of range"),  # within MAX_LAYER_INDEX: checked against T
        ("shuffle:5-900000@1", "layer index 900000 out of range"),
        ("parallel:0-99999x2", "layer index 99999 out of range"),
    ],
)
def test_ranges_beyond_the_model(plan: str, fragment: str) -> None:
    """Indices beyond the model (or beyond any model) are refused before a range is expanded."""
    assert fragment in _error(_resolve_text, plan)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('sequence: ["0-999999999"]\n', "layer index 999999999 out of range"),
        ("sequence: [0, {parallel: '0-999999999'}]\n", "layer index 999999999 out of range"),
        ("ops: [{op: reverse, layers: 0-999999999}]\n", "layer index 999999999 out of range"),
        ("ops: [{op: shuffle, layers: [0, 500000], seed: 1}]\n", "layer index 500000 out of range"),
        (f"sequence: ['0-{MAX_EXECUTED_STEPS}']\n", f"over the limit MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS}"),
        ("sequence: [9999999999]\n", "layer index 9999999999 out of range"),
    ],
)
def test_huge_ranges_in_yaml(tmp_path: Path, text: str, fragment: str) -> None:
    """A YAML range is bounded (by MAX_LAYER_INDEX, the range size, or the model) before it is expanded."""
    assert fragment in _error(_resolve_file, tmp_path / "plan.yaml", text)


@pytest.mark.parametrize(
    "text",
    [
        "sequence: ['0-4000', '0-4000']\n",
        "sequence: " + str(["0-29"] * 200) + "\n",
        "sequence: [{parallel: '0-29', loops: 64}, {parallel: '0-29', loops: 64}, {parallel: '0-29', loops: 64}]\n",
        "sequence: [" + ", ".join(["[0, 1]"] * (MAX_EXECUTED_STEPS // 2 + 1)) + "]\n",
    ],
)
def test_sequences_over_the_executed_bound(tmp_path: Path, text: str) -> None:
    """An explicit sequence stops at MAX_EXECUTED_STEPS instances, counted before each entry is expanded."""
    message = _error(_resolve_file, tmp_path / "plan.yaml", text)
    assert f"more than MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS} layer instances" in message


@pytest.mark.parametrize(
    ("plan", "layers"),
    [
        (LayerPlan(), 10**12),  # identity on a config claiming 10**12 layers: must not walk them
        (LayerPlan(ops=(Op("loop", 0, 99, loops=64),)), 100),  # 6400 instances, each K within MAX_LOOPS
        (LayerPlan(ops=(Op("loop", 0, 29, loops=10**9),)), LAYERS),  # built without make_op's checks
        (LayerPlan(ops=(Op("parallel", 0, 29, loops=10**9),)), LAYERS),
        (LayerPlan(sequence=(SequenceEntry((0,), loops=10**9),)), LAYERS),
    ],
)
def test_resolve_bounds_executed_instances(plan: LayerPlan, layers: int) -> None:
    """resolve_plan counts executed instances arithmetically and refuses more than MAX_EXECUTED_STEPS."""
    message = _error(resolve_plan, plan, layers)
    assert f"over the limit MAX_EXECUTED_STEPS={MAX_EXECUTED_STEPS}" in message


def test_executed_bound_is_not_off_by_one() -> None:
    """Exactly MAX_EXECUTED_STEPS instances resolve; one more does not."""
    width = MAX_EXECUTED_STEPS // MAX_LOOPS
    exact = _resolve_text(f"loop:0-{width - 1}x{MAX_LOOPS}", width)
    assert len(exact.instances) == MAX_EXECUTED_STEPS
    assert "MAX_EXECUTED_STEPS" in _error(_resolve_text, f"loop:0-{width - 1}x{MAX_LOOPS},reverse:{width}", width + 1)


@pytest.mark.parametrize(
    "plan",
    [
        "skip:1" + "0" * 5000,  # int() would refuse this (4300 digits) with a ValueError
        "skip:0-" + "9" * 40,
        "loop:0-1x" + "9" * 100,
        "loop:0-1x-" + "9" * 100,
        "shuffle:1-2@" + "9" * 30,
    ],
)
def test_numbers_with_too_many_digits(plan: str) -> None:
    """A number longer than any bound is refused without converting it, and the message is clipped."""
    assert "digits) out of range" in _error(_resolve_text, plan)


def test_yaml_integer_with_too_many_digits(tmp_path: Path) -> None:
    """An over-long YAML integer is a SurgeryError naming the file, not the ValueError int() raises."""
    path = tmp_path / "plan.yaml"
    message = _error(_resolve_file, path, "sequence: [" + "9" * 5000 + "]\n")
    assert message.startswith(f"malformed plan YAML {path}:") and "digits" in message


def _billion_laughs(levels: int = 9) -> str:
    lines = ['lol0: &lol0 "lol"']
    for level in range(1, levels + 1):
        refs = ", ".join([f"*lol{level - 1}"] * 10)
        lines.append(f"lol{level}: &lol{level} [{refs}]")
    lines.append(f"plan: *lol{levels}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        _billion_laughs(),
        "plan: &p skip:1\n",  # a harmless anchor is refused too: plans never need one
        "base: &b {op: skip, layers: 1}\nops: [*b, *b]\n",
        "ops: [{<<: *undefined, op: skip}]\n",
        "sequence: &s [0, 1]\n",
    ],
)
def test_yaml_anchors_and_aliases(tmp_path: Path, text: str) -> None:
    """Anchors and aliases (billion laughs) are refused at the first one, before anything is built."""
    assert "plan YAML may not use anchors or aliases (&/*)" in _error(_resolve_file, tmp_path / "plan.yaml", text)


@pytest.mark.parametrize(
    "text",
    [
        "sequence: " + "[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1) + "\n",
        "sequence: " + "[" * 100_000 + "]" * 100_000 + "\n",  # would hit the recursion limit
        "ops: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
        "ops:\n" + "".join("  " * depth + "-\n" for depth in range(1, 40)),
    ],
)
def test_yaml_deep_nesting(tmp_path: Path, text: str) -> None:
    """Nesting deeper than MAX_YAML_DEPTH is refused while composing, never a RecursionError."""
    message = _error(_resolve_file, tmp_path / "plan.yaml", text)
    assert f"nests deeper than the limit of {MAX_YAML_DEPTH} levels" in message


@pytest.mark.parametrize(
    "text",
    [
        "sequence: !!set {1, 2}\n",
        "ops: [!!binary aGVsbG8=]\n",
        "plan: !!python/object/apply:os.system ['true']\n",
        "ops: !custom [skip:1]\n",
        "plan: !!str skip:1\n",
    ],
)
def test_yaml_explicit_tags(tmp_path: Path, text: str) -> None:
    """Explicit tags (sets, binary, python objects, custom tags) are refused: plans use plain YAML only."""
    assert "plan YAML may not use explicit tags" in _error(_resolve_file, tmp_path / "plan.yaml", text)


@pytest.mark.parametrize(
    "text",
    [
        "plan: skip:1\nplan: skip:2\n",
        "ops: [{op: skip, layers: 1, layers: 2}]\n",
        "sequence: [{parallel: [1, 2], loops: 2, loops: 3}]\n",
    ],
)
def test_yaml_duplicate_keys(tmp_path: Path, text: str) -> None:
    """A key given twice is refused instead of YAML silently keeping the last one."""
    assert "duplicate key" in _error(_resolve_file, tmp_path / "plan.yaml", text)


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("big.yaml", "# " + "x" * MAX_PLAN_BYTES + "\nplan: skip:1\n", f"the limit is {MAX_PLAN_BYTES} bytes"),
        ("binary.yaml", b"\xff\xfe\x00\x01plan: skip:1\n", "is not UTF-8 text"),
        ("latin1.yml", "plan: skip:1 # caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("nul.yaml", b"plan: skip:1\x00\n", "malformed plan YAML"),
        ("missing.yaml", None, "plan file not found"),
        ("folder.yaml", "dir", "is a directory, not a plan file"),
        ("folder", "dir", "is a directory, not a plan file"),
    ],
)
def test_hostile_plan_files(tmp_path: Path, name: str, content: str | bytes | None, fragment: str) -> None:
    """Oversized, binary, missing and directory plan paths each get one clear error."""
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    assert fragment in _error(load_plan, str(path))


def test_oversized_plan_text() -> None:
    """A plan string longer than MAX_PLAN_BYTES is refused before it is split into ops."""
    assert f"MAX_PLAN_BYTES={MAX_PLAN_BYTES}" in _error(parse_plan_text, "skip:1," * (MAX_PLAN_BYTES // 4))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('ops: [{op: repeat, layers: 2-5, layer: "5"}]\n', "ops[0].layer: Input should be a valid integer, got '5'"),
        ("ops: [{op: parallel, layers: 1-2, loops: 2.5}]\n", "ops[0].loops: Input should be a valid integer, got 2.5"),
        ("ops: [skip:0, {op: loop, layers: 1-2, loops: true}]\n", "ops[1].loops: Input should be a valid integer"),
        ("ops: [{op: shuffle, layers: 1-2, seed: [1]}]\n", "ops[0].seed: Input should be a valid integer"),
        ("ops: [{op: 5, layers: 1}]\n", "ops[0].op: Input should be a valid string"),
        ("ops: [{op: skip, layers: {a: 1}}]\n", "ops[0].layers: expected 'A-B', an index, or [A, B]"),
        ("ops: [{op: skip, layers: [1, 2, 3]}]\n", "ops[0].layers: List should have at most 2 items"),
        ("ops: [{op: skip, layers: true}]\n", "ops[0].layers: expected 'A-B', an index, or [A, B]"),
        ("ops: [[skip:1]]\n", "ops[0]: expected a string like 'skip:3-5' or a mapping"),
        ("ops: 5\n", "ops: Input should be a valid list"),
        ("plan: [skip:1]\n", "plan: Input should be a valid string"),
        ("sequence: [0, 1.5]\n", "sequence[1]: expected an index, 'A-B', a list"),
        ("sequence: [true]\n", "sequence[0]: expected an index"),
        ("sequence: [[1, '2']]\n", "sequence[0][1]: Input should be a valid integer"),
        ("sequence: [{parallel: [1, 2], loops: '2'}]\n", "sequence[0].loops: Input should be a valid integer"),
        ("sequence: [{parallel: 3}]\n", "sequence[0].parallel: expected a list of layer indices or 'A-B'"),
        ("sequence: [{parallel: [1, 2], colour: red}]\n", "sequence[0]: unknown key 'colour'; allowed: loops"),
    ],
)
def test_yaml_type_errors_are_user_errors(tmp_path: Path, text: str, fragment: str) -> None:
    """Wrong YAML types are one SurgeryError naming where (``ops[1].loops``), never a TypeError."""
    message = _error(_resolve_file, tmp_path / "plan.yaml", text)
    assert message.startswith("malformed plan YAML at ")
    assert fragment in message


@pytest.mark.parametrize(
    ("action", "args", "kwargs", "fragment"),
    [
        (parse_plan_text, (None,), {}, "a plan must be text"),
        (load_plan, (5,), {}, "a plan must be text or a file path"),
        (resolve_plan, (LayerPlan(), 2.5), {}, "layer count must be an integer"),
        (resolve_plan, (LayerPlan(), True), {}, "layer count must be an integer"),
        (make_op, ("skip", "1", 2), {"at": None, "times": None, "where": "api"}, "layer index must be an integer"),
        (make_op, ("loop", 1, 2), {"at": None, "times": 2.5, "where": "api"}, "loop count must be an integer"),
        (make_op, (5, 1, 2), {"at": None, "times": None, "where": "api"}, "unknown op 5"),
    ],
)
def test_wrong_types_through_the_python_api(action, args: tuple, kwargs: dict, fragment: str) -> None:
    """The public functions turn wrong argument types into SurgeryError, not TypeError or AttributeError."""
    assert fragment in _error(action, *args, **kwargs)


@pytest.mark.parametrize(
    "plan",
    ["skip:١٣-١٩", "skip:１３", "skip:²", "loop:1-2x٣", "shuffle:1-2@٣", "repeat:1-2@۵"],
)
def test_unicode_digits_in_text(plan: str) -> None:
    """Only ASCII 0-9 are digits: int() would read Arabic-Indic or full-width digits as numbers."""
    assert "non-ASCII digit" in _error(_resolve_text, plan)


@pytest.mark.parametrize(
    "text",
    [
        "ops: [{op: skip, layers: '١٣-١٩'}]\n",
        "ops: ['skip:١٣']\n",
        "sequence: ['١-٣']\n",
        "sequence: [{parallel: '１-３'}]\n",
        "plan: 'reverse:١-٣'\n",
    ],
)
def test_unicode_digits_in_yaml(tmp_path: Path, text: str) -> None:
    """The YAML forms refuse non-ASCII digits too (YAML itself keeps ``١٣`` a string)."""
    assert "non-ASCII digit" in _error(_resolve_file, tmp_path / "plan.yaml", text)


def test_ascii_equivalents_still_work(tmp_path: Path) -> None:
    """The refusals above do not touch valid plans: the ASCII spelling of each resolves as before."""
    assert _resolve_text("skip:13-19").skipped == tuple(range(13, 20))
    execution = _resolve_file(tmp_path / "plan.yaml", "sequence: ['1-3', {parallel: '1-3', loops: 2}]\n")
    assert execution.describe() == "1-3 [1 2 3]x2"
