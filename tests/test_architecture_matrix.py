"""The architecture coverage matrix (tests/arch_matrix.py) on tiny random models, no downloads.

Default tier: the common families, every op against the reference, KV cache, and one fresh process (without
this package) that loads every family's surgery-class output. Slow tier: every model_type transformers ships,
checked against the committed ``docs/architectures.md`` (regenerate it with benchmarks/architecture_matrix.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from arch_matrix import OPS, check_fresh_process, run_architecture
from tiny_models import MATRIX_COMMON, matrix_model_types

pytestmark = pytest.mark.system  # the 22-family architecture matrix and a fresh process loading it

ROOT = Path(__file__).resolve().parent.parent
# The tiny configs of qwen2, gemma2 and gemma3_text put full and sliding layers in one parallel group: each member
# gets its own mask, and the ops must pass like any other.


@pytest.fixture(scope="module")
def common_results(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("matrix")
    fresh: list = []
    try:
        results = {model_type: run_architecture(model_type, work, fresh=fresh) for model_type in MATRIX_COMMON}
        check_fresh_process(fresh, work)
    finally:
        torch.set_num_threads(threads)
    return results


@pytest.mark.parametrize("model_type", MATRIX_COMMON)
def test_common_family_passes_every_op(model_type, common_results):
    result = common_results[model_type]
    assert result.refused is None
    for op in OPS:
        status = result.ops[op]
        assert status == "pass", f"{op}: {status}"
    if result.generative:
        assert result.cache and all(status == "pass" for status in result.cache.values()), result.cache
    assert result.fresh == {"tied repeat": "pass"}


def test_moe_layers_move_repeat_and_average_like_dense_ones(common_results):
    for model_type in ("mixtral", "qwen2_moe", "qwen3_moe"):
        assert all(status == "pass" for status in common_results[model_type].ops.values()), model_type


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| `")]


@pytest.mark.slow
def test_every_architecture_matches_the_committed_table(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from architecture_matrix import render

    fresh: list = []
    results = [
        run_architecture(t, tmp_path, fresh=fresh, fresh_ops=("reverse", "looped parallel"), op_timeout=20)
        for t in matrix_model_types()
    ]
    check_fresh_process(fresh, tmp_path)
    committed = (ROOT / "docs" / "architectures.md").read_text()
    assert _table_rows(render(results, 0.0, "")) == _table_rows(committed)
