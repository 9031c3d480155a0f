"""`surgery glue`: GLUE readers on the real local files, metrics, the fine-tune loop (full / frozen, under a plan)
on a tiny BERT, and an integration run on MiniLM."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from resources import DATA_DIR, data_path
from resources import needs_data as needs
from tiny_models import build_tiny

from surgery.apply.inmemory import planned
from surgery.cli.main import SurgeryGroup
from surgery.errors import SurgeryError
from surgery.glue import metrics
from surgery.glue.cli import glue
from surgery.glue.data import (
    PAPER_TASKS,
    TASKS,
    Example,
    TaskData,
    find_local,
    load_task,
    parse_rows,
    read_tsv,
    resolve_tasks,
)
from surgery.glue.train import GlueConfig, load_classifier, run_task, subset, train

GLUE_DIR = DATA_DIR / "glue"
needs_data = needs("glue")

# (task, folder, train records, dev records) from shared/data/README.md
COUNTS = [
    ("cola", "CoLA", 8551, 1043),
    ("mrpc", "MRPC", 3668, 408),
    ("rte", "RTE", 2490, 277),
    ("sst2", "SST-2", 67349, 872),
    ("stsb", "STS-B", 5749, 1500),
]


def _cli():
    """``surgery`` with ``glue`` registered, so errors go through the real one-line error handling."""
    return SurgeryGroup(name="surgery", commands={"glue": glue})


# --- data -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_tasks() -> dict[str, TaskData]:
    data_path("glue")
    return {task: load_task(task, DATA_DIR) for task, *_ in COUNTS}


@needs_data
@pytest.mark.parametrize(("task", "folder", "n_train", "n_dev"), COUNTS)
def test_local_record_counts(task, folder, n_train, n_dev, local_tasks):
    data = local_tasks[task]
    assert (len(data.train), len(data.validation)) == (n_train, n_dev)
    assert data.source == str(GLUE_DIR / folder)
    assert all(isinstance(example.text_a, str) and example.text_a for example in data.train + data.validation)
    assert all((example.text_b is not None) == (task in ("mrpc", "rte", "stsb")) for example in data.validation)


@needs_data
def test_local_labels_match_source_md(local_tasks):
    def count(task, label, split="validation"):
        return sum(example.label == label for example in getattr(local_tasks[task], split))

    assert (count("sst2", 1), count("sst2", 0)) == (444, 428)
    assert (count("rte", 0), count("rte", 1)) == (146, 131)  # entailment = 0, as on the Hub
    assert (count("rte", 0, "train"), count("rte", 1, "train")) == (1249, 1241)
    assert (count("mrpc", 1), count("mrpc", 0)) == (279, 129)
    assert (count("cola", 1), count("cola", 0)) == (721, 322)
    assert (count("cola", 1, "train"), count("cola", 0, "train")) == (6023, 2528)
    scores = [example.label for example in local_tasks["stsb"].train]
    assert min(scores) >= 0 and max(scores) <= 5 and abs(sum(scores) / len(scores) - 2.701) < 1e-3


@needs_data
def test_mrpc_bom_is_dropped(local_tasks):
    raw = (GLUE_DIR / "MRPC" / "dev.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfQuality\t")
    assert read_tsv(GLUE_DIR / "MRPC" / "dev.tsv")[0][0] == "Quality"
    first = local_tasks["mrpc"].train[0]
    assert first.text_a.startswith('Amrozi accused his brother, whom he called "the witness",')
    assert first.label == 1


@needs_data
def test_cola_is_headerless_and_keeps_its_last_row(local_tasks):
    assert not (GLUE_DIR / "CoLA" / "dev.tsv").read_bytes().endswith(b"\n")
    dev = local_tasks["cola"].validation
    assert dev[0] == Example("The sailors rode the breeze clear of the rocks.", None, 1)  # line 1 is data
    last_line = (GLUE_DIR / "CoLA" / "dev.tsv").read_text().split("\n")[-1].split("\t")
    assert dev[-1] == Example(last_line[3], None, int(last_line[1]))


@needs_data
def test_rte_unclosed_quote_is_plain_text(local_tasks):
    example = local_tasks["rte"].train[2164]  # index column 2164 (header excluded)
    assert example.text_a.startswith("\"That film wasn't too successful, but then 'WarGames,'")
    assert example.text_a.endswith("in 1983.")
    assert example.text_b == 'The film "WarGames" was shot in 1983.'
    assert example.label == 1
    assert local_tasks["rte"].train[2165].text_a != example.text_a  # the quote did not swallow later rows


@needs_data
def test_find_local_accepts_data_root_or_glue_folder():
    assert find_local(TASKS["rte"], DATA_DIR) == GLUE_DIR / "RTE"
    assert find_local(TASKS["rte"], GLUE_DIR) == GLUE_DIR / "RTE"
    assert find_local(TASKS["qnli"], DATA_DIR) is None


def test_parse_rows_errors_name_file_and_line():
    spec = TASKS["rte"]
    header = ["index", "sentence1", "sentence2", "label"]
    with pytest.raises(SurgeryError, match=r"f.tsv:3: expected 4 tab-separated fields, got 3"):
        parse_rows(spec, [header, ["0", "a", "b", "entailment"], ["1", "a", "entailment"]], "f.tsv")
    with pytest.raises(SurgeryError, match=r"f.tsv:2: bad rte label 'maybe'"):
        parse_rows(spec, [header, ["0", "a", "b", "maybe"]], "f.tsv")
    with pytest.raises(SurgeryError, match="lacks the RTE columns"):
        parse_rows(spec, [["index", "s1", "s2", "label"]], "f.tsv")
    assert parse_rows(TASKS["stsb"], [["sentence1", "sentence2", "score"], ["a", "b", "4.25"]]) == [
        Example("a", "b", 4.25)
    ]


def test_missing_task_data_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SurgeryError) as info:
        load_task("qnli", tmp_path)
    message = str(info.value)
    assert "GLUE task qnli" in message and "--data-dir" in message and "QNLI/train.tsv" in message
    with pytest.raises(SurgeryError, match="is not a directory"):
        load_task("rte", tmp_path / "absent")


def test_hub_fallback_maps_columns(tmp_path, monkeypatch):
    """Tasks absent from --data-dir load nyu-mll/glue through `datasets` (mocked here: no network in tests)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return [{"question": f"q {split}?", "sentence": "s.", "label": 1, "idx": 0}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task("qnli", tmp_path)
    assert calls == [("nyu-mll/glue", "qnli", "train"), ("nyu-mll/glue", "qnli", "validation")]
    assert data.train == [Example("q train?", "s.", 1)] and data.validation == [Example("q validation?", "s.", 1)]
    assert data.source == "hub:nyu-mll/glue/qnli"


def test_resolve_tasks():
    assert resolve_tasks("RTE, sst-2,STS-B,rte") == ["rte", "sst2", "stsb"]
    assert resolve_tasks("all") == list(PAPER_TASKS)
    with pytest.raises(SurgeryError, match="unknown GLUE task 'mnli'"):
        resolve_tasks("rte,mnli")


def test_subset_is_seeded_and_ordered():
    items = [Example(str(i), None, 0) for i in range(100)]
    assert subset(items, 10, 1) == subset(items, 10, 1) != subset(items, 10, 2)
    assert [int(e.text_a) for e in subset(items, 10, 1)] == sorted(int(e.text_a) for e in subset(items, 10, 1))
    assert subset(items, None, 0) == items and subset(items, 500, 0) == items


# --- metrics ----------------------------------------------------------------------------------------------


def test_metrics_against_hand_computed_values():
    labels = [1, 1, 1, 0, 0, 1]
    predictions = [1, 0, 1, 0, 1, 1]  # TP=3 FN=1 FP=1 TN=1
    assert metrics.accuracy(labels, predictions) == pytest.approx(4 / 6)
    assert metrics.f1(labels, predictions) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.mcc(labels, predictions) == pytest.approx((3 * 1 - 1 * 1) / math.sqrt(4 * 4 * 2 * 2))
    gold, predicted = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 5.0]
    # Pearson: deviations (-1.5,-.5,.5,1.5) and (-1.75,.25,-.75,2.25): 5.5 / sqrt(5 * 8.75)
    assert metrics.pearson(gold, predicted) == pytest.approx(5.5 / math.sqrt(5 * 8.75))
    assert metrics.spearman(gold, predicted) == pytest.approx(1 - 6 * 2 / (4 * 15))  # ranks differ by 1 twice
    assert metrics.pearson(gold, [2.0] * 4) == 0.0 and metrics.mcc(labels, [1] * 6) == 0.0
    assert metrics.f1([1, 0], [0, 0]) == 0.0


def test_task_scores_and_unnormalized_average():
    mrpc = metrics.compute_metrics("mrpc", [1, 1, 1, 0, 0, 1], [1, 0, 1, 0, 1, 1])
    assert set(mrpc) == {"f1", "accuracy"}
    assert metrics.task_score("mrpc", mrpc) == pytest.approx((0.75 + 4 / 6) / 2)
    assert metrics.task_score("stsb", {"pearson": 0.8, "spearman": 0.6}) == pytest.approx(0.7)
    assert metrics.task_score("cola", {"mcc": 0.3}) == 0.3
    assert set(metrics.TASK_METRICS) == set(PAPER_TASKS)


# --- training on a tiny BERT -------------------------------------------------------------------------------


def _save_tiny_tokenizer(directory: Path) -> None:
    from transformers import BertTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *("##" + c for c in letters)]
    vocab += [*"0123456789", *".,'\"!?-():;"]
    vocab += [f"[unused{i}]" for i in range(96 - len(vocab))]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tiny-bert-glue")
    build_tiny("bert").save_pretrained(directory, safe_serialization=True)
    _save_tiny_tokenizer(directory)
    return directory


def _synthetic(n: int, seed: int) -> list[Example]:
    """Label 1 iff the text contains the letter z: learnable by a tiny model in a few steps."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        letters = [rng.choice("abcdefgh") for _ in range(rng.randint(3, 10))]
        if i % 2:
            letters[rng.randrange(len(letters))] = "z"
        examples.append(Example(" ".join(letters), None, i % 2))
    return examples


def _task_data(n_train=32, n_eval=32) -> TaskData:
    return TaskData(TASKS["sst2"], _synthetic(n_train, 0), _synthetic(n_eval, 1), "synthetic")


def _config(directory, **overrides) -> GlueConfig:
    settings = dict(model=str(directory), epochs=1, batch_size=8, max_length=32, seed=0, warmup_ratio=0.0)
    return GlueConfig(**{**settings, **overrides})


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def _changed(model, before) -> set[str]:
    return {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}


@pytest.mark.usefixtures("one_thread")
def test_classifier_head_is_newly_initialized(tiny_bert_dir):
    model, tokenizer, new = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["stsb"])
    assert new == ["classifier.bias", "classifier.weight"]
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    assert tokenizer("ab z").input_ids[0] == tokenizer.cls_token_id


@pytest.mark.usefixtures("one_thread")
def test_frozen_mode_trains_only_the_head(tiny_bert_dir):
    loaded = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])
    before = _snapshot(loaded[0])
    result = run_task("sst2", _config(tiny_bert_dir, mode="frozen"), data=_task_data(), model_and_tokenizer=loaded)
    assert _changed(loaded[0], before) == {"classifier.weight", "classifier.bias"}  # pooler included: frozen
    assert result.details["trainable_parameters"] == 32 * 2 + 2
    assert all(not param.requires_grad for name, param in loaded[0].named_parameters() if name.startswith("bert."))


@pytest.mark.usefixtures("one_thread")
def test_frozen_encoder_runs_without_dropout(tiny_bert_dir):
    from surgery.glue.train import set_train_mode

    model = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])[0]
    set_train_mode(model, "frozen")
    assert model.training and model.dropout.training  # the head's dropout
    assert not any(module.training for module in model.bert.modules())
    set_train_mode(model, "full")
    assert all(module.training for module in model.modules())


@pytest.mark.usefixtures("one_thread")
def test_full_mode_trains_the_encoder(tiny_bert_dir):
    loaded = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])
    before = _snapshot(loaded[0])
    run_task("sst2", _config(tiny_bert_dir), data=_task_data(), model_and_tokenizer=loaded)
    changed = _changed(loaded[0], before)
    assert {"classifier.weight", "bert.pooler.dense.weight", "bert.embeddings.word_embeddings.weight"} <= changed
    assert all(f"bert.encoder.layer.{i}.attention.self.query.weight" in changed for i in range(8))


@pytest.mark.usefixtures("one_thread")
def test_plan_is_applied_during_training(tiny_bert_dir):
    loaded = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])
    model = loaded[0]
    before = _snapshot(model)
    result = run_task("sst2", _config(tiny_bert_dir, plan="skip:2-3"), data=_task_data(), model_and_tokenizer=loaded)
    assert result.details["executed"] == "0-1 4-7"
    changed = _changed(model, before)
    for i in range(8):
        touched = any(name.startswith(f"bert.encoder.layer.{i}.") for name in changed)
        assert touched == (i not in (2, 3)), i
    assert len(model.bert.encoder.layer) == 8 and model.config.num_hidden_layers == 8  # restored afterwards


@pytest.mark.usefixtures("one_thread")
def test_gradients_flow_through_every_member_of_a_parallel_block(tiny_bert_dir):
    model, tokenizer, _ = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])
    batch = tokenizer(["a b z", "c d"], padding=True, return_tensors="pt")
    labels = torch.tensor([1, 0])
    with torch.no_grad():
        identity_logits = model(**batch).logits
    with planned(model, "parallel:1-4"):
        model.zero_grad()
        out = model(**batch, labels=labels)
        out.loss.backward()
        assert not torch.allclose(out.logits, identity_logits)
    for i in range(8):
        grad = model.bert.encoder.layer[i].attention.self.query.weight.grad
        assert grad is not None and grad.abs().sum() > 0, i
    model.zero_grad(set_to_none=True)
    with planned(model, "skip:2-3"):
        model(**batch, labels=labels).loss.backward()
    assert model.bert.encoder.layer[2].attention.self.query.weight.grad is None
    assert model.bert.encoder.layer[4].attention.self.query.weight.grad is not None


@pytest.mark.usefixtures("one_thread")
def test_same_seed_same_result(tiny_bert_dir):
    data = _task_data()
    runs = [run_task("sst2", _config(tiny_bert_dir, seed=seed), data=data, progress=False) for seed in (3, 3, 4)]
    assert runs[0].metrics == runs[1].metrics
    assert runs[0].details["last_epoch_loss"] == runs[1].details["last_epoch_loss"]
    assert runs[0].details["first_loss"] != runs[2].details["first_loss"]  # the seed initializes the head


@pytest.mark.usefixtures("one_thread")
def test_the_loop_learns_an_easy_task(tiny_bert_dir):
    data = TaskData(TASKS["sst2"], _synthetic(128, 0), _synthetic(64, 1), "synthetic")
    config = _config(tiny_bert_dir, epochs=10, lr=1e-3, batch_size=16)
    result = run_task("sst2", config, data=data, progress=False)
    assert result.details["last_epoch_loss"] < 0.6 * result.details["first_loss"]
    assert result.metrics["accuracy"] >= 0.9


@pytest.mark.usefixtures("one_thread")
def test_train_stats(tiny_bert_dir):
    from surgery.glue.train import Encoded, freeze, trainable_names

    model, tokenizer, new = load_classifier(GlueConfig(model=str(tiny_bert_dir)), TASKS["sst2"])
    freeze(model, trainable_names(model, "full", new))
    stats = train(model, Encoded(tokenizer, _synthetic(20, 0), 32, False), _config(tiny_bert_dir, epochs=2))
    assert stats["train_steps"] == 2 * 3 and not model.training


@needs_data
@pytest.mark.usefixtures("one_thread")
def test_cli_on_local_data_writes_json_and_table(tiny_bert_dir, tmp_path):
    output = tmp_path / "out" / "glue.json"
    args = [
        "glue", str(tiny_bert_dir), "--tasks", "rte,mrpc,sst2,cola,stsb", "--plan", "skip:1,parallel:3-5",
        "--epochs", "1", "--max-train", "16", "--max-eval", "16", "--max-length", "32", "--batch-size", "8",
        "--data-dir", str(DATA_DIR), "--output", str(output), "-q",
    ]  # fmt: skip
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output + str(result.exception)
    report = json.loads(output.read_text())
    assert list(report["results"]) == ["rte", "mrpc", "sst2", "cola", "stsb"]
    assert set(report["results"]["mrpc"]) == {"f1", "accuracy", "score"}
    assert set(report["results"]["stsb"]) == {"pearson", "spearman", "score"}
    for task, values in report["results"].items():
        assert all(-1 <= value <= 1 for value in values.values()), task
        assert report["details"][task]["executed"] == "0 2 [3 4 5] 6-7"
        assert report["details"][task]["eval_examples"] == 16
    scores = [values["score"] for values in report["results"].values()]
    assert report["average"]["score"] == pytest.approx(sum(scores) / 5)
    config = report["config"]
    assert (config["plan"], config["mode"], config["lr"], config["max_train"]) == (
        "skip:1,parallel:3-5",
        "full",
        2e-5,
        16,
    )
    assert config["surgery_version"] and config["seed"] == 0 and config["batch_size"] == 8
    assert "average (5 tasks, unnormalized)" in result.stdout and "MCC" in result.stdout


@pytest.mark.usefixtures("one_thread")
def test_cli_errors_are_one_line(tiny_bert_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    rte = tmp_path / "data" / "RTE"
    rte.mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        (rte / name).write_text("index\tsentence1\tsentence2\tlabel\n0\ta b\tb\tentailment\n")
    data = str(tmp_path / "data")
    model = str(tiny_bert_dir)
    cases = [
        (["glue", model, "--tasks", "qnli", "--data-dir", data], "no data for GLUE task qnli"),
        (["glue", model, "--tasks", "mnli"], "unknown GLUE task"),
        (["glue", model, "--tasks", "rte", "--data-dir", data, "--plan", "drop:1"], "unknown op"),
        (["glue", model, "--tasks", "rte", "--data-dir", data, "--plan", "skip:9"], "out of range"),
        (["glue", str(tmp_path / "nope"), "--tasks", "rte", "--data-dir", data], "not found"),
        (["glue", model, "--tasks", "rte", "--data-dir", str(tmp_path / "absent")], "is not a directory"),
    ]
    for args, fragment in cases:
        result = CliRunner().invoke(_cli(), args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


# --- integration: MiniLM (all-MiniLM-L6-v2, 6-layer BERT) ---------------------------------------------------


@pytest.mark.integration
@needs_data
@pytest.mark.parametrize(
    ("mode", "plan", "executed"),
    [("full", None, "identity"), ("frozen", None, "identity"), ("full", "skip:2-3", "0-1 4-5")],
)
@pytest.mark.usefixtures("one_thread")
def test_minilm_rte(mode, plan, executed, minilm, tmp_path):
    output = tmp_path / "glue.json"
    args = ["glue", str(minilm), "--tasks", "rte", "--mode", mode, "--epochs", "1", "--max-train", "64"]
    args += ["--max-eval", "64", "--data-dir", str(DATA_DIR), "--output", str(output), "-q"]
    args += ["--plan", plan] if plan else []
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output + str(result.exception)
    report = json.loads(output.read_text())
    accuracy = report["results"]["rte"]["accuracy"]
    assert report["average"]["score"] == accuracy  # one task: the average is its score
    details = report["details"]["rte"]
    assert details["eval_examples"] == 64 and details["train_examples"] == 64
    assert details["executed"] == executed and details["newly_initialized"] == ["classifier.bias", "classifier.weight"]
    # trainable: the head alone (hidden 384 -> 2 labels, + bias) when frozen; else MiniLM itself plus the head
    from transformers import AutoModel

    encoder = sum(param.numel() for param in AutoModel.from_pretrained(minilm).parameters())
    head = 384 * 2 + 2
    assert details["trainable_parameters"] == (head if mode == "frozen" else encoder + head)
    assert math.isfinite(details["first_loss"]) and abs(details["first_loss"] - math.log(2)) < 0.1
    assert report["config"]["lr"] == (1e-3 if mode == "frozen" else 2e-5)


def test_all_tasks_with_a_data_folder_runs_what_is_there(tmp_path, capsys):
    from surgery.glue.data import PAPER_TASKS as ALL
    from surgery.glue.data import tasks_with_local_data

    rte = tmp_path / "RTE"
    rte.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (rte / name).write_text("index\tsentence1\tsentence2\tlabel\n")
    assert tasks_with_local_data(list(ALL), tmp_path) == ["rte"]
    note = capsys.readouterr().err
    assert note.startswith("note: no local data for cola, mrpc, qnli, sst2, stsb, wnli under") and "--tasks" in note
    assert tasks_with_local_data(list(ALL), None) == list(ALL)  # no folder: everything from the Hub
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tasks_with_local_data(list(ALL), empty) == list(ALL)  # nothing local: all try the Hub, errors say so
