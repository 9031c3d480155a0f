"""The plan language and its resolution: pure, no weights."""

from __future__ import annotations

import pytest
from reference import EXPECTED_SEQUENCES, T

from surgery.errors import SurgeryError
from surgery.plan import load_plan, parse_plan_mapping, parse_plan_text, resolve_plan


def _as_sequence(plan_text: str, layers: int = T) -> list:
    execution = resolve_plan(parse_plan_text(plan_text), layers)
    return [step.layers if step.parallel else step.layers[0] for step in execution.steps]


@pytest.mark.parametrize("plan", list(EXPECTED_SEQUENCES))
def test_resolution_matches_hand_written_sequences(plan):
    assert _as_sequence(plan) == EXPECTED_SEQUENCES[plan]


def test_paper_n_convention():
    # paper: skip layers N+1 .. T-N-1 -> skip:(N+1)-(T-N-1); Llama2-7B (T=32), N=13 skips 14..18
    total, n = 32, 13
    sequence = _as_sequence(f"skip:{n + 1}-{total - n - 1}", total)
    assert sequence == [*range(0, 14), *range(19, 32)]


def test_single_index_is_a_one_layer_range():
    assert _as_sequence("skip:3") == [0, 1, 2, 4, 5, 6, 7]
    assert _as_sequence("parallel:3x2") == [0, 1, 2, 3, 3, 4, 5, 6, 7]


def test_whitespace_and_op_order_do_not_matter():
    assert (
        _as_sequence(" parallel:4-5x2 , reverse:1-2,skip:7 ") == EXPECTED_SEQUENCES["reverse:1-2,parallel:4-5x2,skip:7"]
    )


def test_canonical_form_round_trips():
    plan = parse_plan_text("parallel:8-23x3, skip:2, shuffle:4-6@0, repeat:24-25")
    assert plan.canonical == "skip:2,shuffle:4-6@0,parallel:8-23x3,repeat:24-25"
    reparsed = parse_plan_text(plan.canonical)
    assert reparsed.ops == plan.ops and reparsed.canonical == plan.canonical
    assert resolve_plan(parse_plan_text(plan.canonical), 30) == resolve_plan(plan, 30)


def test_describe_collapses_runs():
    execution = resolve_plan(parse_plan_text("skip:13-19,parallel:22-24x2"), 30)
    assert execution.describe() == "0-12 20-21 [22 23 24]x2 25-29"
    assert execution.skipped == tuple(range(13, 20))
    assert execution.needs_custom_class()


def test_describe_shows_repeated_layers():
    """A layer run twice in a row is ``13x2``, never hidden between two runs (``12-13 13-29``)."""
    data = {"sequence": ["0-9", {"parallel": [10, 11], "loops": 2}, 12, 13, 13, "14-29"]}
    execution = resolve_plan(parse_plan_mapping(data, ""), 30)
    assert execution.describe() == "0-9 [10 11]x2 12 13x2 14-29"
    assert resolve_plan(parse_plan_text("repeat:2-5@4"), T).describe() == "0-1 4x4 6-7"
    assert resolve_plan(parse_plan_text("loop:2-3x2"), T).describe() == "0-3 2-7"


@pytest.mark.parametrize(
    "text",
    [
        "sequence:0-9 [10 11]x2 12 13x2 14-29",
        "0-12,20-29",
        "0-12 20-29",
        "sequence: 0, 1, [2 3-5], 6x3, 29",
        "sequence:[0-29]x3",
        "sequence:5 4 3 2 1 0",
    ],
)
def test_sequence_plan_text_round_trips(text):
    """Every printed form of a sequence (canonical, ``plan show``'s executed sequence) is accepted as ``--plan``."""
    plan = parse_plan_text(text)
    execution = resolve_plan(plan, 30)
    assert plan.canonical == "sequence:" + execution.describe()
    for printed in (plan.canonical, execution.describe()):
        reparsed = parse_plan_text(printed)
        assert resolve_plan(reparsed, 30) == execution and reparsed.canonical == plan.canonical


@pytest.mark.parametrize(
    "text", ["skip:13-19,parallel:22-24x2", "repeat:2-5@4", "loop:2-3x2", "shuffle:4-20@7,reverse:21-25", "identity"]
)
def test_every_executed_sequence_reads_back_as_a_plan(text):
    execution = resolve_plan(parse_plan_text(text), 30)
    assert resolve_plan(parse_plan_text(execution.describe()), 30) == execution


def test_sequence_text_matches_yaml_sequence(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("sequence: [0, '1-3', [4, 5], {parallel: '4-6', loops: 2}, 3, 7]\n")
    assert resolve_plan(parse_plan_text("sequence:0 1-3 [4 5] [4-6]x2 3 7"), T) == resolve_plan(load_plan(str(path)), T)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sequence:", "needs at least one layer"),
        ("sequence:1-3x2", "'x' repeats one layer or a \\[group\\], not the run '1-3x2'"),
        ("sequence:[1 1]", "names a layer twice"),
        ("sequence:[]", "empty parallel block"),
        ("sequence:1-", "malformed sequence entry at '1-'"),
        ("1 2]x2", "malformed sequence entry at '2]x2'"),
        ("sequence:[1 2", "malformed sequence entry"),
        ("sequence:[0-5000]", "over the limit MAX_EXECUTED_STEPS"),
        ("sequence:1x65", "exceeds the limit MAX_LOOPS=64"),
        ("sequence:[1 2]x0", "K must be an integer >= 1"),
        ("sequence:" + "9" * 30, "out of range"),
        ("sequence:\u0661-3", "non-ASCII digit"),
    ],
)
def test_malformed_sequence_text(text, message):
    with pytest.raises(SurgeryError, match=message):
        parse_plan_text(text)


def test_sequence_text_out_of_range_for_the_model():
    with pytest.raises(SurgeryError, match="out of range"):
        resolve_plan(parse_plan_text("sequence:0-8"), T)


def test_custom_class_only_when_needed():
    assert not resolve_plan(parse_plan_text("repeat:2-5,loop:6-7x2"), T).needs_custom_class()
    assert resolve_plan(parse_plan_text("repeat:2-5"), T).needs_custom_class(tie_repeats=True)
    assert not resolve_plan(parse_plan_text("skip:2-5"), T).needs_custom_class(tie_repeats=True)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("skip:3-", "malformed plan op"),
        ("skip 3-4", "malformed plan op"),
        ("skip:3-4,", "empty op"),
        ("drop:3-4", "unknown op 'drop'"),
        ("skip:2-5,reverse:5-6", "overlapping ranges"),
        ("loop:2-3x0", "K must be >= 1"),
        ("parallel:2-3x0", "K must be >= 1"),
        ("loop:2-3", "loop needs a count"),
        ("shuffle:2-3", "shuffle needs a seed"),
        ("parallel:5-3", "empty parallel block"),
        ("reverse:5-3", "empty range"),
        ("skip:2-3@1", "takes no '@'"),
        ("reverse:2-3x2", "takes no 'x'"),
    ],
)
def test_malformed_plans_raise_clear_errors(plan, message):
    with pytest.raises(SurgeryError, match=message):
        parse_plan_text(plan)


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ("skip:6-8", "layer index 8 out of range"),
        ("repeat:2-3@9", "layer index 9 out of range"),
        ("skip:0-7", "executes no layers"),
        ("parallel:8", "out of range"),
    ],
)
def test_plans_that_do_not_fit_the_model(plan, message):
    with pytest.raises(SurgeryError, match=message):
        resolve_plan(parse_plan_text(plan), T)


def test_yaml_ops_plan(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(
        "ops:\n  - skip:0\n  - {op: parallel, layers: 4-5, loops: 2}\n  - {op: shuffle, layers: 1-3, seed: 7}\n"
    )
    plan = load_plan(str(path))
    assert plan.canonical == "skip:0,shuffle:1-3@7,parallel:4-5x2"


def test_yaml_plan_string(tmp_path):
    path = tmp_path / "plan.yml"
    path.write_text('plan: "reverse:1-2,parallel:4-5x2,skip:7"\n')
    assert _resolve_file(path) == EXPECTED_SEQUENCES["reverse:1-2,parallel:4-5x2,skip:7"]


def _resolve_file(path) -> list:
    execution = resolve_plan(load_plan(str(path)), T)
    return [step.layers if step.parallel else step.layers[0] for step in execution.steps]


def test_yaml_explicit_sequence(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("sequence: [0, '1-3', [4, 5], {parallel: '4-6', loops: 2}, 3, 7]\n")
    assert _resolve_file(path) == [0, 1, 2, 3, (4, 5), (4, 5, 6), (4, 5, 6), 3, 7]
    assert load_plan(str(path)).canonical == "sequence:0-3 [4 5] [4 5 6]x2 3 7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sequence: []\n", "non-empty list"),
        ("sequence: [0, []]\n", "empty parallel block"),
        ("sequence: [0, {parallel: [1, 2], loops: 0}]\n", "K must be an integer >= 1"),
        ("sequence: [0, [1, 1]]\n", "names a layer twice"),
        ("ops: [{op: skip}]\n", "ops\\[0\\]: missing required key 'layers'; an op mapping needs 'op' and 'layers'"),
        ("ops: [{op: skip, layers: 1-2, colour: red}]\n", "unknown key"),
        ("plan: skip:1\nops: []\n", "exactly one of"),
        ("ops: [skip:1, skip:1-2]\n", "overlapping"),
        ("ops: [{op: skip, layers: 1, seed: 1, layer: 2}]\n", "gives both 'seed' \\(shuffle\\) and 'layer'"),
        ("sequence: [0, 1\n", "malformed plan YAML"),
    ],
)
def test_malformed_yaml_plans(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(SurgeryError, match=message):
        load_plan(str(path))


def test_yaml_sequence_out_of_range(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("sequence: [0, 1, 12]\n")
    with pytest.raises(SurgeryError, match="layer index 12 out of range in sequence"):
        resolve_plan(load_plan(str(path)), T)


def test_missing_plan_file():
    with pytest.raises(SurgeryError, match="plan file not found"):
        load_plan("does-not-exist.yaml")
