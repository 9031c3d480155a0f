"""Every plan op, on every architecture: the written checkpoint equals an independent reference execution."""

from __future__ import annotations

import re

import pytest
import torch
from reference import EXPECTED_SEQUENCES, reference_output
from tiny_models import GENERATIVE, TINY, VOCAB, build_tiny
from transformers import AutoModel, AutoModelForCausalLM

from surgery.apply.materialize import ApplyOptions, apply_plan

# The fast tier checks every plan on Llama (plain and tied) and BERT; the other families run in the system tier
# (`make test`): the same tests, the matrix that takes most of the unit tier's time otherwise.
FAST_ARCHES = ("llama", "llama-tied", "bert")


def archs(names) -> list:
    """``names`` as parameters, the families outside :data:`FAST_ARCHES` marked ``system``."""
    return [pytest.param(name, marks=() if name in FAST_ARCHES else pytest.mark.system) for name in names]


TOLERANCE = 1e-4


def _slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text)


def _load(arch: str, path):
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    return auto.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()


def _output(model, arch: str, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.last_hidden_state if arch == "bert" else out.logits


def _input_ids(seed: int = 1, length: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (2, length), generator=generator)


@pytest.mark.parametrize("plan", list(EXPECTED_SEQUENCES))
@pytest.mark.parametrize("arch", archs(TINY))
def test_checkpoint_matches_reference(arch, plan, tiny_checkpoints, tmp_path):
    out = tmp_path / _slug(plan)
    apply_plan(str(tiny_checkpoints[arch]), plan, out)
    model = _load(arch, out)
    source = build_tiny(arch)
    ids = _input_ids()
    expected = reference_output(source, arch, ids, EXPECTED_SEQUENCES[plan])
    actual = _output(model, arch, ids)
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max().item() <= TOLERANCE
    # the plan changed something (except identity), so this comparison can fail
    if plan != "identity":
        assert (_output(source, arch, ids) - actual).abs().max().item() > 1e-3


@pytest.mark.parametrize("arch", archs(TINY))
def test_tied_repeats_match_reference(arch, tiny_checkpoints, tmp_path):
    plan = "repeat:2-5@3,loop:6-7x2"
    sequence = [0, 1, 3, 3, 3, 3, 6, 7, 6, 7]
    result = apply_plan(str(tiny_checkpoints[arch]), plan, tmp_path / "out", ApplyOptions(tie_repeats=True))
    assert result.custom_class and result.num_stored_layers == 5  # 0 1 3 6 7
    model = _load(arch, tmp_path / "out")
    ids = _input_ids()
    expected = reference_output(build_tiny(arch), arch, ids, sequence)
    assert (_output(model, arch, ids) - expected).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("surgery_class", [False, True])
@pytest.mark.parametrize("arch", archs(TINY))
def test_identity_reproduces_source_exactly(arch, surgery_class, tiny_checkpoints, tmp_path):
    options = ApplyOptions(surgery_class=surgery_class)
    result = apply_plan(str(tiny_checkpoints[arch]), "identity", tmp_path / "out", options)
    assert result.custom_class == surgery_class
    model = _load(arch, tmp_path / "out")
    ids = _input_ids()
    assert torch.equal(_output(model, arch, ids), _output(build_tiny(arch), arch, ids))


def _incremental_logits(model, ids: torch.Tensor, new_tokens: torch.Tensor) -> torch.Tensor:
    """Logits of each new token position computed with the KV cache, one token at a time."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
        cache, logits = out.past_key_values, [out.logits[:, -1]]
        for index in range(new_tokens.shape[1] - 1):
            out = model(input_ids=new_tokens[:, index : index + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append(out.logits[:, -1])
    return torch.stack(logits, dim=1)


CACHE_PLANS = [
    "identity",
    "skip:2-4",
    "repeat:2-5@3",
    "loop:2-3x3",
    "parallel:2-5",
    "parallel:2-4x3",
    "reverse:1-2,parallel:4-5x2,skip:7",
]


@pytest.mark.parametrize("plan", CACHE_PLANS)
@pytest.mark.parametrize("arch", archs(GENERATIVE))
def test_cached_generation_equals_uncached(arch, plan, tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints[arch]), plan, tmp_path / "out")
    model = _load(arch, tmp_path / "out")
    ids = _input_ids(length=5)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    new_tokens = cached[:, ids.shape[1] :]
    with torch.no_grad():
        full = model(input_ids=cached, use_cache=False).logits[:, ids.shape[1] - 1 : -1]
    assert (full - _incremental_logits(model, ids, new_tokens)).abs().max().item() <= TOLERANCE


def test_every_instance_gets_its_own_cache_slot(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4x3", tmp_path / "out")
    model = _load("llama", tmp_path / "out")
    with torch.no_grad():
        out = model(input_ids=_input_ids(length=4), use_cache=True)
    # 2 + 3*3 + 3 executed layer instances
    assert model.config.num_hidden_layers == 14
    assert len(out.past_key_values.layers) == 14
    assert all(layer.keys.shape[-2] == 4 for layer in out.past_key_values.layers)


def test_surgery_class_save_pretrained_round_trip(tiny_checkpoints, tmp_path):
    """A loaded surgery model saves (e.g. after fine-tuning) into a checkpoint that loads back identically."""
    apply_plan(
        str(tiny_checkpoints["llama-tied"]),
        "parallel:2-4x2,repeat:5-6@5",
        tmp_path / "a",
        ApplyOptions(tie_repeats=True),
    )
    model = _load("llama-tied", tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "modeling_surgery.py").is_file()
    again = _load("llama-tied", tmp_path / "b")
    ids = _input_ids()
    assert torch.equal(_output(model, "llama-tied", ids), _output(again, "llama-tied", ids))
    expected = reference_output(build_tiny("llama-tied"), "llama-tied", ids, [0, 1, (2, 3, 4), (2, 3, 4), 5, 5, 7])
    assert (_output(again, "llama-tied", ids) - expected).abs().max().item() <= TOLERANCE
