"""``output_hidden_states`` follows the executed sequence: one entry per step, plus the embeddings."""

from __future__ import annotations

import pytest
import torch
from reference import reference_output
from tiny_models import build_tiny
from transformers import AutoModel, AutoModelForCausalLM

from surgery.apply.materialize import apply_plan


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "bert"])
def test_hidden_states_per_step(arch, tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints[arch]), "parallel:2-4x2,skip:6", tmp_path / "out")
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    ids = torch.randint(0, 96, (1, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    steps = [0, 1, (2, 3, 4), (2, 3, 4), 5, 7]
    assert len(out.hidden_states) == len(steps) + 1
    source = build_tiny(arch)
    embed = source.get_input_embeddings()(ids) if arch != "bert" else source.embeddings(input_ids=ids)
    assert torch.allclose(out.hidden_states[0], embed, atol=1e-6)
    # the hidden state after step 3 (the first parallel block): reference over the prefix, no final norm
    prefix = reference_output(source, arch, ids, steps[:3], final=False)
    assert (out.hidden_states[3] - prefix).abs().max().item() <= 1e-4
    if arch == "bert":
        assert torch.equal(out.hidden_states[-1], out.last_hidden_state)
    else:  # transformers' convention: the last entry has the final norm applied
        norm = source.model.norm if arch == "llama" else source.gpt_neox.final_layer_norm
        last = norm(reference_output(source, arch, ids, steps, final=False))
        assert (out.hidden_states[-1] - last).abs().max().item() <= 1e-4
    plain = model(input_ids=ids)
    assert getattr(plain, "hidden_states", None) is None
