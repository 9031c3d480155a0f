"""Hostile model folders and faults around the output directory: no code without consent, no data loss.

Plans and safetensors headers have their own hostile suites (test_hostile_plans.py, test_hostile_weights.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from surgery.apply.materialize import apply_plan
from surgery.cli.main import main as cli
from surgery.errors import SurgeryError
from surgery.io import output_dir

SURGERY = [sys.executable, "-m", "surgery.cli"]
EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("code ran")
from transformers import LlamaConfig as EvilConfig, LlamaForCausalLM as EvilModel
"""


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*SURGERY, *args], capture_output=True, text=True, env=env, timeout=timeout)


def _one_error_line(result, fragment: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def _hostile_copy(source: Path, target: Path, marker: Path, where: str) -> Path:
    """A copy of ``source`` whose config.json or tokenizer_config.json names a module that writes ``marker``."""
    shutil.copytree(source, target)
    (target / "evil.py").write_text(EVIL.format(marker=str(marker)))
    name = "config.json" if where == "config" else "tokenizer_config.json"
    path = target / name
    data = json.loads(path.read_text()) if path.is_file() else {}
    if where == "config":
        data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    else:
        data["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    path.write_text(json.dumps(data))
    return target


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("one small text\nanother small text\n")
    return path


@pytest.mark.parametrize("where", ["config", "tokenizer"])
def test_hostile_auto_map_never_runs_without_consent(where, tiny_checkpoints, tmp_path, texts):
    marker = tmp_path / "pwned"
    model = _hostile_copy(tiny_checkpoints["llama"], tmp_path / "hostile", marker, where)
    (tmp_path / "lambada").mkdir()
    (tmp_path / "lambada" / "lambada_test.jsonl").write_text(json.dumps({"text": "a small text"}) + "\n")
    before = set(tmp_path.rglob("*"))
    sim = _run("similarity", str(model), "--data", str(texts), "--limit", "2", "--out", str(tmp_path / "sim"), "-q")
    _one_error_line(sim, "--trust-remote-code")
    ev = _run("eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(tmp_path), "--limit", "1")
    _one_error_line(ev, "--trust-remote-code")
    glue = _run("glue", str(model), "--tasks", "rte", "--data-dir", str(tmp_path), "--output", str(tmp_path / "g.json"))
    _one_error_line(glue, "--trust-remote-code")
    assert not marker.exists()
    assert set(tmp_path.rglob("*")) == before  # no file created anywhere by the refused commands
    # apply reads weights and JSON only: it works, runs nothing, and does not carry the auto_map over
    out = tmp_path / "out"
    applied = _run("apply", "--quiet", "--plan", "skip:1", str(model), str(out))
    assert applied.returncode == 0, applied.stderr
    assert not marker.exists()
    assert "auto_map" not in json.loads((out / "config.json").read_text())


def test_surgery_output_code_is_trusted_only_when_byte_identical(tiny_checkpoints, tmp_path, texts):
    from surgery.io.model_ref import ModelRef, remote_code_policy

    out = tmp_path / "par"
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4", out)
    ref = ModelRef.parse(str(out))
    config = ref.read_config()
    assert remote_code_policy(ref, config, trust_remote_code=False) is True
    from surgery.architectures.loading import check_loadable

    assert check_loadable(str(out))[2] is True  # what every command passes as trust_remote_code
    # one changed byte in the shipped modeling file, or surgery.json claiming anything, is not trust
    marker = tmp_path / "pwned"
    modeling = out / "modeling_surgery.py"
    modeling.write_text(modeling.read_text() + f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('x')\n")
    with pytest.raises(SurgeryError, match="--trust-remote-code"):
        remote_code_policy(ref, config, trust_remote_code=False)
    bad = _run("similarity", str(out), "--data", str(texts), "--limit", "2", "--out", str(tmp_path / "s2"), "-q")
    _one_error_line(bad, "ships its own Python code")
    assert not marker.exists()
    # an extra auto_map entry naming another module is refused too
    tampered = dict(config, auto_map={**config["auto_map"], "AutoTokenizer": "other.Tokenizer"})
    modeling.write_text((Path(__file__).parent.parent / "surgery/modeling/modeling_surgery.py").read_text())
    assert remote_code_policy(ref, config, trust_remote_code=False) is True
    with pytest.raises(SurgeryError, match="other.Tokenizer"):
        remote_code_policy(ref, tampered, trust_remote_code=False)


def test_pickle_weights_need_consent_on_every_command(tiny_checkpoints, tmp_path, texts):
    import torch
    from safetensors.torch import load_file

    model = tmp_path / "pickled"
    model.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(tiny_checkpoints["llama"] / name, model / name)
    torch.save(load_file(tiny_checkpoints["llama"] / "model.safetensors"), model / "pytorch_model.bin")
    sim = _run("similarity", str(model), "--data", str(texts), "--limit", "1", "--out", str(tmp_path / "s"), "-q")
    _one_error_line(sim, "--allow-pickle")
    applied = _run("apply", "--plan", "skip:1", str(model), str(tmp_path / "out"))
    _one_error_line(applied, "--allow-pickle")
    assert not (tmp_path / "s").exists() and not (tmp_path / "out").exists()


# --- the output directory ------------------------------------------------------------------------------------


def test_overwrite_of_an_ancestor_or_descendant_of_the_source_is_refused(tiny_checkpoints, tmp_path):
    parent = tmp_path / "models"
    source = parent / "llama"
    shutil.copytree(tiny_checkpoints["llama"], source)
    files = sorted(p.name for p in source.iterdir())
    for out, fragment in ((parent, "contains the source model"), (source / "sub", "is inside the source model")):
        result = _run("apply", "--overwrite", "--plan", "skip:1", str(source), str(out))
        _one_error_line(result, fragment)
        assert sorted(p.name for p in source.iterdir()) == files
    _one_error_line(_run("apply", "--overwrite", "--plan", "skip:1", str(source), str(source)), "is the source model")
    assert sorted(p.name for p in source.iterdir()) == files


def test_a_held_lock_makes_a_second_apply_fail_clearly(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    with open(tmp_path / ".out.surgery-lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        result = _run("apply", "--plan", "skip:1", str(tiny_checkpoints["llama"]), str(out))
    _one_error_line(result, "another surgery run is writing")
    assert not out.exists()


def test_concurrent_applies_to_one_out_dir_one_wins(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    runs = [
        subprocess.Popen(
            [*SURGERY, "apply", "-q", "--plan", plan, str(tiny_checkpoints["llama"]), str(out)],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for plan in ("skip:1", "skip:2")
    ]
    codes = [run.wait(timeout=300) for run in runs]
    errors = [run.stderr.read() for run in runs]
    assert sorted(codes) == [0, 2], errors
    loser = errors[codes.index(2)].strip().splitlines()
    assert len(loser) == 1 and loser[0].startswith("error: ")
    assert "another surgery run" in loser[0] or "not empty" in loser[0]
    winner = ("skip:1", "skip:2")[codes.index(0)]
    assert json.loads((out / "surgery.json").read_text())["plan"]["canonical"] == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir, no lock file


def test_a_file_written_into_out_dir_during_the_run_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "model.safetensors").write_text("new")
    (out / "mine.txt").write_text("written meanwhile")
    with pytest.raises(SurgeryError, match="filled by another process"):
        output_dir._install(tmp, out, overwrite=False)
    assert (out / "mine.txt").read_text() == "written meanwhile"


def test_failed_final_rename_restores_the_previous_checkpoint(tmp_path, monkeypatch):
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    (out / "old.txt").write_text("old checkpoint")
    tmp.mkdir()
    real_rename = os.rename

    def failing(src, dst):
        if Path(src) == tmp:
            raise OSError("simulated rename failure")
        real_rename(src, dst)

    monkeypatch.setattr(output_dir.os, "rename", failing)
    with pytest.raises(OSError, match="simulated"):
        output_dir._install(tmp, out, overwrite=True)
    assert (out / "old.txt").read_text() == "old checkpoint"
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


def test_symlinked_out_dir_is_replaced_at_its_target_without_leftovers(tiny_checkpoints, tmp_path):
    target = tmp_path / "real"
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", target)
    link = tmp_path / "link"
    link.symlink_to(target)
    result = _run("apply", "-q", "--overwrite", "--plan", "skip:2", str(tiny_checkpoints["llama"]), str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and json.loads((link / "surgery.json").read_text())["plan"]["canonical"] == "skip:2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_sigterm_during_apply_leaves_nothing_behind(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, time
        import surgery.apply.materialize as m
        original = m.write_checkpoint_weights
        def slow(*args, **kwargs):
            paths = original(*args, **kwargs)
            print("weights written", flush=True)
            time.sleep(120)
            return paths
        m.write_checkpoint_weights = slow
        from surgery.cli.main import main
        sys.argv = ["surgery", "apply", "--plan", "skip:1", {str(tiny_checkpoints["llama"])!r}, {str(out)!r}]
        main()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "weights written"
    assert any(".surgery-tmp-" in p.name for p in tmp_path.iterdir())  # it really was mid-write
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    stderr = proc.stderr.read()
    assert code == 143 and stderr.strip().splitlines()[-1] == "error: terminated (SIGTERM)", stderr
    assert list(tmp_path.iterdir()) == []


def test_the_next_run_cleans_up_after_kill_9(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", out)
    # what a run killed between moving the old checkpoint aside and installing the new one leaves behind
    os.rename(out, tmp_path / ".out.old-deadbeef")
    (tmp_path / ".out.surgery-tmp-cafebabe").mkdir()
    (tmp_path / ".out.surgery-tmp-cafebabe" / "model.safetensors").write_bytes(b"partial")
    result = _run("apply", "-q", "--plan", "skip:2", str(tiny_checkpoints["llama"]), str(out))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and [line.split(":")[0] for line in lines] == ["note", "note", "error"]
    assert "exists and is not empty" in lines[-1]  # the old checkpoint is back, so without --overwrite: refused
    assert "restored the previous checkpoint" in result.stderr and "removed the temporary directory" in result.stderr
    assert json.loads((out / "surgery.json").read_text())["plan"]["canonical"] == "skip:1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    ("corrupt", "fragment"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]), "safetensors"),
        (
            lambda path: _rewrite_header(
                path, lambda h: h[next(iter(k for k in h if "layers.3." in k))].update(shape=[4096, 4096, 4096, 4096])
            ),
            "safetensors",
        ),
    ],
    ids=["truncated", "4TB-claim"],
)
def test_corrupt_shard_fails_fast_with_nothing_left(corrupt, fragment, tiny_checkpoints, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_checkpoints["llama"], source)
    corrupt(source / "model.safetensors")
    out = tmp_path / "out"
    result = _run("apply", "--plan", "skip:1", str(source), str(out), timeout=60)
    _one_error_line(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source"]


def test_a_layer_missing_a_tensor_is_refused(tiny_checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny_checkpoints["llama"], source)
    tensors = load_file(source / "model.safetensors")
    del tensors["model.layers.5.mlp.up_proj.weight"]
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    _one_error_line(_run("apply", "--plan", "skip:1", str(source), str(tmp_path / "out")), "layer 5 lacks tensor")
    assert not (tmp_path / "out").exists()


def _rewrite_header(path: Path, edit) -> None:
    """Edit a safetensors header in place (same data section), e.g. to claim another shape."""
    import struct

    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    edit(header)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


# --- inputs that used to give the internal-error line ---------------------------------------------------------


def _model_with_config(tmp_path: Path, tiny: Path, text: str) -> Path:
    model = tmp_path / "model"
    shutil.copytree(tiny, model)
    (model / "config.json").write_text(text)
    return model


@pytest.mark.parametrize(
    ("config_text", "fragment"),
    [
        ("{not json", "cannot read config.json"),
        ("[1, 2]", "is not a JSON object"),
        ('{"model_type": "llama", "num_hidden_layers": "8"}', "no positive integer num_hidden_layers"),
        ('{"model_type": ["llama"], "num_hidden_layers": 8}', "unsupported architecture"),
    ],
)
def test_bad_config_json_is_a_user_error(config_text, fragment, tiny_checkpoints, tmp_path):
    model = _model_with_config(tmp_path, tiny_checkpoints["llama"], config_text)
    _one_error_line(_run("apply", "--plan", "skip:1", str(model), str(tmp_path / "out")), fragment)
    _one_error_line(_run("plan", "show", "--plan", "skip:1", str(model)), fragment)
    assert not (tmp_path / "out").exists()


def test_odd_paths_and_numbers_are_user_errors(tiny_checkpoints, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    _one_error_line(_run("apply", "--plan", "skip:1", str(loop), str(tmp_path / "o")), "loop")
    long_name = tmp_path / ("x" * 240)
    _one_error_line(_run("apply", "--plan", "skip:1", str(tiny_checkpoints["llama"]), str(long_name)), "too long")
    _one_error_line(
        _run("apply", "--shard-size", "nan", "--plan", "skip:1", str(tiny_checkpoints["llama"]), str(tmp_path / "o")),
        "malformed size",
    )
    result = CliRunner().invoke(cli, ["eval", "org/model", "--limit", "nan"])
    assert result.exit_code == 2 and "not a finite number" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_output_to_an_unwritable_place_fails_before_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["eval", "org/model", "--output", str(blocker / "results.json")])
    assert result.exit_code == 2 and "--output" in result.output and "cannot write" in result.output
    result = CliRunner().invoke(cli, ["eval", "org/model", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output
