"""`surgery similarity`: hidden-state cosine similarity between layers (paper §3.1 Fig 3, A.3, A.4)."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from reference import reference_output
from resources import DATA_DIR, needs_data
from tiny_models import VOCAB, build_tiny
from transformers import AutoModelForCausalLM

from surgery import __version__
from surgery.analysis.cli import similarity
from surgery.analysis.report import FILES, read_result
from surgery.analysis.similarity import compute_similarity, suggest_layer_classes
from surgery.analysis.texts import load_texts
from surgery.apply.materialize import apply_plan
from surgery.cli.main import SurgeryGroup
from surgery.errors import SurgeryError

LAMBADA = DATA_DIR / "lambada" / "lambada_test.jsonl"
TEXTS = ["the cat sat on the mat, again and again.", "hello there"]  # 41 and 12 tokens with BOS
PLAN = "parallel:2-4x2,skip:6"
PLAN_STEPS = [0, 1, (2, 3, 4), (2, 3, 4), 5, 7]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """On a shared, busy CPU intra-op threads spin more than they work (tiny models: ~100x, SmolLM2: ~4x)."""
    yield


class CharTokenizer:
    """BOS (id 1) + one id per character: all :func:`compute_similarity` needs from a tokenizer."""

    pad_token_id = 0

    def __call__(self, text, return_special_tokens_mask=False, truncation=False, max_length=None):
        ids = [1] + [2 + ord(char) % (VOCAB - 2) for char in text]
        special = [1] + [0] * len(text)
        if truncation:
            ids, special = ids[:max_length], special[:max_length]
        return {"input_ids": ids, **({"special_tokens_mask": special} if return_special_tokens_mask else {})}


def _ids(text: str) -> torch.Tensor:
    return torch.tensor([CharTokenizer()(text)["input_ids"]])


def _reference_stats(per_text: list[np.ndarray], skip_first: bool = False):
    """Token-by-token loops over unpadded hidden states (n entries, tokens, D): matrix, variance, mean norm."""
    n = per_text[0].shape[0]
    cos, var, norm, count = np.zeros((n, n)), np.zeros(n), np.zeros(n), 0
    for states in per_text:
        for t in range(1 if skip_first else 0, states.shape[1]):
            for i in range(n):
                var[i] += np.var(states[i, t])
                norm[i] += np.linalg.norm(states[i, t])
                for j in range(n):
                    a, b = states[i, t], states[j, t]
                    cos[i, j] += a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
            count += 1
    return cos / count, var / count, norm / count, count


def _plain_states(model, text: str) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=_ids(text), output_hidden_states=True)
    return torch.stack(out.hidden_states)[:, 0].double().numpy()


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox", "bert"])
def test_padded_batch_equals_token_loop_reference(arch):
    model = build_tiny(arch)
    result = compute_similarity(model, CharTokenizer(), TEXTS, batch_size=2)  # one right-padded batch
    cos, var, norm, count = _reference_stats([_plain_states(model, text) for text in TEXTS])
    assert result.num_tokens == count == 41 + 12  # padding excluded
    assert result.size == 9 and result.labels[:2] == ["emb", "0"]
    np.testing.assert_allclose(result.matrix, cos, atol=1e-6)
    np.testing.assert_allclose(result.variance, var, rtol=1e-5)
    np.testing.assert_allclose(result.mean_norm, norm, rtol=1e-5)
    assert np.array_equal(result.matrix, result.matrix.T)
    np.testing.assert_allclose(np.diag(result.matrix), 1.0, atol=1e-12)
    assert result.final_norm_applied == (arch != "bert")  # BERT has no final norm


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_plan_matrix_covers_executed_steps(arch):
    """One entry per executed step (a parallel block is one step, its mean), checked against the reference."""
    model = build_tiny(arch)
    result = compute_similarity(model, CharTokenizer(), TEXTS, plan=PLAN, batch_size=2)
    assert result.size == len(PLAN_STEPS) + 1 == 7
    assert result.labels == ["emb", "0", "1", "[2 3 4]", "[2 3 4]", "5", "7"]
    assert result.plan == PLAN and result.executed == "0-1 [2 3 4]x2 5 7"
    assert model.config.num_hidden_layers == 8 and len(list(model.parameters())) > 0  # restored
    per_text = []
    for text in TEXTS:
        ids = _ids(text)
        states = [reference_output(model, arch, ids, PLAN_STEPS[:k], final=False)[0] for k in range(7)]
        if arch == "llama":
            states[-1] = model.model.norm(states[-1])
        per_text.append(torch.stack(states).double().detach().numpy())
    cos, _, norm, _ = _reference_stats(per_text)
    np.testing.assert_allclose(result.matrix, cos, atol=2e-6)
    np.testing.assert_allclose(result.mean_norm, norm, rtol=1e-5)


def test_surgery_checkpoint_runs_its_own_sequence(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), PLAN, tmp_path / "out")
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    result = compute_similarity(written, CharTokenizer(), TEXTS)
    expected = compute_similarity(build_tiny("llama"), CharTokenizer(), TEXTS, plan=PLAN)
    assert result.labels == expected.labels and result.final_norm_applied
    np.testing.assert_allclose(result.matrix, expected.matrix, atol=1e-6)
    with pytest.raises(SurgeryError, match="already carries a plan"):
        compute_similarity(written, CharTokenizer(), TEXTS, plan="skip:1")


def test_deterministic_and_batch_size_independent():
    model = build_tiny("llama")
    texts = [*TEXTS, "a third, somewhat longer text than the others", "x"]
    first = compute_similarity(model, CharTokenizer(), texts, batch_size=3)
    again = compute_similarity(model, CharTokenizer(), texts, batch_size=3)
    assert np.array_equal(first.matrix, again.matrix) and np.array_equal(first.variance, again.variance)
    single = compute_similarity(model, CharTokenizer(), texts, batch_size=1)
    np.testing.assert_allclose(single.matrix, first.matrix, atol=1e-6)


def test_options_special_tokens_truncation_and_final_norm():
    model = build_tiny("llama")
    excluded = compute_similarity(model, CharTokenizer(), TEXTS, exclude_special_tokens=True)
    cos, *_ = _reference_stats([_plain_states(model, text) for text in TEXTS], skip_first=True)
    assert excluded.num_tokens == 40 + 11
    np.testing.assert_allclose(excluded.matrix, cos, atol=1e-6)
    everything = compute_similarity(model, CharTokenizer(), TEXTS)
    assert everything.num_special_tokens == 2 and excluded.num_special_tokens == 0
    np.testing.assert_allclose(everything.variance_text, excluded.variance, rtol=1e-9)
    np.testing.assert_allclose(everything.mean_norm_text, excluded.mean_norm, rtol=1e-9)
    truncated = compute_similarity(model, CharTokenizer(), TEXTS, max_length=10)
    assert truncated.num_truncated == 2 and truncated.num_tokens == 20
    raw = compute_similarity(model, CharTokenizer(), TEXTS, final_norm=False)
    normed = everything
    assert not raw.final_norm_applied and not np.allclose(raw.matrix[-1], normed.matrix[-1])
    np.testing.assert_allclose(raw.matrix[:-1, :-1], normed.matrix[:-1, :-1], atol=1e-12)
    with pytest.raises(SurgeryError, match="batch_size"):
        compute_similarity(model, CharTokenizer(), TEXTS, batch_size=0)


def test_class_rule_recovers_synthetic_blocks():
    sizes = [3, 12, 2]
    labels = np.repeat(np.arange(3), sizes)
    matrix = np.where(labels[:, None] == labels[None, :], 0.9, 0.2)
    matrix += np.random.default_rng(0).normal(0, 0.02, matrix.shape)
    matrix = (matrix + matrix.T) / 2
    np.fill_diagonal(matrix, 1.0)
    classes = suggest_layer_classes(matrix)
    assert classes.bounds == [(0, 2), (3, 14), (15, 16)]
    assert classes.names == ["beginning", "middle", "end"] and "contiguous" in classes.rule
    assert all(value > 0.85 for value in classes.within)
    assert suggest_layer_classes(matrix, 1).bounds == [(0, 16)]
    with pytest.raises(SurgeryError):
        suggest_layer_classes(matrix[:3, :3], 4)


def test_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text  \n")
    assert load_texts(str(tmp_path / "a.txt")).texts == ["first text", "second text"]
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n"two"\n{"text": "three"}\n')
    picked = load_texts(str(tmp_path / "b.jsonl"), limit=2, seed=1)
    assert (
        picked.available == 3
        and len(picked.texts) == 2
        and picked.texts == load_texts(str(tmp_path / "b.jsonl"), limit=2, seed=1).texts
    )
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(SurgeryError, match="bad.jsonl:2"):
        load_texts(str(tmp_path / "bad.jsonl"))


def test_lambada_from_hub_failure_says_how_to_supply_data(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.delenv("SURGERY_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr("surgery.io.hub.dataset_in_cache", lambda repo_id: True)  # reach load_dataset itself
    with pytest.raises(SurgeryError, match="Hugging Face Hub.*--data-dir.*SURGERY_DATA_DIR.*--data PATH"):
        load_texts("lambada")


# --- command line -------------------------------------------------------------------------------------


@click.group(cls=SurgeryGroup)
@click.pass_context
def cli(ctx):
    ctx.obj = {"debug": False}


cli.add_command(similarity)


@pytest.fixture
def tiny_loader(monkeypatch):
    from surgery.io.model_ref import ModelRef

    monkeypatch.setattr(
        "surgery.architectures.loading.load_model_and_tokenizer",
        lambda model, **kwargs: (build_tiny("llama"), CharTokenizer()),
    )
    monkeypatch.setattr(
        "surgery.architectures.loading.check_loadable", lambda model, **kwargs: (ModelRef.parse(model), {}, False)
    )


def test_cli_writes_all_files(tiny_loader, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in [*TEXTS, "third", "fourth one"]))
    out = tmp_path / "sim"
    args = ["similarity", "tiny", "--plan", "skip:2-3", "--data", str(data), "--limit", "3", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "suggested classes: beginning" in result.output
    for name in ("heatmap", "variance"):
        assert (out / FILES[name]).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    matrix = np.load(out / FILES["matrix_npy"])
    as_json = json.loads((out / FILES["matrix_json"]).read_text())
    summary = json.loads((out / FILES["summary"]).read_text())
    assert matrix.shape == (7, 7) and len(as_json["labels"]) == 7
    np.testing.assert_allclose(np.array(as_json["matrix"]), matrix, atol=1e-6)
    config = summary["config"]
    assert summary["surgery_version"] == __version__
    assert (config["model"], config["plan_canonical"], config["limit"], config["seed"]) == ("tiny", "skip:2-3", 3, None)
    hidden = summary["hidden_states"]
    assert hidden["entries"] == 7 and hidden["texts"] == 3 and hidden["final_norm_applied"]
    assert len(hidden["variance"]) == len(hidden["mean_norm"]) == 7
    assert [c["name"] for c in summary["layer_classes"]["classes"]] == ["beginning", "middle", "end"]
    again = read_result(out)
    expected = compute_similarity(build_tiny("llama"), CharTokenizer(), [*TEXTS, "third"], plan="skip:2-3")
    assert np.array_equal(again.matrix, expected.matrix) and again.to_dict() == expected.to_dict()
    (out / FILES["matrix_npy"]).unlink()
    np.testing.assert_allclose(read_result(out).matrix, expected.matrix, atol=1e-6)


def test_cli_labels_source_layout_checkpoint_by_source_layers(tiny_checkpoints, tmp_path, monkeypatch):
    checkpoint = tmp_path / "skipped"
    apply_plan(str(tiny_checkpoints["llama"]), "skip:2-3", checkpoint)  # a plain 6-layer LlamaForCausalLM
    monkeypatch.setattr(
        "surgery.architectures.loading.load_model_and_tokenizer",
        lambda model, **kwargs: (AutoModelForCausalLM.from_pretrained(model).eval(), CharTokenizer()),
    )
    (tmp_path / "t.txt").write_text("one text\nanother text\n")
    args = ["similarity", str(checkpoint), "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o"), "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o" / FILES["summary"]).read_text())
    assert summary["config"]["model_plan"]["canonical"] == "skip:2-3"
    assert summary["hidden_states"]["labels"] == ["emb", "0", "1", "4", "5", "6", "7"]


@needs_data("lambada", "lambada_test.jsonl")
def test_cli_reads_lambada_from_data_dir_env(tiny_loader, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_DATA_DIR", str(DATA_DIR))
    args = ["similarity", "tiny", "--limit", "2", "--max-length", "16", "--out", str(tmp_path), "-q", "--classes", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / FILES["summary"]).read_text())
    assert summary["config"]["data_location"] == str(LAMBADA) and summary["texts_available"] == 5153
    assert summary["hidden_states"]["tokens"] == 2 * 16 and summary["layer_classes"] is None


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--data-dir", "{tmp}/nowhere"], "nowhere is not a directory"),
        (["--data-dir", "{tmp}"], "LAMBADA not found"),
        (["--data", "{tmp}/missing.jsonl"], "data file not found"),
        (["--data", "wikitext"], "unknown --data 'wikitext'"),
        (["--data", "{tmp}/t.txt", "--plan", "skip:3-"], "malformed plan op"),
        (["--limit", "0"], "--limit: Input should be greater than or equal to 1"),
    ],
)
def test_cli_bad_input_is_one_error_line(args, fragment, tiny_loader, tmp_path):
    (tmp_path / "t.txt").write_text("a text\n")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = CliRunner().invoke(cli, ["similarity", "tiny", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    if "LAMBADA" in fragment:
        assert "--data-dir" in lines[0] and "--data PATH" in lines[0]


# --- real model -----------------------------------------------------------------------------------------


@pytest.mark.integration
@needs_data("lambada", "lambada_test.jsonl")
def test_smollm2_lambada_middle_layers_share_a_space(smollm2_gguf_path):
    from surgery.architectures.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(smollm2_gguf_path))
    texts = load_texts("lambada", data_dir=DATA_DIR, limit=8).texts
    result = compute_similarity(model, tokenizer, texts, batch_size=4)
    matrix = result.matrix
    assert matrix.shape == (31, 31) and result.num_texts == 8 and result.final_norm_applied
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-9)
    middle = list(range(5, 21))
    inside = matrix[np.ix_(middle, middle)][~np.eye(len(middle), dtype=bool)].mean()
    assert inside > 0.6 and inside > matrix[0, middle].mean() + 0.5  # paper §3.1: a shared middle space
    classes = suggest_layer_classes(matrix)
    assert classes.bounds[0][0] == 0 and classes.bounds[1][0] <= 5 and classes.bounds[1][1] >= 20
    skipped = compute_similarity(model, tokenizer, texts, plan="skip:13-19", batch_size=4)
    assert skipped.size == 24 and skipped.labels[13:16] == ["12", "20", "21"]


def test_class_description_uses_one_numbering():
    from surgery.analysis.similarity import LayerClasses

    labels = ["emb", "0", "1", "4", "[5 6]", "7"]  # a skip and a parallel block: labels name executed steps
    classes = LayerClasses(
        bounds=[(0, 1), (2, 4), (5, 5)], names=["beginning", "middle", "end"], within=[1.0] * 3, rule=""
    )
    assert classes.describe(labels) == "beginning: emb + layer 0; middle: layers 1..[5 6]; end: layer 7"
    assert classes.describe() == "beginning: entries 0-1; middle: entries 2-4; end: entries 5"
