"""surgery eval: task registry, local data resolution and conversion, and faithfulness to lm-eval's stock tasks."""

from __future__ import annotations

import bz2
import json
import os

import pytest
from resources import DATA_DIR as DATA
from resources import needs_data as needs

from surgery.errors import SurgeryError
from surgery.evaluation import data
from surgery.evaluation.tasks import (
    BENCHMARKS,
    TASKS_DIR,
    parse_tasks,
    resolve_local,
    write_task_yamls,
)

needs_data = needs()


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------------------------- registry


def test_parse_tasks_all_default_order_and_dedupe():
    assert [b.name for b in parse_tasks(None)] == [
        "lambada_openai",
        "arc_easy",
        "arc_challenge",
        "hellaswag",
        "winogrande",
        "gsm8k",
    ]
    assert [b.name for b in parse_tasks("all")] == list(BENCHMARKS)
    assert [b.name for b in parse_tasks(" arc_easy, lambada_openai,arc_easy ")] == ["arc_easy", "lambada_openai"]


def test_unknown_task_lists_known_tasks():
    with pytest.raises(SurgeryError, match="unknown task mmlu; known tasks: lambada_openai, arc_easy, .*gsm8k"):
        parse_tasks("arc_easy,mmlu")
    with pytest.raises(SurgeryError, match="no tasks"):
        parse_tasks(" , ")


def test_missing_local_data_names_task_and_files(tmp_path):
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada" / "lambada_test.jsonl").write_text('{"text": "a b"}\n')
    resolve_local(parse_tasks("lambada_openai"), tmp_path, tmp_path / "cache")  # present: fine
    with pytest.raises(SurgeryError, match=r"task 'winogrande': no local data in .*missing winogrande/dev.jsonl"):
        resolve_local(parse_tasks("lambada_openai,winogrande"), tmp_path, tmp_path / "cache")
    with pytest.raises(SurgeryError, match="task 'gsm8k'.*--data-dir"):
        resolve_local(parse_tasks("gsm8k"), tmp_path, tmp_path / "cache")
    with pytest.raises(SurgeryError, match="not a directory"):
        resolve_local(parse_tasks("gsm8k"), tmp_path / "nope", tmp_path / "cache")


def test_hub_dataset_unreachable_is_one_clear_error():
    from surgery.evaluation.harness import TaskSet

    with pytest.raises(SurgeryError) as info:
        TaskSet("lambada_openai")  # offline: the Hub dataset cannot be loaded
    message = str(info.value)
    assert "task 'lambada_openai'" in message and "EleutherAI/lambada_openai" in message
    assert "--data-dir" in message and "lambada/lambada_test.jsonl" in message


# ------------------------------------------------------------------------------------------ converters (unit)


def test_arc_record_maps_numeric_labels_through_the_items_choices():
    record = {
        "id": "NYSEDREGENTS_2015_8_28",
        "question": {
            "stem": "All living and nonliving material is composed of",
            "choices": [
                {"text": "air", "label": "1"},
                {"text": "elements", "label": "2"},
                {"text": "water", "label": "3"},
                {"text": "soil", "label": "4"},
            ],
        },
        "answerKey": "2",
    }
    row = data.arc_record(record)
    assert row == {
        "id": "NYSEDREGENTS_2015_8_28",
        "question": "All living and nonliving material is composed of",
        "choices": {"text": ["air", "elements", "water", "soil"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    }
    assert row["choices"]["label"].index(row["answerKey"]) == 1  # lm-eval's doc_to_target -> "elements"
    with pytest.raises(SurgeryError, match="answerKey 'E'"):
        data.arc_record({**record, "answerKey": "E"})


def test_winogrande_labels_joined_from_lst():
    records = [
        {"qID": "a", "sentence": "X beat Y so _ won.", "option1": "X", "option2": "Y"},
        {"qID": "b", "sentence": "X beat Y so _ lost.", "option1": "X", "option2": "Y", "answer": "2"},
    ]
    rows = data.winogrande_records(records, ["1", "2"])
    assert rows == [
        {"sentence": "X beat Y so _ won.", "option1": "X", "option2": "Y", "answer": "1"},
        {"sentence": "X beat Y so _ lost.", "option1": "X", "option2": "Y", "answer": "2"},
    ]
    with pytest.raises(SurgeryError, match="disagrees with dev-labels.lst"):
        data.winogrande_records(records, ["1", "1"])
    with pytest.raises(SurgeryError, match="2 records but 1 labels"):
        data.winogrande_records(records, ["1"])
    with pytest.raises(SurgeryError, match="expected '1' or '2'"):
        data.winogrande_records(records, ["1", "3"])


HELLASWAG_ITEM = [
    "Roof shingle removal: A man is sitting on a roof. he",
    "3",
    "is using wrap to wrap a pair of skis.",
    "is ripping level tiles off.",
    "is holding a rubik's cube.",
    "starts pulling up roofing on a roof.",
]


def test_hellaswag_derived_parsing_and_stock_preprocessing():
    from lm_eval.tasks.hellaswag.utils import process_docs

    (row,) = data.hellaswag_derived_records([line + "\n" for line in HELLASWAG_ITEM] + ["\n"])
    assert row["activity_label"] == "Roof shingle removal"
    assert row["ctx_a"] == "A man is sitting on a roof. he" and row["ctx_b"] == ""
    assert row["endings"] == HELLASWAG_ITEM[2:] and row["label"] == "3"

    import datasets

    (doc,) = process_docs(datasets.Dataset.from_list([row]))
    # lm-eval on the original item (ctx_a "A man is sitting on a roof.", ctx_b "he") builds "... roof. He":
    # the stand-in differs only in that capital letter.
    assert doc["query"] == "Roof shingle removal: A man is sitting on a roof. he"
    assert doc["choices"] == HELLASWAG_ITEM[2:] and doc["gold"] == 3
    with pytest.raises(SurgeryError, match="not a multiple of 6"):
        data.hellaswag_derived_records(HELLASWAG_ITEM[:5])
    with pytest.raises(SurgeryError, match="gold label '7'"):
        data.hellaswag_derived_records([HELLASWAG_ITEM[0], "7", *HELLASWAG_ITEM[2:]])


def test_converted_files_are_written_once_per_source_content(tmp_path):
    source = tmp_path / "hs.txt.bz2"
    source.write_bytes(bz2.compress(("\n".join(HELLASWAG_ITEM) + "\n").encode()))
    first = data.convert_hellaswag_derived(source, tmp_path / "cache")
    mtime = first.stat().st_mtime_ns
    assert data.convert_hellaswag_derived(source, tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == mtime
    assert [json.loads(line)["label"] for line in first.read_text().splitlines()] == ["3"]
    source.write_bytes(bz2.compress(("\n".join(HELLASWAG_ITEM).replace("\n3\n", "\n0\n") + "\n").encode()))
    assert data.convert_hellaswag_derived(source, tmp_path / "cache") != first


# ------------------------------------------------------------------------------ faithfulness to stock lm-eval


def _comparable(config: dict) -> dict:
    def norm(value):
        if callable(value):
            return f"{value.__module__}.{value.__qualname__}"
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value

    return {k: norm(v) for k, v in config.items()}


# Keys allowed to differ from the stock YAML: where the data comes from, and train splits absent locally
# (only a few-shot pool; these tasks are zero-shot). The stand-in also has its own name and tag.
DATASET_KEYS = {"dataset_path", "dataset_name", "dataset_kwargs"}
ALLOWED = {
    "lambada_openai": DATASET_KEYS,
    "arc_easy": DATASET_KEYS,
    "arc_challenge": DATASET_KEYS,
    "gsm8k": DATASET_KEYS,
    "winogrande": DATASET_KEYS | {"training_split"},
    "hellaswag": DATASET_KEYS | {"training_split"},
    "hellaswag_standin": DATASET_KEYS | {"training_split", "task", "tag"},
}


@pytest.mark.parametrize("name", list(ALLOWED))
def test_shipped_yaml_equals_stock_lm_eval_task_except_dataset_keys(name):
    from lm_eval.tasks._yaml_loader import load_yaml

    stock_name = "hellaswag" if name == "hellaswag_standin" else name
    stock_path = _stock_index()[stock_name].yaml_path
    stock = _comparable(load_yaml(stock_path, resolve_func=True))
    ours = _comparable(load_yaml(TASKS_DIR / f"{name}.yaml", resolve_func=True))
    assert ours["dataset_path"] == "json"
    differing = {k for k in stock.keys() | ours.keys() if stock.get(k) != ours.get(k)}
    assert differing <= ALLOWED[name], {k: (stock.get(k), ours.get(k)) for k in differing - ALLOWED[name]}


_INDEX = {}


def _stock_index():
    if not _INDEX:
        from lm_eval.tasks import TaskManager

        _INDEX.update(TaskManager().task_index)
    return _INDEX


def test_shipped_yaml_files_are_package_data():
    assert sorted(p.name for p in TASKS_DIR.glob("*.yaml")) == sorted(f"{n}.yaml" for n in ALLOWED)


# ------------------------------------------------------------------------------------- real local data files


@needs_data
def test_local_tasks_load_with_hand_checked_items(tmp_path):
    from surgery.evaluation.harness import TaskSet

    taskset = TaskSet("lambada_openai,arc_easy,arc_challenge,hellaswag,winogrande,gsm8k", data_dir=DATA)
    tasks = taskset.tasks
    assert list(tasks) == ["lambada_openai", "arc_easy", "arc_challenge", "hellaswag_standin", "winogrande", "gsm8k"]
    assert {n: len(t.eval_docs) for n, t in tasks.items()} == {
        "lambada_openai": 5153,
        "arc_easy": 2376,
        "arc_challenge": 1172,
        "hellaswag_standin": 10042,
        "winogrande": 1267,
        "gsm8k": 1319,
    }

    lambada = tasks["lambada_openai"]
    doc = lambada.eval_docs[0]
    assert lambada.doc_to_target(doc) == " signs" and doc["text"].endswith(lambada.doc_to_text(doc) + " signs")

    arc = tasks["arc_easy"]
    docs = {d["id"]: d for d in arc.eval_docs}
    numeric = docs["NYSEDREGENTS_2015_8_28"]
    assert arc.doc_to_text(numeric) == "Question: All living and nonliving material is composed of\nAnswer:"
    assert arc.doc_to_choice(numeric) == ["air", "elements", "water", "soil"]
    assert arc.doc_to_target(numeric) == 1
    three = docs["NYSEDREGENTS_2008_4_6"]
    assert arc.doc_to_choice(three) == ["decrease", "increase", "remain the same"] and arc.doc_to_target(three) == 1
    # chance over all ARC-Easy test items: 2365 x 1/4, 7 x 1/3, 4 x 1/5
    assert taskset.chance(None)["arc_easy"]["acc_norm,none"] == pytest.approx((2365 / 4 + 7 / 3 + 4 / 5) / 2376)
    assert taskset.chance(2)["arc_easy"] == {"acc,none": 0.25, "acc_norm,none": 0.25}

    wino = tasks["winogrande"]
    doc = wino.eval_docs[0]
    assert wino.doc_to_choice(doc) == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert wino.doc_to_target(doc) == "always got the easier cases." and wino.doc_to_text(doc) == 1  # label "2"

    hs = tasks["hellaswag_standin"]
    doc = hs.eval_docs[0]
    assert hs.doc_to_text(doc) == HELLASWAG_ITEM[0] and hs.doc_to_choice(doc) == HELLASWAG_ITEM[2:]
    assert hs.doc_to_target(doc) == 3
    assert taskset.data_sources()["hellaswag_standin"]["standin"] is True
    assert "STAND-IN" in taskset.data_sources()["hellaswag_standin"]["note"]

    gsm = tasks["gsm8k"]
    assert gsm.config.num_fewshot == 5 and gsm.config.fewshot_split == "train"
    assert gsm.doc_to_text(gsm.eval_docs[0]).startswith("Question: Janet")
    assert taskset.chance(4)["gsm8k"] == {"exact_match,strict-match": 0.0, "exact_match,flexible-extract": 0.0}


@needs_data
def test_generated_yamls_work_as_lm_eval_include_path(tmp_path):
    from lm_eval.tasks import TaskManager

    local = resolve_local(parse_tasks("arc_challenge,winogrande"), DATA)
    write_task_yamls(local, tmp_path)
    text = (tmp_path / "arc_challenge.yaml").read_text()
    assert f"include: {(TASKS_DIR / 'arc_challenge.yaml').resolve()}" in text
    assert "ARC-Challenge-Test" in text and "ARC-Challenge-Train" in text
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    assert set(manager.all_subtasks) == {"arc_challenge", "winogrande"}


@needs_data
def test_original_hellaswag_jsonl_preferred_over_standin(tmp_path):
    (tmp_path / "hellaswag").mkdir()
    original = tmp_path / "hellaswag" / "hellaswag_val.jsonl"
    original.write_text("{}\n")
    local = resolve_local(parse_tasks("hellaswag"), tmp_path, tmp_path / "cache")
    assert local["hellaswag"].task == "hellaswag" and not local["hellaswag"].standin
    os.remove(original)
    with pytest.raises(SurgeryError, match="hellaswag_val.jsonl \\(original\\) or"):
        resolve_local(parse_tasks("hellaswag"), tmp_path, tmp_path / "cache")
