"""The command line: bad input gets one clear line, a non-zero exit, and no half-written checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from surgery.cli.main import main

SURGERY = [sys.executable, "-m", "surgery.cli"]


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*SURGERY, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert fragment in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        ("skip:3-", "malformed plan op"),
        ("drop:1-2", "unknown op"),
        ("skip:1-3,reverse:3-4", "overlapping ranges"),
        ("skip:2-40", "out of range"),
        ("loop:1-2x0", "K must be >= 1"),
        ("parallel:4-2", "empty parallel block"),
    ],
)
def test_bad_plans(plan, fragment, tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    result = _run("apply", "--plan", plan, str(tiny_checkpoints["llama"]), str(out))
    _assert_one_line_error(result, fragment)
    assert not out.exists()
    assert not any(tmp_path.iterdir())  # no temporary directory left either


def test_missing_model_path(tmp_path):
    _assert_one_line_error(_run("apply", "--plan", "skip:1", str(tmp_path / "nope"), str(tmp_path / "o")), "not found")
    _assert_one_line_error(_run("apply", "--plan", "skip:1", "./nope.gguf", str(tmp_path / "o")), "not found")


def test_unsupported_architecture(tmp_path):
    model = tmp_path / "t5"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "t5", "num_layers": 2}))
    (model / "model.safetensors").write_bytes(b"")
    result = _run("apply", "--plan", "skip:1", str(model), str(tmp_path / "out"))
    _assert_one_line_error(result, "unsupported architecture model_type='t5': encoder-decoder model")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = _run("apply", "--plan", "skip:1", str(tiny_checkpoints["llama"]), str(out))
    _assert_one_line_error(result, "exists and is not empty")
    assert (out / "keep.txt").read_text() == "mine"
    result = _run("apply", "--quiet", "--overwrite", "--plan", "skip:1", str(tiny_checkpoints["llama"]), str(out))
    assert result.returncode == 0, result.stderr
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()


def test_output_cannot_be_the_source(tiny_checkpoints):
    source = tiny_checkpoints["llama"]
    result = _run("apply", "--overwrite", "--plan", "skip:1", str(source), str(source))
    _assert_one_line_error(result, "is the source model")
    assert (source / "model.safetensors").is_file()


def test_pickle_only_weights_refused_unless_allowed(tmp_path):
    import torch
    from tiny_models import build_tiny

    model = build_tiny("llama")
    source = tmp_path / "pickled"
    model.save_pretrained(source, safe_serialization=False)
    assert not list(source.glob("*.safetensors"))
    result = _run("apply", "--plan", "skip:1", str(source), str(tmp_path / "out"))
    _assert_one_line_error(result, "--allow-pickle")
    assert not (tmp_path / "out").exists()
    ok = _run("apply", "-q", "--allow-pickle", "--plan", "skip:1", str(source), str(tmp_path / "out"))
    assert ok.returncode == 0, ok.stderr
    from safetensors.torch import load_file

    written = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(written["model.layers.1.mlp.up_proj.weight"], model.model.layers[2].mlp.up_proj.weight)


def test_debug_shows_traceback(tmp_path):
    result = _run("--debug", "apply", "--plan", "drop:1", str(tmp_path), str(tmp_path / "o"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_apply_prints_summary(tiny_checkpoints, tmp_path):
    result = CliRunner().invoke(
        main, ["apply", "--plan", "parallel:2-4x2", str(tiny_checkpoints["llama"]), str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "layers: 8 source -> 11 executed, 11 stored" in result.output
    assert "executed sequence: 0-1 [2 3 4]x2 5-7" in result.output


def test_plan_show_reads_only_the_config(tmp_path):
    model = tmp_path / "config-only"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 30}))
    result = CliRunner().invoke(main, ["plan", "show", "--plan", "shuffle:4-25@3", str(model)])
    assert result.exit_code == 0, result.output
    assert "source:    30 layers" in result.output
    result = CliRunner().invoke(main, ["plan", "show", "--json", "--plan", "skip:13-19", "--layers", "30"])
    payload = json.loads(result.output)
    assert payload["skipped"] == list(range(13, 20)) and payload["executed_layers"] == 23


def test_plan_show_errors_are_one_line(tmp_path):
    _assert_one_line_error(_run("plan", "show", "--plan", "skip:1-40", "--layers", "30"), "out of range")
    _assert_one_line_error(_run("plan", "show", "--plan", "skip:1"), "give either MODEL or --layers")
