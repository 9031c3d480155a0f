"""Cards say only true, useful things (issue 21 item 2): no local path in the latency table or the fine-tuning
section, a load snippet that works from anywhere, ``base_model`` from ``--base-model`` or the source, the paper's
finding labelled as the paper's, noisy bench ratios never shown as facts, and summary.md's last norm = the plot's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from surgery.apply.materialize import apply_plan
from surgery.cli.main import main as cli

HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def made(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("truthful")
    apply_plan(str(tiny_checkpoints["llama"]), "skip:2-3", root / "skip")
    return {"skip": root / "skip", "source": tiny_checkpoints["llama"]}


@pytest.fixture
def skip(made, tmp_path) -> Path:
    return Path(shutil.copytree(made["skip"], tmp_path / "tiny-skip"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def front_matter(text: str) -> dict:
    return yaml.safe_load(text.split("---\n")[1])


def edit_record(checkpoint: Path, edit) -> None:
    record = json.loads((checkpoint / "surgery.json").read_text())
    edit(record)
    (checkpoint / "surgery.json").write_text(json.dumps(record))


def add_finetune(checkpoint: Path, **details) -> None:
    stage = {"stage": "finetune", "surgery_version": "0.1.0", "date": "2026-12-01T00:00:00+00:00", "details": details}
    edit_record(checkpoint, lambda record: record["history"].append(stage))


def timing(median: float) -> dict:
    return {"median": median, "min": median * 0.95, "max": median * 1.05}


def bench_row(model: str, *, ratio: float, noisy: bool | None, noisy_ratios=(), spread=(0.9, 1.1)) -> dict:
    row = {
        "model": model,
        "backend": "torch",
        "prefill_ms": timing(10.0 * ratio),
        "decode_ms_per_token": timing(4.0 * ratio),
        "tokens_per_s": 250.0 / ratio,
        "ratio_prefill": ratio,
        "ratio_decode": ratio,
    }
    if noisy is not None:  # a bench file of interleaved rounds (helper G's fields)
        low, high = spread
        row.update(
            noisy=noisy,
            noisy_ratios=list(noisy_ratios),
            rounds=5,
            ratio_prefill_spread={"median": ratio, "min": ratio * low, "max": ratio * high},
            ratio_decode_spread={"median": ratio, "min": ratio * low, "max": ratio * high},
        )
    return row


def write_bench(path: Path, rows: list[dict]) -> Path:
    payload = {"machine": {"cpu": "Test CPU", "threads": 2}, "settings": {"prompt_len": 16}, "results": rows}
    path.write_text(json.dumps(payload))
    return path


def section(text: str, heading: str) -> str:
    return text.split(f"## {heading}\n")[1].split("\n## ")[0]


# ------------------------------------------------------------------------------------------- (a) latency labels


def test_latency_table_names_models_by_plan_or_id_never_by_local_path(skip, made, tmp_path, monkeypatch):
    """`bench out/full out/skip ...` from a project folder: the card says which model each row is, without paths."""
    project = tmp_path / "project"
    (project / "out").mkdir(parents=True)
    shutil.copytree(skip, project / "out" / "skip")
    shutil.copytree(skip, project / "out" / "full")
    add_finetune(project / "out" / "full", method="full")
    shutil.copytree(made["source"], project / "out" / "plain")  # a folder with no surgery.json
    snapshot = tmp_path / "hub" / "models--someorg--base-model" / "snapshots" / HUB_SHA
    shutil.copytree(made["source"], snapshot)
    monkeypatch.chdir(project)
    rows = [
        bench_row("out/full", ratio=1.0, noisy=False),
        bench_row("out/skip", ratio=0.8, noisy=False),
        bench_row("./out/plain", ratio=1.2, noisy=False),
        bench_row(str(snapshot), ratio=1.1, noisy=False),
        bench_row("/gone/elsewhere/model", ratio=0.9, noisy=False),
        bench_row("out/skpi", ratio=0.9, noisy=False),  # looks like a Hub id, is in no Hub cache
        bench_row("smollm2-demo", ratio=1.0, noisy=False),
    ]
    bench = write_bench(tmp_path / "bench.json", rows)
    result = invoke("card", skip, "--bench", bench)
    assert result.exit_code == 0, result.stderr
    text = (skip / "README.md").read_text()
    table = [line for line in section(text, "Latency").splitlines() if line.startswith("| ")][1:]  # no header
    labels = [line.split(" | ")[0].removeprefix("| ") for line in table]
    assert labels == [
        "variant skip:2-3, fine-tuned",
        "variant skip:2-3 (this model)",
        "local model #3",
        "someorg/base-model",
        "model #5",
        "model #6",
        "smollm2-demo",
    ]
    stored = (skip / "surgery.json").read_text()
    for where in (text, stored):
        assert "out/" not in where and str(tmp_path) not in where and "/gone" not in where
    assert invoke("card", skip).exit_code == 0  # the stored labels validate again unchanged
    assert (skip / "README.md").read_text() == text


def test_noisy_ratio_is_shown_only_with_its_spread_and_a_warning(skip, tmp_path):
    rows = [
        bench_row("smollm2-demo", ratio=1.0, noisy=False),
        bench_row("someone/quiet", ratio=0.78, noisy=False),
        bench_row("someone/busy", ratio=6.71, noisy=True, noisy_ratios=["ratio_decode"], spread=(0.2, 1.3)),
    ]
    result = invoke("card", skip, "--bench", write_bench(tmp_path / "bench.json", rows))
    assert result.exit_code == 0, result.stderr
    latency = section((skip / "README.md").read_text(), "Latency")
    quiet, busy = [line for line in latency.splitlines() if line.startswith(("| model #2 ", "| model #3 "))]
    assert quiet.endswith("| 0.7800 | 0.7800 |")  # agreed across rounds: stated plainly
    # the prefill ratio agreed, the decode ratio did not: the latter only with its rounds' range and the mark
    assert busy.endswith("| 6.7100 | 6.7100 (rounds 1.3420–8.7230; noisy) |"), busy
    assert "**Warning: ratios marked noisy are not a measurement to rely on.**" in latency
    assert "unchecked" not in latency
    assert "measured round by round (5 rounds, every model in every round); a ratio is the median" in latency


def test_ratios_of_a_bench_file_without_rounds_are_marked_unchecked(skip, tmp_path):
    rows = [bench_row("smollm2-demo", ratio=1.0, noisy=None), bench_row("x/y", ratio=0.27, noisy=None)]
    assert invoke("card", skip, "--bench", write_bench(tmp_path / "bench.json", rows)).exit_code == 0
    latency = section((skip / "README.md").read_text(), "Latency")
    assert "| 0.2700 (unchecked) | 0.2700 (unchecked) |" in latency
    assert "was not checked" in latency and "Warning" not in latency


# ---------------------------------------------------------------------------------------- (b) fine-tuning section


def test_finetune_section_is_readable_text_without_json_or_local_paths(skip):
    add_finetune(
        skip,
        method="lora",
        data={
            "name": "arc_challenge",
            "location": "../shared/data/arc/ARC-Challenge-Train.jsonl",
            "loss_on": "answer",
            "available": 1119,
            "examples": 1000,
            "truncated": 2,
            "dropped": 0,
            "tokens": 51234,
        },
        hyperparameters={
            "model": "../shared/models/x",
            "data_dir": "/home/alice/data",
            "lr": 0.0002,
            "batch_size": 8,
            "epochs": 1,
            "lora_targets": ["q_proj", "v_proj"],
        },
        lora_target_modules=["q_proj", "v_proj"],
        final_loss=1.2345678,
        resumed_from_step=None,
    )
    assert invoke("card", skip).exit_code == 0
    finetune = section((skip / "README.md").read_text(), "Fine-tuning")
    assert (
        "- data: arc_challenge (local file `ARC-Challenge-Train.jsonl`): 1000 examples of 1119; loss on answer; "
        "51234 tokens; 2 truncated\n" in finetune
    )
    assert "- settings: lr 0.0002, batch_size 8, epochs 1, lora_targets q_proj, v_proj\n" in finetune
    assert "- LoRA target modules: q_proj, v_proj\n" in finetune and "- final loss: 1.23457\n" in finetune
    for raw in ("{", '"', "../", "shared", "location", "resumed", "alice", "data_dir"):
        assert raw not in finetune, raw


def test_finetune_local_data_is_named_by_file_name_and_sha256(skip):
    digest = "ab" * 32
    data = {"name": "mine.jsonl", "location": "/home/alice/private/mine.jsonl", "sha256": digest, "examples": 3}
    add_finetune(skip, method="full", data=data)
    assert invoke("card", skip).exit_code == 0
    finetune = section((skip / "README.md").read_text(), "Fine-tuning")
    assert f"- data: mine.jsonl (local file `mine.jsonl`, sha256 `{digest}`): 3 examples\n" in finetune
    assert "alice" not in finetune


def test_finetune_data_from_the_hub_names_the_dataset(skip):
    add_finetune(skip, method="full", data={"name": "arc_easy", "location": "hub:allenai/ai2_arc/ARC-Easy/train"})
    assert invoke("card", skip).exit_code == 0
    finetune = section((skip / "README.md").read_text(), "Fine-tuning")
    assert "- data: arc_easy (Hub dataset `allenai/ai2_arc/ARC-Easy/train`)\n" in finetune
    assert "- method: full\n" in finetune


# ---------------------------------------------------------------------------------------------- (c) load snippet


def test_load_snippet_uses_a_placeholder_path_until_the_repo_id_is_known(skip):
    assert invoke("card", skip).exit_code == 0
    text = (skip / "README.md").read_text()
    assert 'from_pretrained("path/to/tiny-skip")' in text and 'from_pretrained("tiny-skip")' not in text
    assert "replace `path/to/tiny-skip` with the path of this folder" in text
    dry = invoke("push", skip, "me/tiny-skip", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert 'from_pretrained("me/tiny-skip")' in dry.output and "path/to" not in dry.output
    assert invoke("card", skip, "--name", "org/named").exit_code == 0
    assert 'from_pretrained("org/named")' in (skip / "README.md").read_text()


def test_a_pushed_checkpoint_keeps_its_repo_id_in_the_snippet(skip):
    edit_record(
        skip,
        lambda r: r["history"].append({"stage": "push", "date": "d", "details": {"repo_id": "me/pushed"}}),
    )
    assert invoke("card", skip).exit_code == 0
    assert 'from_pretrained("me/pushed")' in (skip / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ (d) base_model


def test_apply_base_model_is_kept_and_named_in_the_metadata(made, tmp_path):
    out = tmp_path / "skip"
    result = invoke("apply", made["source"], out, "--plan", "skip:2-3", "--base-model", "org/parent", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "surgery.json").read_text())["base_model"] == "org/parent"
    meta = front_matter((out / "README.md").read_text())
    assert meta["base_model"] == "org/parent" and meta["base_model_relation"] == "merge"
    # later cards and pushes reuse it without the option; the option replaces it (and is kept)
    assert invoke("card", out).exit_code == 0
    assert front_matter((out / "README.md").read_text())["base_model"] == "org/parent"
    assert invoke("card", out, "--base-model", "org/other").exit_code == 0
    assert json.loads((out / "surgery.json").read_text())["base_model"] == "org/other"
    dry = invoke("push", out, "me/x", "--dry-run")
    assert "base_model: org/other\n" in dry.output


def test_push_base_model_names_the_parent(skip):
    dry = invoke("push", skip, "me/x", "--dry-run", "--base-model", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert dry.exit_code == 0, dry.stderr
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\nbase_model_relation: merge\n" in dry.output
    assert "base_model" not in (skip / "surgery.json").read_text()  # a dry run changes no file


def test_no_base_model_is_claimed_for_a_local_source(skip):
    assert invoke("card", skip).exit_code == 0
    assert "base_model" not in front_matter((skip / "README.md").read_text())
    assert "base_model" not in (skip / "surgery.json").read_text()  # absent until given


BAD_BASE_MODELS = ["not-an-id", "a/b/c", "../x/y", "/abs/path", "datasets/x", "org/na me", "org/" + "x" * 200]


@pytest.mark.parametrize("value", BAD_BASE_MODELS)
def test_bad_base_model_is_one_error_line_and_nothing_written(value, skip, made, tmp_path):
    before = (skip / "surgery.json").read_text(), (skip / "README.md").read_text()
    assert error_line(invoke("card", skip, "--base-model", value)).startswith("error: --base-model: ")
    assert error_line(invoke("push", skip, "me/x", "--dry-run", "--base-model", value)).startswith(
        "error: --base-model: "
    )
    assert ((skip / "surgery.json").read_text(), (skip / "README.md").read_text()) == before
    out = tmp_path / "out"
    line = error_line(invoke("apply", made["source"], out, "--plan", "skip:2-3", "--base-model", value))
    assert line.startswith("error: --base-model: ") and not out.exists()


@pytest.mark.parametrize("value", ["<script>x</script>", "../../etc/passwd", "a/b/c", ""])
def test_a_hand_edited_base_model_that_is_no_hub_id_is_not_claimed(value, skip):
    edit_record(skip, lambda record: record.update(base_model=value))
    result = invoke("card", skip)
    assert result.exit_code == 0, result.stderr
    text = (skip / "README.md").read_text()
    assert "base_model" not in front_matter(text) and "<script" not in text


def test_gguf_metadata_repo_becomes_the_base_model_and_the_demo_gguf_names_none(smollm2_gguf_path):
    from surgery.apply.card import base_model_of
    from surgery.io.source import _gguf_origin

    source = {"kind": "gguf", "gguf_repo": "https://huggingface.co/org/m".removeprefix("https://huggingface.co/")}
    assert base_model_of(source) == "org/m"
    assert base_model_of(source, "me/given") == "me/given"  # --base-model wins
    origin = _gguf_origin(smollm2_gguf_path)  # SmolLM2's GGUF carries its organization and name, no repository
    assert origin.get("gguf_organization") == "HuggingFaceTB" and "gguf_repo" not in origin


# ---------------------------------------------------------------------------------------- (e) the quality claim


def test_quality_claim_is_the_papers_finding_until_measured(skip, tmp_path):
    assert invoke("card", skip).exit_code == 0
    text = (skip / "README.md").read_text()
    assert "Expect lower quality" not in text
    assert "The paper (arXiv 2407.09298, https://arxiv.org/abs/2407.09298) finds" in text
    assert "this checkpoint's quality was not measured here" in text
    results = {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1}}
    config = {"executed_layers": 6, "limit": 8}
    chance = {"arc_easy": {"acc,none": 0.25}}
    samples = {"arc_easy": {"original": 2000, "effective": 8}}
    variant = tmp_path / "v.json"
    payload = {"results": results, "config": config, "chance": chance, "n-samples": samples}
    variant.write_text(json.dumps(payload))
    assert invoke("card", skip, "--eval", variant).exit_code == 0
    text = (skip / "README.md").read_text()
    assert "Its scores on 1 task(s) were measured on this checkpoint (see Results)." in text
    assert "arXiv 2407.09298" not in text
    payload["normalized"] = {"tasks": {"arc_easy": {"metric": "acc,none", "normalized": 0.5}}, "baseline": "b.json"}
    variant.write_text(json.dumps(payload))
    assert invoke("card", skip, "--eval", variant).exit_code == 0
    text = (skip / "README.md").read_text()
    assert "Measured on this checkpoint: a median normalized score of 0.5000 over 1 task(s)" in text


# ------------------------------------------------------------------------------------ (f) summary.md's last norm


def test_summary_norm_is_the_plots_last_point():
    from surgery.sweep.plots import summary_table
    from surgery.sweep.report import read_manifest, read_records

    run = Path(__file__).parent.parent / "docs" / "reproduction" / "fig15"
    manifest, records = read_manifest(run), read_records(run)
    table = summary_table(manifest, records, run)
    for record in records:  # written before last_text_norm: read from the files the plot reads
        stats = json.loads((run / record["files"] / "similarity.json").read_text())["hidden_states"]
        assert stats["final_norm_applied"] is True
        last = round(stats["mean_norm_text_tokens"][-1], 4)
        assert f"| {record['metrics']['mean_similarity_inner']} | {last} (after final norm) |" in table
    assert "final text-token norm" not in table and "last point of layer_stats.png" in table
    fresh = {**records[0], "metrics": {**records[0]["metrics"], "last_text_norm": 1.5, "last_entry_final_norm": False}}
    assert "| 1.5 (no final norm) |" in summary_table(manifest, [fresh])


@pytest.mark.parametrize(
    "model",
    ["out/full", "/home/alice/models/x", "~/x", "../shared/x", "C:\\models\\x", "a/b/c", "skip"],
)
def test_paths_kept_by_an_older_card_or_forged_as_labelled_are_relabelled(model, skip, tmp_path, monkeypatch):
    """A surgery.json written before labels (it kept `out/full`) and a bench.json claiming `model_label`."""
    monkeypatch.chdir(tmp_path)
    row = {**bench_row(model, ratio=1.0, noisy=False), "model_label": True}
    assert invoke("card", skip, "--bench", write_bench(tmp_path / "bench.json", [row])).exit_code == 0
    assert "| model #1 | torch |" in (skip / "README.md").read_text()
    old = {"machine": {}, "settings": {}, "results": [bench_row(model, ratio=1.0, noisy=False)]}
    edit_record(skip, lambda record: record["measurements"].update(bench={**old, "file": "b.json", "sha256": "0" * 64}))
    assert invoke("card", skip).exit_code == 0
    text, stored = (skip / "README.md").read_text(), (skip / "surgery.json").read_text()
    assert "| model #1 | torch |" in text and "alice" not in text + stored and "shared" not in text + stored
    assert f'"model": "{model}"' not in stored


def test_push_base_model_is_uploaded_and_kept(skip, monkeypatch):
    """A real (fake-API) push with --base-model: the uploaded card and surgery.json name the parent; kept locally."""
    import surgery.io.hub as hub
    import surgery.publish.push as push_module

    uploaded: dict[str, bytes] = {}

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return f"https://hub.test/{repo_id}"

        def repo_info(self, repo_id, **kwargs):
            return None

        def create_commit(self, **kwargs):
            for op in kwargs["operations"]:
                if op.path_in_repo in ("README.md", "surgery.json"):
                    with op.as_file() as handle:
                        uploaded[op.path_in_repo] = handle.read()
            return type("Commit", (), {"commit_url": "https://hub.test/c"})()

    monkeypatch.setattr(push_module, "make_api", lambda token, endpoint=None: Api())
    monkeypatch.setattr(hub, "prepare_hub", lambda: False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    result = invoke("push", skip, "me/child", "--base-model", "org/parent", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert front_matter(uploaded["README.md"].decode())["base_model"] == "org/parent"
    assert json.loads(uploaded["surgery.json"])["base_model"] == "org/parent"
    assert json.loads((skip / "surgery.json").read_text())["base_model"] == "org/parent"
    text = (skip / "README.md").read_text()
    assert 'from_pretrained("me/child")' in text
    assert invoke("card", skip).exit_code == 0  # after the push: the repo id and the parent stay
    text = (skip / "README.md").read_text()
    assert 'from_pretrained("me/child")' in text and front_matter(text)["base_model"] == "org/parent"


def test_finetune_with_a_plan_keeps_the_inputs_base_model(skip, made):
    from surgery.finetune.write import input_base_model
    from surgery.io.model_ref import ModelRef

    assert input_base_model(ModelRef.parse(str(skip))) is None
    edit_record(skip, lambda record: record.update(base_model="org/parent"))
    assert input_base_model(ModelRef.parse(str(skip))) == "org/parent"
    assert input_base_model(ModelRef.parse(str(made["source"]))) is None  # no surgery.json


def test_reasons_a_row_was_not_measured_lose_their_paths(skip, tmp_path):
    rows = [
        bench_row("smollm2-demo", ratio=1.0, noisy=False),
        {"model": "x/y", "backend": "torch", "skipped": "failed: OSError: /home/alice/m/config.json: no such file"},
        {"model": "x/z", "backend": "onnxruntime", "skipped": "n/a: not an ONNX folder", "bound_note": "../a/b/c"},
    ]
    assert invoke("card", skip, "--bench", write_bench(tmp_path / "bench.json", rows)).exit_code == 0
    text, stored = (skip / "README.md").read_text(), (skip / "surgery.json").read_text()
    assert "not measured (failed: OSError: config.json: no such file)" in text
    assert "not measured (n/a: not an ONNX folder)" in text
    assert "alice" not in text + stored and "../a" not in stored
