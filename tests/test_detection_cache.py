"""Detection results are cached per config.json: a second plain apply imports neither torch nor transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from surgery.architectures import cache as detection_cache

APPLY = """
import json, sys
from surgery.apply.materialize import apply_plan
apply_plan(sys.argv[1], "skip:2-3", sys.argv[2])
print(json.dumps({"torch": "torch" in sys.modules, "transformers": "transformers" in sys.modules}))
"""


def _apply(source, out, cache) -> dict:
    env = {"SURGERY_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", APPLY, str(source), str(out)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.system  # two fresh interpreters, the first importing torch and transformers
def test_second_plain_apply_skips_torch_and_transformers(tiny_checkpoints, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = _apply(tiny_checkpoints["llama"], tmp_path / "a", cache)
    assert first == {"torch": True, "transformers": True}  # detection built the model on meta
    files = list((cache / "detect").glob("*.json"))
    assert len(files) == 1
    second = _apply(tiny_checkpoints["llama"], tmp_path / "b", cache)
    assert second == {"torch": False, "transformers": False}
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(p.name for p in (tmp_path / "b").iterdir())
    # a damaged cache entry is recomputed, not trusted
    files[0].write_text("{not json")
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(cache))
    raw = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    assert detection_cache.load(raw) is None
    assert _apply(tiny_checkpoints["llama"], tmp_path / "c", cache)["transformers"] is True
    assert detection_cache.load(raw) is not None


def test_only_simple_architectures_skip_transformers(tiny_checkpoints):
    """Qwen2's layer_types derive from max_window_layers (a structural key): such configs always take the full
    path; a plain Llama config with identical layers may be written from the file alone."""
    from transformers import AutoConfig

    from surgery.architectures.cache import plain_from_raw as _plain_from_raw
    from surgery.architectures.detect import detect

    for arch, simple in (("llama", True), ("qwen2", False)):
        raw = json.loads((tiny_checkpoints[arch] / "config.json").read_text())
        assert _plain_from_raw(detect(AutoConfig.from_pretrained(tiny_checkpoints[arch])), raw) is simple
