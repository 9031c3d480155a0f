"""`surgery bench` against hostile inputs (issue 18 item 10) and its bounds and decode loop (issue 24 items 2-3).

* everything is validated before anything is timed: a garbled or list-shaped `export.json`, an `--out` that names a
  file or cannot be created, a config whose steps name no stored layer -> one `error:` line, exit 2, and the
  measurement function is never called;
* measurements taken before a failure are kept in `bench.partial.json` (marked partial), never in `bench.json`;
* an ONNX export's checkpoint is found relative to the export folder and verified by fingerprint; a legacy record
  (no fingerprint) only when shape and plan agree;
* the steps bound follows the surgery class's own fusion decisions; the static-cache decode loop produces the
  tokens of eager greedy `generate`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.bench import run as bench_run
from surgery.bench.config import BenchConfig
from surgery.bench.decode import LOOP_STATIC, StaticDecoder
from surgery.bench.report import PARTIAL, table
from surgery.bench.weights import bounds, bytes_read_per_token, sequential_steps
from surgery.cli.main import main as cli
from surgery.errors import SurgeryError
from surgery.exporters.onnx.record import export_source, source_record
from surgery.io.model_ref import ModelRef

FAST = ["--prompt-len", "4", "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--threads", "1"]


@pytest.fixture(scope="module")
def plans(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Tiny Llama (and GPT-NeoX) variants written by `apply`, one per plan kind that changes the step count."""
    root = tmp_path_factory.mktemp("bench-hostile")
    llama = tiny_checkpoints["llama"]
    out = {"full": llama}
    for name, plan, options in (
        ("skip", "skip:2-4", None),
        ("parallel", "parallel:2-4", None),
        ("looped", "parallel:2-4x2", None),
        ("unfused", "parallel:2-4", ApplyOptions(fuse_parallel=False)),
        ("tied", "repeat:2-5@3", ApplyOptions(tie_repeats=True)),
    ):
        apply_plan(str(llama), plan, root / name, options)
        out[name] = root / name
    apply_plan(str(tiny_checkpoints["gpt_neox"]), "parallel:2-4", root / "neox-parallel")
    out["neox-parallel"] = root / "neox-parallel"
    return out


@pytest.fixture
def no_timing(monkeypatch):
    """Fail the test if anything is measured (validation must come first)."""

    def measured(*args, **kwargs):
        raise AssertionError("a measurement started before validation finished")

    monkeypatch.setattr(bench_run, "start_worker", measured)


def fake_export(directory: Path, checkpoint: Path, record: dict | None = None) -> Path:
    """An ONNX export folder as bench sees it (config.json, model.onnx, export.json) without running optimum."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(checkpoint / "config.json", directory / "config.json")
    (directory / "model.onnx").write_bytes(b"not read by bench's checks")
    if record is None:
        ref = ModelRef.parse(str(checkpoint))
        record = {"checkpoint": "as given", "source_checkpoint": source_record(ref, ref.read_config(), directory)}
    (directory / "export.json").write_text(json.dumps(record))
    return directory


def one_error_line(args: list[str], fragment: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


# ------------------------------------------------------------------ validated before anything is timed


@pytest.mark.parametrize(
    ("export_json", "fragment"),
    [
        ("{not json", "cannot read export.json"),
        ("[1, 2, 3]", "is not a JSON object"),
        ('"a string"', "is not a JSON object"),
        ('{"checkpoint": 42}', "checkpoint must be a string"),
        ('{"checkpoint": ["a", "b"]}', "checkpoint must be a string"),
        ('{"source_checkpoint": "../model"}', "source_checkpoint must be an object"),
        ('{"source_checkpoint": {"path": "../m"}}', "source_checkpoint must be an object with an identity"),
        ('{"source_checkpoint": {"path": 7, "identity": "sha256:x"}}', "needs a path"),
        ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "cannot read export.json"),
    ],
)
def test_malformed_export_json_is_one_line_before_timing(export_json, fragment, plans, tmp_path, no_timing):
    onnx = fake_export(tmp_path / "onnx", plans["full"])
    (onnx / "export.json").write_text(export_json, encoding="latin-1")
    one_error_line(["bench", str(plans["full"]), str(onnx), "--out", str(tmp_path / "out"), *FAST], fragment)
    assert not (tmp_path / "out").exists()


def _file(t: Path) -> Path:
    (t / "file").write_text("x")
    return t / "file"


def _dir_at(t: Path, name: str) -> Path:
    (t / "out" / name).mkdir(parents=True)
    return t / "out"


def _dangling(t: Path) -> Path:
    os.symlink(t / "nowhere", t / "link")
    return t / "link"


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_file, "is a file; give a directory"),
        (lambda t: _file(t) / "sub", "cannot write in"),
        (lambda t: _dir_at(t, "bench.json"), "is a directory"),
        (lambda t: _dir_at(t, PARTIAL), "is a directory"),
        (_dangling, "broken symbolic link"),
    ],
    ids=["out-is-file", "out-under-file", "bench-json-is-dir", "partial-is-dir", "dangling-link"],
)
def test_bad_out_is_one_line_before_timing(make, fragment, plans, tmp_path, no_timing):
    out = make(tmp_path)
    one_error_line(["bench", str(plans["full"]), "--out", str(out), *FAST], fragment)


@pytest.mark.parametrize(
    "steps",
    [[[0], [99]], [["a"]], "x", [[0], []], [[True]]],
    ids=["out-of-range", "string-index", "not-a-list", "empty-step", "bool-index"],
)
def test_steps_naming_no_stored_layer_are_refused_before_timing(steps, plans, tmp_path, no_timing):
    model = tmp_path / "model"
    shutil.copytree(plans["parallel"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "surgery_steps": steps}))
    with pytest.raises(SurgeryError):
        bench_run.check(BenchConfig(models=[str(model)], out_dir=tmp_path / "out"))
    result = CliRunner().invoke(cli, ["bench", str(model), "--out", str(tmp_path / "out"), *FAST])
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output


# ------------------------------------------------------------------ measurements are not thrown away


def _fake_workers(monkeypatch) -> None:
    from test_bench_rounds import fake_workers

    fake_workers(monkeypatch, [])


def test_a_failure_after_measuring_keeps_the_measurements_marked_partial(plans, tmp_path, monkeypatch):
    from test_bench_rounds import fake_workers

    fake_workers(monkeypatch, [], skip={"interrupt_at": 1})  # e.g. Ctrl-C during the second round
    out = tmp_path / "out"
    args = ["bench", str(plans["full"]), str(plans["skip"]), "--out", str(out), *FAST[:-6], "--repeats", "2"]
    result = CliRunner().invoke(cli, [*args, "--warmup", "0", "--threads", "1"])
    assert result.exit_code != 0
    assert not (out / "bench.json").exists() and not (out / "bench.md").exists()
    partial = json.loads((out / PARTIAL).read_text())
    assert partial["partial"] == "1 of 2 rounds measured"
    assert [r["model"] for r in partial["results"]] == [str(plans["full"]), str(plans["skip"])]
    assert partial["results"][0]["decode_ms_per_token"]["median"] == 1.0 and partial["results"][0]["rounds"] == 1


def test_a_complete_run_replaces_the_partial_file(plans, tmp_path, monkeypatch):
    _fake_workers(monkeypatch)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", str(plans["full"]), str(plans["skip"]), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert not (out / PARTIAL).exists()
    payload = json.loads((out / "bench.json").read_text())
    assert "partial" not in payload and len(payload["results"]) == 2


# ------------------------------------------------------------------ the export's checkpoint: where and which


def test_export_checkpoint_is_found_relative_to_the_export_folder(plans, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(plans["skip"], project / "skip")
    fake_export(project / "onnx-skip", project / "skip")
    moved = shutil.move(project, tmp_path / "moved")  # both folders move together
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "skip").mkdir(parents=True)  # a decoy at the path relative to the working directory
    shutil.copytree(plans["full"], elsewhere / "skip", dirs_exist_ok=True)
    monkeypatch.chdir(elsewhere)
    source = export_source(Path(moved) / "onnx-skip")
    assert source.path.resolve() == (Path(moved) / "skip").resolve() and source.verified_by == "identity"
    assert bounds(Path(moved) / "onnx-skip")["weight_bytes_per_token"] == bytes_read_per_token(plans["skip"])


def test_a_different_checkpoint_at_the_recorded_path_is_not_used(plans, tmp_path):
    shutil.copytree(plans["skip"], tmp_path / "ckpt")
    onnx = fake_export(tmp_path / "onnx", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt")
    assert "is not there" in bounds(onnx)["bound_note"]
    shutil.copytree(plans["parallel"], tmp_path / "ckpt")  # another model where the export's source was
    found = bounds(onnx)
    assert "is not the checkpoint it was exported from" in found["bound_note"]
    assert "weight_bytes_per_token" not in found


def test_same_shape_other_weights_is_not_used(plans, tmp_path, tiny_checkpoints):
    from tiny_models import save_tiny

    shutil.copytree(tiny_checkpoints["llama"], tmp_path / "ckpt")
    onnx = fake_export(tmp_path / "onnx", tmp_path / "ckpt")
    shutil.rmtree(tmp_path / "ckpt")
    save_tiny("llama", tmp_path / "ckpt", seed=1)  # same config, same sizes, other weights
    assert "its weights differ" in bounds(onnx)["bound_note"]


def test_legacy_record_is_matched_by_shape_and_plan(plans, tmp_path, monkeypatch):
    """An export.json from before fingerprints: its checkpoint path was relative to where export ran."""
    shutil.copytree(plans["skip"], tmp_path / "work" / "skip")
    onnx = fake_export(tmp_path / "work" / "onnx-skip", tmp_path / "work" / "skip", record={"checkpoint": "skip"})
    monkeypatch.chdir(tmp_path / "work")
    assert bounds(onnx)["weight_bytes_per_token"] == bytes_read_per_token(plans["skip"])
    assert "predates fingerprints" in export_source(onnx).verified_by
    (tmp_path / "other").mkdir()
    shutil.copytree(plans["full"], tmp_path / "other" / "skip")  # from elsewhere, "skip" is another model
    monkeypatch.chdir(tmp_path / "other")
    assert "no checkpoint matching" in bounds(onnx)["bound_note"]


def test_no_export_json_means_no_bounds_not_an_error(plans, tmp_path):
    onnx = fake_export(tmp_path / "onnx", plans["full"])
    (onnx / "export.json").unlink()
    assert bounds(onnx) == {"bound_note": f"no bounds: no export.json in {onnx}"}


# ------------------------------------------------------------------ the steps bound


def test_sequential_steps_follow_the_surgery_class(plans):
    assert sequential_steps(plans["full"]) == 8
    assert sequential_steps(plans["skip"]) == 5
    assert sequential_steps(plans["parallel"]) == 6  # the fused block of 3 is one step
    assert sequential_steps(plans["looped"]) == 7  # two loops of the fused block: two steps
    assert sequential_steps(plans["unfused"]) == 8  # --no-fuse: each member is a step
    assert sequential_steps(plans["neox-parallel"]) == 8  # GPT-NeoX groups do not fuse
    tied = json.loads((plans["tied"] / "config.json").read_text())["surgery_steps"]
    assert sequential_steps(plans["tied"]) == len(tied) == 8  # one step per executed instance


def test_an_onnx_export_counts_the_unfused_graph(plans, tmp_path):
    """`export onnx` writes the surgery class unfused: its steps are the members, its bytes the checkpoint's."""
    onnx = fake_export(tmp_path / "onnx", plans["parallel"])
    assert bounds(plans["parallel"])["sequential_steps"] == 6
    assert bounds(onnx) == {"weight_bytes_per_token": bytes_read_per_token(plans["parallel"]), "sequential_steps": 8}


def test_steps_ratio_in_json_and_table(plans, tmp_path, monkeypatch):
    _fake_workers(monkeypatch)
    models = [str(plans[name]) for name in ("full", "skip", "looped")]
    payload = bench_run.run_bench(BenchConfig(models=models, out_dir=tmp_path))
    ratios = [r["ratio_steps"] for r in payload["results"]]
    assert ratios == [1.0, 5 / 8, 7 / 8]
    assert [r["sequential_steps"] for r in payload["results"]] == [8, 5, 7]
    text = table(payload)
    assert "steps ratio" in text and "| looped | torch | 2.0 | 1.00 | 1000.0 | 1.00x | 1.00x |" in text
    assert "0.88x" in text.splitlines()[4] and "Decode loop: torch: fake." in text


# ------------------------------------------------------------------ the static-cache decode loop


@pytest.mark.parametrize(
    ("arch", "plan", "batch"),
    [("llama", None, 1), ("llama", "parallel:2-4x2", 2), ("mistral", None, 1), ("qwen3", "parallel:2-4", 1)],
)
def test_static_loop_gives_the_tokens_of_eager_generate(arch, plan, batch, tiny_checkpoints, tmp_path, one_thread):
    from surgery.architectures.loading import load_model

    checkpoint = tiny_checkpoints[arch]
    if plan:
        apply_plan(str(checkpoint), plan, tmp_path / "variant")
        checkpoint = tmp_path / "variant"
    model = load_model(str(checkpoint), trust_remote_code=True)
    ids = torch.randint(0, 96, (batch, 5), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        options = {"max_new_tokens": 10, "min_new_tokens": 10, "do_sample": False, "pad_token_id": 0}
        reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)[:, 5:]
        decoder = StaticDecoder(model, batch=batch, max_len=15, device="cpu", compile=False)
        first, again = decoder.generate(ids, 10), decoder.generate(ids, 10)  # the cache is reset between rounds
    assert torch.equal(first.tokens, reference) and torch.equal(again.tokens, reference)  # mistral: past its window
    assert first.prefill_s > 0 and first.decode_s > 0


def test_torch_compile_backend_uses_the_static_loop(tiny_checkpoints, monkeypatch, one_thread):
    """The measurement's plumbing, with torch.compile replaced by the identity (compiling is the slow test's)."""
    from surgery.bench.measure import measure

    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)
    settings = {"model": str(tiny_checkpoints["llama"]), "backend": "torch-compile", "device": "cpu",
                "dtype": "float32", "prompt_len": 4, "new_tokens": 3, "batch": 1, "repeats": 2, "warmup": 0,
                "threads": 1, "trust_remote_code": False}  # fmt: skip
    result = measure(settings)
    assert result["decode_loop"] == LOOP_STATIC and result["tokens_equal_generate"] is True
    assert result["compile_mode"] == "default" and result["decode_ms_per_token"]["median"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("plan", [None, "parallel:2-4x2"])
def test_compiled_static_loop_gives_the_tokens_of_eager_generate(plan, tiny_checkpoints, tmp_path, one_thread):
    from surgery.architectures.loading import load_model

    checkpoint = tiny_checkpoints["llama"]
    if plan:
        apply_plan(str(checkpoint), plan, tmp_path / "variant")
        checkpoint = tmp_path / "variant"
    model = load_model(str(checkpoint), trust_remote_code=True)
    ids = torch.randint(0, 96, (1, 6), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        options = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        reference = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)[:, 6:]
        decoder = StaticDecoder(model, batch=1, max_len=14, device="cpu")
        assert decoder.compiled and decoder.mode is None  # CPU: default mode, no CUDA graphs
        assert torch.equal(decoder.generate(ids, 8).tokens, reference)
        assert torch.equal(decoder.generate(ids, 8).tokens, reference)
