"""Fast where the README promises fast: ``plan show`` on a cached checkpoint, GGUF plan errors, GGUF headers.

* ``plan show`` on a local checkpoint whose detection is cached imports neither torch nor transformers (checked in
  a fresh interpreter, which is what a user's shell starts) and prints what the full detection path prints.
* A plan that does not fit a ``.gguf`` input is refused from the file's metadata, before any dequantizing.
* The GGUF header reader keeps scalar metadata, steps over arrays, and refuses truncated or forged headers.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGUFEndian, GGUFReader, GGUFWriter

from surgery.apply.materialize import apply_plan
from surgery.architectures import cache as detection_cache
from surgery.cli.main import main as cli
from surgery.errors import SurgeryError
from surgery.io.gguf_header import read_gguf_metadata
from surgery.io.model_ref import ModelRef

PROBE = """
import json, sys
from surgery.cli.main import main
try:
    main(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(name for name in ("torch", "transformers", "numpy", "gguf") if name in sys.modules)
    print("HEAVY=" + json.dumps(heavy))
"""


def _plan_show(*args: str) -> str:
    result = CliRunner().invoke(cli, ["plan", "show", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _fresh_plan_show(*args: str, cache_dir: Path) -> tuple[str, list[str]]:
    env = {**os.environ, "SURGERY_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "plan", "show", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    text, _, heavy = proc.stdout.rpartition("HEAVY=")
    return text, json.loads(heavy)


@pytest.mark.parametrize("plan", ["skip:2-3", "reverse:1-6", "parallel:2-5"])
def test_cached_plan_show_imports_neither_torch_nor_transformers(plan, tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    model = str(tiny_checkpoints["llama"])
    full = _plan_show("--plan", plan, model)  # first run: detection on meta, stored in the cache
    raw = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    assert detection_cache.load(raw) is not None, "plan show must store its detection"
    text, heavy = _fresh_plan_show("--plan", plan, model, cache_dir=tmp_path)
    assert heavy == [], f"plan show on a cached checkpoint imported {heavy}"
    assert text == full  # the cached answer is the detection path's answer, line for line
    assert "layers:    model.layers" in text and "per-layer: num_hidden_layers: 8 ->" in text


def test_cached_plan_show_json_agrees(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    model = str(tiny_checkpoints["llama"])
    full = json.loads(_plan_show("--json", "--plan", "skip:0,skip:7", model))
    text, heavy = _fresh_plan_show("--json", "--plan", "skip:0,skip:7", model, cache_dir=tmp_path)
    assert heavy == [] and json.loads(text) == full
    assert full["per_layer_config"] == {"num_hidden_layers": [8, 6]}


def test_per_layer_keys_follow_layers_from_the_file_alone(tiny_checkpoints, tmp_path, monkeypatch):
    """A config with ``layer_types`` stored as a list: the cached answer re-indexes it exactly as detection does."""
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "typed"
    folder.mkdir()
    for name in ("model.safetensors", "generation_config.json"):
        (folder / name).symlink_to(tiny_checkpoints["llama"] / name)
    raw = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    raw["layer_types"] = ["full_attention"] * 6 + ["sliding_attention"] * 2
    (folder / "config.json").write_text(json.dumps(raw))
    full = _plan_show("--plan", "reverse:0-7", str(folder))
    text, heavy = _fresh_plan_show("--plan", "reverse:0-7", str(folder), cache_dir=tmp_path)
    assert detection_cache.plain_from_raw(detection_cache.load(raw), raw) and heavy == []
    assert text == full
    assert 'layer_types: ["full_attention" x6, "sliding_attention" x2] -> ' in text


def test_poisoned_cache_entry_is_not_trusted_by_plan_show(tiny_checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path))
    model = str(tiny_checkpoints["llama"])
    full = _plan_show("--plan", "skip:2-3", model)
    raw = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    entry = detection_cache._path(raw)
    data = json.loads(entry.read_text())
    data["layer_path"] = "evil.path"  # not ending with layer_list: inconsistent, so recomputed
    entry.write_text(json.dumps(data))
    assert _plan_show("--plan", "skip:2-3", model) == full


def _write_gguf(path: Path, *, block_count: int | None = 4, endian: GGUFEndian = GGUFEndian.LITTLE) -> Path:
    writer = GGUFWriter(str(path), "llama", endianess=endian)
    if block_count is not None:
        writer.add_block_count(block_count)
    writer.add_name("tiny")
    writer.add_string("general.source.huggingface.repository", "org/model")
    writer.add_token_list([f"t{i}" for i in range(300)])
    writer.add_array("test.nested", [[1, 2], [3]])
    writer.add_float32("test.f", 1.5)
    writer.add_bool("test.b", True)
    writer.add_tensor("token_embd.weight", np.ones((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_gguf_header_agrees_with_gguf_reader(endian, tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", endian=endian)
    ours = read_gguf_metadata(path)
    theirs = {
        key: field.contents() for key, field in GGUFReader(str(path)).fields.items() if not key.startswith("GGUF.")
    }
    scalars = {key: value for key, value in theirs.items() if not isinstance(value, list)}
    assert ours == scalars
    assert ours["llama.block_count"] == 4 and ours["general.source.huggingface.repository"] == "org/model"
    assert "tokenizer.ggml.tokens" not in ours and "test.nested" not in ours
    assert ModelRef.parse(str(path)).read_config() == {"model_type": "llama", "num_hidden_layers": 4}


def _header(*parts: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + b"".join(parts)


def _key(name: bytes) -> bytes:
    return struct.pack("<Q", len(name)) + name


HOSTILE_HEADERS = {
    "empty": b"",
    "no magic": b"GGML" + bytes(40),
    "truncated version": b"GGUF\x03",
    "version 1": b"GGUF" + struct.pack("<IIIQ", 1, 0, 1, 0),
    "kv count beyond the file": b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 60),
    "key length beyond the file": _header(struct.pack("<Q", 1 << 62)),
    "string value beyond the file": _header(_key(b"k"), struct.pack("<IQ", 8, 1 << 40)),
    "array count beyond the file": _header(_key(b"k"), struct.pack("<IIQ", 9, 8, 1 << 58)),
    "numeric array beyond the file": _header(_key(b"k"), struct.pack("<IIQ", 9, 12, 1 << 58)),
    "unknown value type": _header(_key(b"k"), struct.pack("<I", 99)),
    "arrays nested too deep": _header(_key(b"k"), struct.pack("<IIQ", 9, 9, 1) * 10 + bytes(64)),
    "truncated scalar": _header(_key(b"k"), struct.pack("<I", 10), b"\x01"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_HEADERS))
def test_hostile_gguf_headers_are_one_clear_error(name, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(HOSTILE_HEADERS[name])
    started = time.monotonic()
    with pytest.raises(SurgeryError, match=r"^cannot read GGUF file .*bad\.gguf: "):
        read_gguf_metadata(path)
    assert time.monotonic() - started < 1.0
    result = CliRunner().invoke(cli, ["plan", "show", "--plan", "skip:1", str(path)])
    assert result.exit_code == 2 and result.stderr.startswith("error: cannot read GGUF file"), result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_gguf_without_block_count_is_refused(tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", block_count=None)
    with pytest.raises(SurgeryError, match="block_count"):
        ModelRef.parse(str(path)).read_config()


@pytest.mark.parametrize("plan", ["skip:3-9", "parallel:2-4x0", "sequence:0 1 2 3 4", "reverse:9-12"])
def test_gguf_plan_error_comes_before_dequantizing(plan, tmp_path, monkeypatch):
    """The plan is resolved against the file's ``block_count``; the dequantizer is never reached."""
    import surgery.io.source as source

    def never(*args, **kwargs):
        raise AssertionError("dequantized before the plan was checked")

    monkeypatch.setattr(source, "_from_gguf", never)
    path = _write_gguf(tmp_path / "m.gguf")
    with pytest.raises(SurgeryError) as caught:
        apply_plan(str(path), plan, tmp_path / "out")
    assert "dequantized" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(AssertionError, match="dequantized before"):  # a fitting plan does reach it
        apply_plan(str(path), "skip:1", tmp_path / "out")


@pytest.mark.integration
def test_real_gguf_plan_error_is_instant(smollm2_gguf_path, tmp_path):
    """The issue's case: ``skip:13-35`` on the 30-layer SmolLM2 GGUF took 32.6 s of dequantizing to refuse."""
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["apply", "--plan", "skip:13-35", str(smollm2_gguf_path), str(tmp_path / "o")])
    elapsed = time.monotonic() - started
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == "error: layer index 35 out of range in skip:13-35: this model has 30 layers (0-29)"
    assert elapsed < 5, f"the plan error took {elapsed:.1f} s"
    assert not (tmp_path / "o").exists()


@pytest.mark.integration
def test_real_gguf_metadata_matches_gguf_reader(smollm2_gguf_path):
    ours = read_gguf_metadata(smollm2_gguf_path)
    fields = GGUFReader(str(smollm2_gguf_path)).fields
    for key, value in ours.items():
        assert fields[key].contents() == pytest.approx(value), key
    assert ours["general.architecture"] == "llama" and ours["llama.block_count"] == 30


def test_canonical_of_a_huge_loop_is_not_expanded():
    """A sequence entry looped 10**9 times (built without the parser's bounds) printed in milliseconds, not 11 min."""
    from surgery.plan import LayerPlan, SequenceEntry

    started = time.monotonic()
    plan = LayerPlan(sequence=(SequenceEntry((0,), loops=10**9), SequenceEntry((1, 2), loops=10**9)))
    assert plan.canonical == "sequence:0x1000000000 [1 2]x1000000000"
    assert time.monotonic() - started < 1.0
