"""Shared fixtures: tiny source checkpoints saved once per session."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Before transformers is imported: keep trust_remote_code module copies out of the user's cache, stay offline.
os.environ.setdefault("HF_MODULES_CACHE", tempfile.mkdtemp(prefix="surgery-hf-modules-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402
from tiny_models import TINY, save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Every tiny architecture saved as a safetensors checkpoint directory."""
    root = tmp_path_factory.mktemp("tiny-sources")
    return {name: save_tiny(name, root / name) for name in TINY}
