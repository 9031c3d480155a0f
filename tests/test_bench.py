"""`surgery bench`: the JSON schema, the ratio arithmetic, the physical bound, and that every backend either runs
or says why not. No timed assertions: latencies are measured, never compared with a threshold."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.bench.config import BenchConfig
from surgery.bench.decode import LOOP_GENERATE, LOOP_ORT, LOOP_STATIC
from surgery.bench.report import table
from surgery.bench.run import run_bench
from surgery.bench.schema import BenchPayload
from surgery.bench.stats import add_ratios
from surgery.bench.weights import bytes_read_per_token
from surgery.cli.main import main as cli
from surgery.exporters.onnx.config import ExportConfig
from surgery.exporters.onnx.export import export_onnx
from surgery.exporters.onnx.record import export_source

FAST = {"prompt_len": 8, "new_tokens": 4, "repeats": 1, "warmup": 0, "threads": 1}


def _spread(value: float) -> dict[str, float]:
    return {"median": value, "min": value, "max": value}


def test_ratios_are_to_the_first_model_on_the_same_backend():
    results = [
        {"model": "full", "backend": "torch", "prefill_ms": _spread(10.0), "decode_ms_per_token": _spread(4.0)},
        {"model": "skip", "backend": "torch", "prefill_ms": _spread(7.0), "decode_ms_per_token": _spread(3.0)},
        {"model": "full", "backend": "onnxruntime", "skipped": "n/a: not an ONNX folder"},
        {"model": "o-full", "backend": "onnxruntime", "prefill_ms": _spread(5.0), "decode_ms_per_token": _spread(2.0)},
        {"model": "o-skip", "backend": "onnxruntime", "prefill_ms": _spread(4.0), "decode_ms_per_token": _spread(1.0)},
    ]
    results[0]["weight_bytes_per_token"], results[1]["weight_bytes_per_token"] = 1000, 816
    add_ratios(results)
    assert (results[1]["ratio_prefill"], results[1]["ratio_decode"]) == (0.7, 0.75)
    assert results[1]["ratio_weight_bytes"] == 0.816
    assert (results[4]["ratio_prefill"], results[4]["ratio_decode"]) == (0.8, 0.5)
    assert results[0]["ratio_decode"] == 1.0 and "ratio_decode" not in results[2]


def test_weight_bytes_follow_the_executed_instances(tiny_checkpoints, tmp_path):
    """Bytes read per token: non-layer tensors once, each layer once per executed instance (tied or copied)."""
    source = tiny_checkpoints["llama"]
    full = bytes_read_per_token(source)
    layer = (full - bytes_read_per_token(_applied(source, "skip:3", tmp_path / "s1"))) // 1
    assert layer > 0
    assert bytes_read_per_token(_applied(source, "skip:2-4", tmp_path / "s3")) == full - 3 * layer
    assert bytes_read_per_token(_applied(source, "parallel:2-4x2", tmp_path / "p")) == full + 3 * layer
    tied = _applied(source, "repeat:2-5@3", tmp_path / "t", ApplyOptions(tie_repeats=True))
    assert bytes_read_per_token(tied) == full  # stored once, read at four positions: as many bytes as the full model


def _applied(source, plan, out, options=None):
    apply_plan(str(source), plan, out, options)
    return out


@pytest.fixture(scope="module")
def variants(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    source = tiny_checkpoints["llama"]
    apply_plan(str(source), "skip:2-4", root / "skip")
    apply_plan(str(source), "parallel:2-4", root / "parallel")
    export_onnx(ExportConfig(checkpoint=str(source), out_dir=root / "onnx-full"), log=lambda m: None)
    export_onnx(ExportConfig(checkpoint=str(root / "skip"), out_dir=root / "onnx-skip"), log=lambda m: None)
    return source, root


def test_torch_and_onnxruntime_run_or_say_why(variants, tmp_path):
    source, root = variants
    models = [str(source), str(root / "skip"), str(root / "parallel"), str(root / "onnx-full"), str(root / "onnx-skip")]
    config = BenchConfig(models=models, backends=["torch", "onnxruntime"], out_dir=tmp_path, **FAST)
    lines = []
    payload = run_bench(config, progress=lines.append)
    BenchPayload.model_validate(payload)
    assert len(lines) == 2 and lines[0].startswith("[torch round 1/1] ") and "onnx-skip: prefill" in lines[1]
    by_key = {(r["model"], r["backend"]): r for r in payload["results"]}
    for model in models[:3]:
        assert by_key[(model, "torch")]["decode_ms_per_token"]["median"] > 0
        assert by_key[(model, "onnxruntime")]["skipped"].startswith("n/a: not an ONNX folder")
    for model in models[3:]:
        assert by_key[(model, "onnxruntime")]["provider"] == "CPUExecutionProvider"
        assert by_key[(model, "torch")]["skipped"].startswith("n/a: an ONNX folder")
    assert by_key[(models[0], "torch")]["ratio_decode"] == 1.0
    skip = by_key[(models[1], "torch")]
    assert skip["ratio_decode"] == pytest.approx(
        skip["decode_ms_per_token"]["median"] / by_key[(models[0], "torch")]["decode_ms_per_token"]["median"]
    )
    # an ONNX export is measured against the bytes of the checkpoint its export.json names
    assert by_key[(models[4], "onnxruntime")]["ratio_weight_bytes"] == pytest.approx(skip["ratio_weight_bytes"])
    assert by_key[(models[4], "onnxruntime")]["ratio_steps"] == skip["ratio_steps"] == 5 / 8
    assert by_key[(models[2], "torch")]["sequential_steps"] == 6  # parallel:2-4 runs fused: one step
    assert {r.get("decode_loop") for r in payload["results"] if "skipped" not in r} == {LOOP_GENERATE, LOOP_ORT}
    assert payload["machine"]["threads"] == 1 and "torch" in payload["machine"]["versions"]
    assert "| skip | torch |" in table(payload) and "Not applicable" in table(payload)


def test_export_records_its_checkpoint_relative_to_itself_with_a_fingerprint(variants):
    """The exporter's record: the checkpoint's path from the export folder, and its fingerprint, which matches."""
    _, root = variants
    record = json.loads((root / "onnx-skip" / "export.json").read_text())["source_checkpoint"]
    assert record["path"] == "../skip" and record["identity"].startswith("sha256:")
    source = export_source(root / "onnx-skip")
    assert source.path == root / "onnx-skip" / ".." / "skip" and source.verified_by == "identity"


def test_cli_writes_json_table_and_plot(variants, tmp_path):
    source, root = variants
    args = ["bench", str(source), str(root / "skip"), "--out", str(tmp_path / "out")]
    args += ["--prompt-len", "8", "--new-tokens", "4", "--repeats", "1", "--warmup", "0", "--threads", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert [r["model"] for r in payload["results"]] == [str(source), str(root / "skip")]
    assert (tmp_path / "out" / "bench.png").stat().st_size > 10_000
    assert "decode ratio" in (tmp_path / "out" / "bench.md").read_text()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["bench", "{tmp}/missing"], "model path not found"),
        (["bench", "{llama}", "--backend", "tensorflow"], "--backend"),
        (["bench", "{llama}", "--new-tokens", "1"], "--new-tokens"),
        (["bench", "org/model"], "bench measures local folders"),
    ],
)
def test_bad_inputs_are_one_line(args, fragment, tiny_checkpoints, tmp_path):
    args = [a.format(tmp=tmp_path, llama=tiny_checkpoints["llama"]) for a in args]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.integration
def test_torch_compile_runs_or_says_why(variants, tmp_path):
    source, root = variants
    config = BenchConfig(
        models=[str(source), str(root / "parallel")], backends=["torch-compile"], out_dir=tmp_path, **FAST
    )
    payload = run_bench(config)
    for result in payload["results"]:
        assert "skipped" not in result or result["skipped"].startswith("failed: "), result
        if "skipped" not in result:
            assert result["decode_ms_per_token"]["median"] > 0
            assert result["decode_loop"] == LOOP_STATIC and result["compile_mode"] == "default"
            assert result["tokens_equal_generate"] is True
