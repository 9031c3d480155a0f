"""Outputs load in a fresh Python process in which importing this package fails."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from reference import EXPECTED_SEQUENCES, reference_output
from tiny_models import build_tiny

from surgery.apply.materialize import ApplyOptions, apply_plan

pytestmark = pytest.mark.system  # fresh interpreters that import torch and transformers

CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["surgery"] = None  # any import of this package now raises ImportError
    try:
        import surgery  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("surgery was importable")
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    path, arch, ids_file, out_file = sys.argv[1:]
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    model = auto.from_pretrained(path, trust_remote_code=True).eval()
    assert not any(name.startswith("surgery") for name in sys.modules if sys.modules[name] is not None)
    ids = torch.load(ids_file)
    with torch.no_grad():
        out = model(input_ids=ids)
    torch.save(out.last_hidden_state if arch == "bert" else out.logits, out_file)
    print(type(model).__name__)
    """
)


@pytest.mark.parametrize(
    ("arch", "plan", "options"),
    [
        ("llama", "skip:2-4", ApplyOptions()),
        ("llama-tied", "parallel:2-4x3", ApplyOptions()),
        ("qwen3", "repeat:2-5@3", ApplyOptions(tie_repeats=True)),
        ("gpt_neox", "reverse:1-2,parallel:4-5x2,skip:7", ApplyOptions()),
        ("bert", "parallel:2-5", ApplyOptions()),
    ],
)
def test_output_loads_without_this_package(arch, plan, options, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    result = apply_plan(str(tiny_checkpoints[arch]), plan, out, options)
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(3))
    torch.save(ids, tmp_path / "ids.pt")
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), arch, str(tmp_path / "ids.pt"), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    expected_class = ("SurgeryModel" if arch == "bert" else "SurgeryForCausalLM") if result.custom_class else None
    if expected_class:
        assert child.stdout.strip() == expected_class
    sequence = EXPECTED_SEQUENCES.get(plan, [0, 1, 3, 3, 3, 3, 6, 7])
    expected = reference_output(build_tiny(arch), arch, ids, sequence)
    assert (torch.load(tmp_path / "y.pt") - expected).abs().max().item() <= 1e-4
