"""Plans applied in memory equal the reference and the checkpoint `apply` writes; the model is restored."""

from __future__ import annotations

import pytest
import torch
from reference import EXPECTED_SEQUENCES, reference_output
from tiny_models import GENERATIVE, TINY, build_tiny
from transformers import AutoModel, AutoModelForCausalLM

from surgery.apply.inmemory import planned
from surgery.apply.materialize import apply_plan
from surgery.errors import SurgeryError

PLANS = ["skip:2-4", "repeat:2-5", "parallel:2-4x3", "reverse:1-2,parallel:4-5x2,skip:7"]


def _out(model, arch, ids, **kwargs):
    with torch.no_grad():
        out = model(input_ids=ids, **kwargs)
    return out.last_hidden_state if arch == "bert" else out.logits


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("arch", list(TINY))
def test_in_memory_equals_reference_and_written_checkpoint(arch, plan, tiny_checkpoints, tmp_path):
    model = build_tiny(arch)
    ids = torch.randint(0, 96, (2, 10), generator=torch.Generator().manual_seed(2))
    before = _out(model, arch, ids)
    with planned(model, plan):
        in_memory = _out(model, arch, ids)
    assert torch.equal(_out(model, arch, ids), before)  # restored
    expected = reference_output(build_tiny(arch), arch, ids, EXPECTED_SEQUENCES[plan])
    assert (in_memory - expected).abs().max().item() <= 1e-4
    apply_plan(str(tiny_checkpoints[arch]), plan, tmp_path / "out")
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    written = auto.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    assert (_out(written, arch, ids) - in_memory).abs().max().item() <= 1e-5


@pytest.mark.parametrize("arch", GENERATIVE)
def test_in_memory_cached_generation(arch):
    model = build_tiny(arch)
    ids = torch.randint(0, 96, (1, 5), generator=torch.Generator().manual_seed(4))
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with planned(model, "parallel:2-4x2,repeat:5-6@5"), torch.no_grad():
        assert torch.equal(model.generate(ids, **kwargs), model.generate(ids, use_cache=False, **kwargs))


def test_nested_plans_refused():
    model = build_tiny("llama")
    with planned(model, "skip:1"), pytest.raises(SurgeryError, match="already applied"):
        with planned(model, "skip:2"):
            pass
    assert model.config.num_hidden_layers == 8


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox", "bert"])
def test_hidden_states_under_a_plan_have_one_entry_per_step(arch):
    from surgery.apply.inmemory import forward_with_hidden_states

    model = build_tiny(arch)
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(1))
    sequence = [0, 1, (2, 3, 4), (2, 3, 4), 5, 7]
    with planned(model, "parallel:2-4x2,skip:6"), torch.no_grad():
        hidden = forward_with_hidden_states(model, input_ids=ids).hidden_states
    assert len(hidden) == len(sequence) + 1
    expected = reference_output(build_tiny(arch), arch, ids, sequence[:4], final=False)
    assert (hidden[4] - expected).abs().max().item() <= 1e-4
    with torch.no_grad():
        plain = forward_with_hidden_states(model, input_ids=ids).hidden_states
    assert len(plain) == 9
