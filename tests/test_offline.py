"""Without a network: one clear line, no retry noise, the local cache still used; HF_HUB_OFFLINE respected."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from surgery.io import hub


def _offline_env(tmp_path) -> dict[str, str]:
    """No network as the libraries see it: the Hub endpoint refuses connections; nothing in the HF cache."""
    env = {k: v for k, v in os.environ.items() if k not in hub.OFFLINE_VARIABLES}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf-home"), PYTHONWARNINGS="ignore")
    return env


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["similarity", "{model}", "--limit", "2"], "LAMBADA (EleutherAI/lambada_openai) is not in the local cache"),
        (["eval", "{model}", "--tasks", "arc_easy"], "allenai/ai2_arc is not in the local cache"),
        (["eval", "org/some-model", "--tasks", "arc_easy"], "not in the local cache"),
        (["apply", "--plan", "skip:1", "org/some-model", "{out}"], "model not found: 'org/some-model'"),
    ],
)
def test_no_network_is_one_line_without_retries(args, fragment, tiny_checkpoints, tmp_path):
    args = [a.format(model=tiny_checkpoints["llama"], out=tmp_path / "out") for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "surgery.cli", *args], capture_output=True, text=True, env=_offline_env(tmp_path)
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[0] == "note: the Hugging Face Hub is not reachable; using the local cache only"
    assert len(lines) == 2 and lines[1].startswith("error: ") and fragment in lines[1], result.stderr
    assert "Retrying" not in result.stderr and "MaxRetryError" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_hub_switches_the_libraries_offline(monkeypatch):
    monkeypatch.setattr(hub, "_state", {})
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert hub.hub_reachable(timeout=1.0) is False
    assert hub.prepare_hub() is True
    assert all(os.environ[name] == "1" for name in hub.OFFLINE_VARIABLES)
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_hf_hub_offline_is_respected_without_probing(monkeypatch):
    monkeypatch.setattr(hub, "_state", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0: pytest.fail("probed the network although offline"))
    assert hub.prepare_hub() is True


def test_dataset_in_cache_looks_in_both_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert not hub.dataset_in_cache("allenai/ai2_arc")
    (tmp_path / "hub" / "datasets--allenai--ai2_arc").mkdir(parents=True)
    assert hub.dataset_in_cache("allenai/ai2_arc")
    (tmp_path / "datasets" / "EleutherAI___lambada_openai").mkdir(parents=True)
    assert hub.dataset_in_cache("EleutherAI/lambada_openai")
