"""Checkpoints whose config lies about the layers, special files where weights or configs belong, and a
poisoned detection cache: refused (or ignored and recomputed) by every command, never a hang, never a broken
model written with exit 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from surgery.apply.materialize import apply_plan
from surgery.architectures import cache as detection_cache
from surgery.architectures.integrity import check_layer_numbering, group_layer_tensors, numbered_lists
from surgery.architectures.loading import check_loadable, check_stored_layers
from surgery.errors import SurgeryError
from surgery.fileio import open_regular
from surgery.io.model_ref import ModelRef
from surgery.io.safetensors_stream import index_checkpoint

SURGERY = [sys.executable, "-m", "surgery.cli"]
TINY_LAYERS = 8  # tests/tiny_models.py


def _invoke(args: list[str]):
    from click.testing import CliRunner

    from surgery.cli.main import main as cli

    cwd = os.getcwd()
    os.chdir(Path(__file__).parent.parent)
    try:
        return CliRunner().invoke(cli, args)
    finally:
        os.chdir(cwd)


def _one_line(result, *fragments: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _with_config(source: Path, target: Path, **values) -> Path:
    shutil.copytree(source, target)
    path = target / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))
    return target


def _commands(model: Path, tmp: Path, data: Path, texts: Path) -> dict[str, list[str]]:
    return {
        "apply": ["apply", "--quiet", "--plan", "skip:1", str(model), str(tmp / "o")],
        "similarity": ["similarity", str(model), "--data", str(texts), "--limit", "2", "--out", str(tmp / "o"), "-q"],
        "eval": ["eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(data), "--limit", "1"],
        "finetune": ["finetune", str(model), str(tmp / "o"), "--method", "full", "--data", str(data / "ft.jsonl")],
        "export": ["export", "onnx", str(model), str(tmp / "o")],
        "bench": ["bench", str(model), "--out", str(tmp / "o"), "--repeats", "1", "--warmup", "0"],
        "sweep": ["sweep", "recipes/paper/fig04_skip.yaml", "--model", str(model), "--out", str(tmp / "o")]
        + ["--data-dir", str(data), "--limit", "1"],
    }


# --- item 4: a config that lies about the layer count --------------------------------------------------------

LIES = {"more": TINY_LAYERS + 2, "fewer": TINY_LAYERS - 2, "absurd": 50000}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_lying_layer_count_is_refused_by_every_command_before_heavy_work(lie, tiny_checkpoints, inputs, tmp_path):
    count = LIES[lie]
    model = _with_config(tiny_checkpoints["llama"], tmp_path / "liar", num_hidden_layers=count)
    data, texts = inputs
    commands = _commands(model, tmp_path, data, texts)
    if count > 100:  # a plan that executes few of the claimed layers (plan limits refuse 49999 instances first)
        commands["apply"] = ["apply", "--quiet", "--plan", f"skip:10-{count - 1}", str(model), str(tmp_path / "o")]
    for command, args in commands.items():
        started = time.monotonic()
        line = _one_line(_invoke(args), f"num_hidden_layers={count}", "layers 0-7")
        assert time.monotonic() - started < 60, (command, line)  # no 50000-layer model is ever built
        assert not (tmp_path / "o").exists(), command
    assert "model.layers.*" in line


def test_a_surgery_checkpoint_lying_about_its_stored_layers_is_refused(tiny_checkpoints, inputs, tmp_path):
    source = tmp_path / "par"
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4", source)
    assert check_loadable(str(source))[2] is True
    data, texts = inputs
    for stored in (5, 50000):  # apply stored 8 layers (0 1 2 3 4 2 3 4 ... as instances): claim others
        model = _with_config(source, tmp_path / f"liar{stored}", surgery_stored_layers=stored)
        for command in ("similarity", "export", "bench", "finetune"):
            _one_line(_invoke(_commands(model, tmp_path, data, texts)[command]), f"surgery_stored_layers={stored}")
            assert not (tmp_path / "o").exists()


def test_a_numbered_list_that_is_not_the_block_list_is_refused_before_loading(tiny_checkpoints, tmp_path):
    """Eight layers stored under another name: the cheap check passes, the architecture's block list does not
    (the precise half, :func:`group_layer_tensors`, the same as apply's), before any weight loads."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "renamed"
    shutil.copytree(tiny_checkpoints["llama"], model)
    tensors = load_file(model / "model.safetensors")
    save_file({k.replace("model.layers.", "model.blocks."): v for k, v in tensors.items()}, model / "model.safetensors")
    ref, config, _ = check_loadable(str(model))  # cheap: some list holds layers 0-7
    from surgery.architectures.specs import arch_for_config

    with pytest.raises(SurgeryError, match="no tensors for layer"):
        check_stored_layers(ref, config, arch_for_config(config))
    result = _invoke(["export", "onnx", str(model), str(tmp_path / "o")])
    _one_line(result, "no tensors for layer")
    applied = _invoke(["apply", "--plan", "skip:1", str(model), str(tmp_path / "o")])
    _one_line(applied, "no tensors for layer")


def test_valid_checkpoints_pass_the_layer_checks(tiny_checkpoints, tmp_path):
    from surgery.architectures.specs import arch_for_config

    for path in tiny_checkpoints.values():
        ref, config, _ = check_loadable(str(path))
        check_stored_layers(ref, config, arch_for_config(config))
    for plan, tie in (("parallel:2-4", False), ("repeat:2-4@3", True)):
        out = tmp_path / plan.replace(":", "_").replace("@", "_")
        from surgery.apply.materialize import ApplyOptions

        apply_plan(str(tiny_checkpoints["llama"]), plan, out, ApplyOptions(tie_repeats=tie))
        ref, config, _ = check_loadable(str(out))
        check_stored_layers(ref, config, arch_for_config(config))


def test_layer_numbering_is_read_from_names_alone():
    names = ["model.layers.0.mlp.experts.7.w", "model.layers.1.x", "h.0.attn", "h.1.attn", "model.norm.weight"]
    lists = numbered_lists(names)
    assert lists["model.layers."] == {0, 1} and lists["model.layers.0.mlp.experts."] == {7} and lists["h."] == {0, 1}
    huge = "model.layers." + "9" * 5000 + ".x"  # int() of 5000 digits raises ValueError: never attempted
    assert numbered_lists([huge]) == {}


def test_a_tensor_numbered_beyond_any_int_is_one_error(tiny_checkpoints):
    from surgery.architectures.specs import arch_for_config
    from surgery.io.safetensors_stream import TensorRecord

    records = index_checkpoint([tiny_checkpoints["llama"] / "model.safetensors"])
    some = next(iter(records.values()))
    name = "model.layers." + "9" * 5000 + ".mlp.up_proj.weight"
    records[name] = TensorRecord(name, some.file, some.dtype, some.shape, some.offset, some.nbytes)
    config = json.loads((tiny_checkpoints["llama"] / "config.json").read_text())
    with pytest.raises(SurgeryError, match=r"names layer 999999999999\.\.\., but the config has 8 layers"):
        group_layer_tensors(records, arch_for_config(config), TINY_LAYERS)
    with pytest.raises(SurgeryError, match="says num_hidden_layers=9"):
        check_layer_numbering(records, 9, "M", "num_hidden_layers")


def test_a_config_whose_vocab_disagrees_with_the_embeddings_is_refused_everywhere(tiny_checkpoints, inputs, tmp_path):
    model = _with_config(tiny_checkpoints["llama"], tmp_path / "vocab", vocab_size=50000)
    data, texts = inputs
    for command in ("apply", "similarity", "export", "finetune", "bench"):
        _one_line(_invoke(_commands(model, tmp_path, data, texts)[command]), "vocab_size=50000")


# --- item 7: special files where a weight or config file belongs ----------------------------------------------


def _special(kind: str, path: Path) -> None:
    path.unlink(missing_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "dir":
        path.mkdir()


SPECIAL_CASES = [
    ("fifo", "model.safetensors"),
    ("dev-zero", "model.safetensors"),
    ("fifo", "config.json"),
    ("dev-zero", "config.json"),
    ("fifo", "tokenizer_config.json"),
    ("fifo", "generation_config.json"),
    ("dev-zero", "tokenizer.json"),
    ("fifo", "extra.safetensors"),
]


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    root = Path(__file__).parent.parent
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*SURGERY, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=root)


@pytest.mark.parametrize(("kind", "name"), SPECIAL_CASES)
def test_a_special_file_in_a_model_folder_never_hangs_a_command(kind, name, tiny_checkpoints, inputs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoints["llama"], model)
    _special(kind, model / name)
    data, texts = inputs
    shown = "a named pipe (FIFO)" if kind == "fifo" else "a character device"
    for command, args in _commands(model, tmp_path, data, texts).items():
        _one_line(_invoke(args), f"{model / name} is {shown}, not a regular file")
        assert not (tmp_path / "o").exists(), command


@pytest.mark.parametrize("command", ["apply", "bench"])
def test_a_fifo_named_model_safetensors_is_one_line_in_a_fresh_process(command, tiny_checkpoints, inputs, tmp_path):
    """The issue's case end to end (a hang would time out the subprocess and fail the test)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoints["llama"], model)
    _special("fifo", model / "model.safetensors")
    data, texts = inputs
    result = _run(_commands(model, tmp_path, data, texts)[command], timeout=120)
    assert result.returncode == 2 and "named pipe (FIFO)" in result.stderr and "Traceback" not in result.stderr


def test_a_special_shard_or_index_is_refused(tiny_checkpoints, tmp_path):
    """A sharded checkpoint whose index or a shard it names is a FIFO: refused, never opened for reading."""
    model = tmp_path / "sharded"
    shutil.copytree(tiny_checkpoints["llama"], model)
    with safe_open(model / "model.safetensors", "pt") as handle:
        names = list(handle.keys())
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model-00001-of-00002.safetensors")}
    index["weight_map"][names[0]] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    os.mkfifo(model / "model-00002-of-00002.safetensors")
    with pytest.raises(SurgeryError, match="named pipe"):
        ModelRef.parse(str(model))
    with pytest.raises(SurgeryError, match="named pipe"):
        apply_plan(str(model), "skip:1", tmp_path / "o")
    (model / "model-00002-of-00002.safetensors").unlink()
    (model / "model.safetensors.index.json").unlink()
    os.mkfifo(model / "model.safetensors.index.json")
    with pytest.raises(SurgeryError, match="named pipe"):
        check_loadable(str(model))


def test_a_special_gguf_or_side_file_is_refused(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(SurgeryError, match="named pipe"):
        ModelRef.parse(str(fifo))
    real = tmp_path / "real.gguf"
    real.write_bytes(b"GGUF")
    os.mkfifo(tmp_path / "tokenizer_config.json")  # AutoTokenizer reads it next to the GGUF file
    with pytest.raises(SurgeryError, match="tokenizer_config.json is a named pipe"):
        ModelRef.parse(str(real))


def test_open_regular_refuses_without_blocking(tmp_path):
    fifo, regular, link = tmp_path / "fifo", tmp_path / "file", tmp_path / "link"
    os.mkfifo(fifo)
    regular.write_bytes(b"x" * 10)
    link.symlink_to(regular)
    started = time.monotonic()
    for path, kind in ((fifo, "named pipe"), (Path("/dev/zero"), "character device"), (tmp_path, "directory")):
        with pytest.raises(OSError, match=kind):
            open_regular(path)
    assert time.monotonic() - started < 5
    with open_regular(link) as handle:
        assert handle.read() == b"x" * 10
    with pytest.raises(OSError, match="symbolic link"):
        open_regular(link, follow_symlinks=False)
    with pytest.raises(OSError, match="more than the 5 allowed"):
        open_regular(regular, max_bytes=5)


# --- items 7 and 8: the detection cache ------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SURGERY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _entry(tiny_checkpoints, tmp_path) -> tuple[dict, Path, dict]:
    """A fresh, valid cache entry for the tiny Llama: (raw config, entry path, entry JSON)."""
    source = tiny_checkpoints["llama"]
    apply_plan(str(source), "skip:2-3", tmp_path / "first")
    raw = json.loads((source / "config.json").read_text())
    path = detection_cache._path(raw)
    assert path.is_file() and detection_cache.load(raw) is not None
    return raw, path, json.loads(path.read_text())


def _applied_config(tiny_checkpoints, out: Path) -> dict:
    apply_plan(str(tiny_checkpoints["llama"]), "skip:2-3", out)
    return json.loads((out / "config.json").read_text())


ENTRY_FILES = {
    "fifo": lambda path: os.mkfifo(path),
    "dev-zero": lambda path: path.symlink_to("/dev/zero"),
    "dev-urandom": lambda path: path.symlink_to("/dev/urandom"),
    "dir": lambda path: path.mkdir(),
    "huge": lambda path: path.write_bytes(b" " * (detection_cache.MAX_ENTRY_BYTES + 1)),
}


@pytest.mark.parametrize("kind", [*ENTRY_FILES, "symlink-to-valid"])
def test_a_special_cache_entry_is_ignored_and_recomputed(kind, cache, tiny_checkpoints, tmp_path):
    raw, path, valid = _entry(tiny_checkpoints, tmp_path)
    path.unlink()
    if kind == "symlink-to-valid":  # even a correct entry behind a link is not read (O_NOFOLLOW)
        elsewhere = tmp_path / "elsewhere.json"
        elsewhere.write_text(json.dumps(valid))
        path.symlink_to(elsewhere)
    else:
        ENTRY_FILES[kind](path)
    started = time.monotonic()
    assert detection_cache.load(raw) is None
    assert time.monotonic() - started < 5
    config = _applied_config(tiny_checkpoints, tmp_path / "out")
    assert config["num_hidden_layers"] == TINY_LAYERS - 2 and config["num_attention_heads"] == 4
    if kind != "dir":  # recomputed and rewritten as a plain file
        assert path.is_file() and not path.is_symlink() and detection_cache.load(raw) is not None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_cache_entry_of_another_user_is_not_trusted(cache, tiny_checkpoints, tmp_path):
    raw, path, _ = _entry(tiny_checkpoints, tmp_path)
    os.chown(path, 12345, 12345)
    assert detection_cache.load(raw) is None


POISON = {
    "count_key": {"count_key": "num_attention_heads"},
    "count_key_absent": {"count_key": "n_layer"},
    "layer_list": {"layer_list": "layers; import os", "layer_path": "model.layers; import os"},
    "layer_path": {"layer_path": "model.other"},
    "signatures_short": {"signatures": ["x"] * 3},
    "signatures_types": {"signatures": [1] * TINY_LAYERS},
    "per_layer_not_per_layer": {"per_layer_keys": ["eos_token_id"]},
    "per_layer_private": {"per_layer_keys": ["_name_or_path"]},
    "model_type": {"model_type": "gpt2"},
    "generative": {"generative": "yes"},
    "lora_targets": {"lora_targets": [["attn", "q_proj"]]},
    "structural": {"structural_keys": ["not_a_structural_key"]},
    "index_keys": {"index_keys": ["num_hidden_layers"]},
    "missing_field": {"count_key": None},
    "extra_field": {"evil": 1},
}


@pytest.mark.parametrize("poison", list(POISON))
def test_a_poisoned_cache_entry_never_yields_a_broken_model(poison, cache, tiny_checkpoints, tmp_path):
    raw, path, valid = _entry(tiny_checkpoints, tmp_path)
    entry = {**valid, **POISON[poison]}
    if poison == "missing_field":
        del entry["count_key"]
    path.write_text(json.dumps(entry))
    assert detection_cache.load(raw) is None
    config = _applied_config(tiny_checkpoints, tmp_path / "out")
    assert config["num_hidden_layers"] == TINY_LAYERS - 2 and config["num_attention_heads"] == 4
    assert json.loads(path.read_text()) == valid  # recomputed and rewritten


def test_poison_that_drops_a_per_layer_or_structural_key_is_caught(cache, tiny_checkpoints, tmp_path):
    """Entries that would let apply skip rewriting a per-layer list or a structural key (qwen2's
    max_window_layers) disagree with the config file they describe."""
    from surgery.architectures.detect import Detection

    raw, _, valid = _entry(tiny_checkpoints, tmp_path)
    fields = {key: detection_cache._tuples(value) for key, value in valid.items()}
    assert detection_cache.consistent(Detection(**fields), raw)
    listed = {**raw, "layer_types": ["full_attention"] * TINY_LAYERS}
    assert not detection_cache.consistent(Detection(**fields), listed)  # layer_types not among per_layer_keys
    structural = {**raw, "max_window_layers": 4}
    assert not detection_cache.consistent(Detection(**fields), structural)
    indexed = {**raw, "mlp_only_layers": [1]}
    assert not detection_cache.consistent(Detection(**fields), indexed)
