"""`surgery card` and `surgery push`: the card (front matter, numbers equal to their JSON), the file list, and the
upload through a fake HfApi and through the real huggingface_hub client against a local stand-in of the Hub."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from click.testing import CliRunner
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

import surgery.io.hub as hub
import surgery.publish.push as push_module
from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.cli.main import main as cli
from surgery.evaluation.normalize import normalized_scores
from surgery.fileio import sha256_file

REPO = "me/tiny-skip"


@pytest.fixture(scope="module")
def made(tiny_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """`surgery apply` outputs made once: a plain skip (two shards) and a parallel block (surgery class)."""
    root = tmp_path_factory.mktemp("publish")
    apply_plan(str(tiny_checkpoints["llama"]), "skip:2-3", root / "skip", ApplyOptions(shard_size=150_000))
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4", root / "par")
    return {"skip": root / "skip", "par": root / "par", "source": tiny_checkpoints["llama"]}


@pytest.fixture
def skip(made, tmp_path) -> Path:
    """A fresh copy of the skip checkpoint (tests write into it)."""
    return Path(shutil.copytree(made["skip"], tmp_path / "tiny-skip"))


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_line(result) -> str:
    """The one `error:` line of a failed command (exit 2, no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def listed_files(output: str) -> list[str]:
    """The paths of `push --dry-run`'s file table (under its header and rule)."""
    table = [line.split()[0] for line in output.split("card (README.md):")[0].splitlines() if line.startswith("  ")]
    assert table[:2] == ["path", "-" * len(table[1])]
    return table[2:]


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def eval_json(path: Path, results: dict, *, executed: int, limit: int = 8, **extra) -> Path:
    """A `surgery eval --output` file in lm-eval's shape: {task: {"acc,none": x, "acc_stderr,none": s}}."""
    payload = {
        "results": {
            task: {"alias": task, "sample_len": limit, **{f"{m},none": v for m, v in metrics.items()}}
            for task, metrics in results.items()
        },
        "n-samples": {task: {"original": 2000, "effective": limit} for task in results},
        "config": {"model": "/home/someone/ckpt", "plan": None, "executed_layers": executed, "limit": limit},
        "chance": {"arc_easy": {"acc,none": 0.25, "acc_norm,none": 0.25}, "lambada_openai": {"acc,none": 0.0}},
        **extra,
    }
    path.write_text(json.dumps(payload))
    return path


VARIANT = {
    "arc_easy": {"acc": 0.625, "acc_stderr": 0.1829, "acc_norm": 0.5, "acc_norm_stderr": 0.189},
    "lambada_openai": {"acc": 0.3, "acc_stderr": 0.15, "perplexity": 120.5},
}
BASE = {
    "arc_easy": {"acc": 0.875, "acc_stderr": 0.125, "acc_norm": 0.75, "acc_norm_stderr": 0.1637},
    "lambada_openai": {"acc": 0.5, "acc_stderr": 0.189, "perplexity": 29.5},
}


def as_hub_source(checkpoint: Path, **history) -> None:
    """Make the record say the source came from the Hub (what `apply org/base` writes)."""
    record = json.loads((checkpoint / "surgery.json").read_text())
    record["source"].update(kind="hub", repo_id="org/base", revision="main")
    record["history"] += [
        {"stage": name, "surgery_version": "0.1.0", "date": "2025-01-01", "details": d} for name, d in history.items()
    ]
    (checkpoint / "surgery.json").write_text(json.dumps(record))


# ------------------------------------------------------------------------------------------------------ the card


def test_card_metadata_parses_and_numbers_equal_the_json(skip, tmp_path):
    as_hub_source(skip)
    variant = eval_json(tmp_path / "variant.json", VARIANT, executed=6)
    base = eval_json(tmp_path / "base.json", BASE, executed=8)
    result = invoke("card", skip, "--eval", variant, "--baseline", base)
    assert result.exit_code == 0, result.output
    text = (skip / "README.md").read_text()
    meta = front_matter(text)
    assert meta["library_name"] == "transformers" and meta["base_model"] == "org/base"
    assert meta["base_model_relation"] == "merge"
    assert {"surgery", "layer-surgery", "skip"} <= set(meta["tags"]) and "custom_code" not in meta["tags"]
    (entry,) = meta["model-index"]
    assert entry["name"] == skip.name  # what the card tells users to load, until pushed
    measured = {
        (result["dataset"]["type"], metric["type"]): metric["value"]
        for result in entry["results"]
        for metric in result["metrics"]
    }
    expected = {("allenai/ai2_arc", m): v for m, v in VARIANT["arc_easy"].items() if "stderr" not in m}
    expected |= {("EleutherAI/lambada_openai", m): v for m, v in VARIANT["lambada_openai"].items() if "stderr" not in m}
    assert measured == expected  # exactly the JSON's numbers, every metric, nothing else
    assert "ARC-Easy (8 of 2000 examples)" in {r["dataset"]["name"] for r in entry["results"]}
    # the table: value ± stderr beside the base model's, and the normalized median as normalize.py computes it
    assert "| arc_easy | acc | 0.6250 ± 0.1829 | 0.8750 ± 0.1250 |" in text
    assert "| acc_norm | 0.5000 ± 0.1890 | 0.7500 ± 0.1637 | 0.5000 |" in text
    median = normalized_scores(json.loads(variant.read_text()), json.loads(base.read_text()))["median"]
    assert median == pytest.approx(0.55) and f"**Median normalized score: {median:.4f}**" in text
    assert "/home/someone" not in text  # local paths stay off a public card
    # the Hub's own parser reads the same metadata back
    card = ModelCard.load(skip / "README.md")
    assert sorted(r.metric_value for r in card.data.eval_results) == sorted(expected.values())
    kept = json.loads((skip / "surgery.json").read_text())["measurements"]
    assert [run["file"] for run in kept["eval"]] == ["variant.json"] and kept["baseline"]["file"] == "base.json"


def test_kept_measurements_survive_a_rerender_and_a_finetune_changes_the_relation(skip, tmp_path):
    variant = eval_json(tmp_path / "variant.json", VARIANT, executed=6)
    assert invoke("card", skip, "--eval", variant).exit_code == 0
    as_hub_source(skip, finetune={"method": "lora", "steps": 500, "lr": 0.0002})
    result = invoke("card", skip)  # no options: the kept results are shown again
    assert result.exit_code == 0, result.output
    text = (skip / "README.md").read_text()
    meta = front_matter(text)
    assert meta["base_model_relation"] == "finetune" and "model-index" in meta
    assert "## Fine-tuning" in text and "- steps: 500\n" in text and "No weights were trained" not in text
    assert "base model" not in text.split("## Results")[1].split("\n")[2]  # no baseline column without a baseline


def test_normalized_block_of_the_eval_file_gives_the_median(skip, tmp_path):
    normalized = {"baseline": "/data/full.json", "tasks": {"arc_easy": {"metric": "acc_norm,none", "normalized": 0.4}}}
    variant = eval_json(tmp_path / "v.json", {"arc_easy": VARIANT["arc_easy"]}, executed=6, normalized=normalized)
    assert invoke("card", skip, "--eval", variant).exit_code == 0
    text = (skip / "README.md").read_text()
    assert "**Median normalized score: 0.4000** over 1 task(s) (base model: `full.json`)" in text


def test_a_stand_in_task_is_flagged_on_the_card_and_kept_out_of_model_index(skip, tmp_path):
    data = {"hellaswag_standin": {"source": "local", "standin": True, "note": "STAND-IN: third-party file"}}
    results = {"hellaswag_standin": {"acc": 0.4, "acc_norm": 0.45}, "arc_easy": VARIANT["arc_easy"]}
    variant = eval_json(tmp_path / "v.json", results, executed=6)
    payload = json.loads(variant.read_text())
    payload["config"]["data"] = data
    variant.write_text(json.dumps(payload))
    assert invoke("card", skip, "--eval", variant).exit_code == 0
    text = (skip / "README.md").read_text()
    (entry,) = front_matter(text)["model-index"]
    assert {r["dataset"]["type"] for r in entry["results"]} == {"allenai/ai2_arc"}
    assert "| hellaswag_standin (STAND-IN) | acc | 0.4000 |" in text and "- hellaswag_standin: STAND-IN: third" in text


def test_apply_writes_its_card_as_huggingface_hub_does_without_importing_it(made, tmp_path):
    for name in ("skip", "par"):
        text = (made[name] / "README.md").read_text()
        assert str(ModelCard(text)) == text  # parsed and re-rendered by the Hub's client: the same bytes
    script = (
        "import sys; from surgery.apply.materialize import apply_plan; "
        f"apply_plan({str(made['source'])!r}, 'skip:1', {str(tmp_path / 'out')!r}); "
        "print(sorted(m for m in ('huggingface_hub', 'requests') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr  # apply stays lean
    assert (tmp_path / "out" / "README.md").read_text().startswith("---\nlibrary_name: transformers\n")


def test_card_without_measurements_claims_none(skip):
    result = invoke("card", skip, "--name", "someone/else")
    assert result.exit_code == 0
    text = (skip / "README.md").read_text()
    meta = front_matter(text)
    assert "model-index" not in meta and "base_model" not in meta  # a local source has no Hub id to name
    assert "# someone/else\n" in text and "No benchmark or latency results are recorded" in text


def test_surgery_class_card_explains_and_hashes_its_remote_code(made, tmp_path):
    par = Path(shutil.copytree(made["par"], tmp_path / "par"))
    assert invoke("card", par).exit_code == 0
    text = (par / "README.md").read_text()
    assert "custom_code" in front_matter(text)["tags"] and "trust_remote_code=True)" in text
    assert "What `trust_remote_code=True` runs" in text and "because the plan runs layers in parallel" in text
    for name in ("configuration_surgery.py", "modeling_surgery.py"):
        assert f"- `{name}`: sha256 `{sha256_file(par / name)}`" in text
    assert "byte-identical to the files surgery" in text
    with open(par / "modeling_surgery.py", "a") as handle:
        handle.write("\n# edited\n")
    assert invoke("card", par).exit_code == 0
    assert "They differ from the files surgery" in (par / "README.md").read_text()


def test_bench_rows_and_ratios_are_shown_with_the_machine(skip, tmp_path):
    """A bench.json in `surgery bench`'s shape (surgery.bench.schema): rows, ratios, the machine; no local paths."""
    row = {
        "model": "/scratch/tiny-skip",
        "backend": "torch",
        "prefill_ms": {"median": 12.5, "min": 12.0, "max": 14.25},
        "decode_ms_per_token": {"median": 3.75, "min": 3.5, "max": 4.0},
        "tokens_per_s": 266.7,
        "peak_memory_mb": 512.0,
        "ratio_prefill": 0.8125,
        "ratio_decode": 0.78,
    }
    skipped = {"model": "org/other", "backend": "onnx", "skipped": "n/a: no export"}
    payload = {
        "machine": {"cpu": "Test CPU", "threads": 2, "gpu": None, "versions": {"torch": "2.5.1"}},
        "settings": {"models": ["/scratch/tiny-skip"], "prompt_len": 128, "out_dir": "/scratch/bench"},
        "results": [row, skipped],
    }
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(payload))
    assert invoke("card", skip, "--bench", bench).exit_code == 0
    text = (skip / "README.md").read_text()
    # a path that is not there where the card is made, and a Hub-shaped name not in the Hub cache: numbered labels;
    # ratios from a file without round-by-round agreement checks are marked unchecked (tests/test_cards_truthful.py)
    row_text = "| model #1 | torch | 12.50 (12.00–14.25) | 3.75 | 266.7 | 512 | 0.8125 (unchecked) | 0.7800 (unchecked)"
    assert row_text in text
    assert "| model #2 | onnx | not measured (n/a: no export) |" in text
    assert "on cpu: Test CPU, threads: 2, torch 2.5.1. Settings: prompt_len: 128." in text
    assert "/scratch" not in text and "/scratch" not in json.dumps(json.loads((skip / "surgery.json").read_text()))
    del row["backend"]
    bench.write_text(json.dumps(payload))
    assert error_line(invoke("card", skip, "--bench", bench)).endswith("bench.json: results.0.backend: Field required")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d, t: ["card", t / "missing"], "checkpoint not found"),
        (lambda d, t: ["card", d["source"]], "no surgery.json: not a `surgery apply` output"),
        (lambda d, t: ["card", d["skip"], "--eval", t / "absent.json"], "absent.json: no such file"),
        (lambda d, t: ["card", d["skip"], "--eval", _write(t / "x.json", "{not json")], "cannot read --eval file"),
        (lambda d, t: ["card", d["skip"], "--eval", _write(t / "x.json", '{"results": {}}')], "non-empty"),
        (lambda d, t: ["card", d["skip"], "--eval", eval_json(t / "b.json", BASE, executed=8)], "not its results"),
        (
            lambda d, t: [
                *("card", d["skip"], "--eval", eval_json(t / "v.json", VARIANT, executed=6)),
                *("--baseline", eval_json(t / "b.json", BASE, executed=8, limit=16)),
            ],
            "same --limit",
        ),
        (lambda d, t: ["card", d["skip"], "--baseline", eval_json(t / "b.json", BASE, executed=8)], "needs --eval"),
        (lambda d, t: ["push", d["skip"], "just-a-name", "--dry-run"], "REPO_ID: 'just-a-name' must be owner/name"),
        (lambda d, t: ["push", d["skip"], "datasets/me/x", "--dry-run"], "model repo id"),
        (lambda d, t: ["push", d["skip"], REPO, "--include-onnx", t], "no .onnx file"),
    ],
)
def test_bad_inputs_are_one_error_line(make, fragment, made, tmp_path):
    readme = (made["skip"] / "README.md").read_bytes()
    assert fragment in error_line(invoke(*make(made, tmp_path)))
    assert (made["skip"] / "README.md").read_bytes() == readme  # refused before anything was written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_gguf_origin_names_a_base_model_only_when_it_is_a_hub_id():
    from surgery.apply.card import base_model_of

    assert base_model_of({"kind": "gguf", "gguf_repo": "HuggingFaceTB/SmolLM2-135M"}) == "HuggingFaceTB/SmolLM2-135M"
    assert base_model_of({"kind": "gguf", "gguf_repo": "https://github.com/x/y"}) is None
    assert base_model_of({"kind": "directory", "source": "/models/x"}) is None


# ------------------------------------------------------------------------------------------- push, fake HfApi


class FakeApi:
    """Records every call; ``fail[name]`` is a list of exceptions raised by the next calls of that method."""

    def __init__(self, fail: dict | None = None, other_types: tuple[str, ...] = ()):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail or {}
        self.other_types = other_types
        self.uploaded: list[dict[str, bytes]] = []  # README.md / surgery.json as each create_commit call sent them

    def _call(self, name: str, **kwargs):
        self.calls.append((name, kwargs))
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def create_repo(self, repo_id, **kwargs):
        self._call("create_repo", repo_id=repo_id, **kwargs)
        return f"https://hub.test/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        self._call("repo_info", repo_id=repo_id, **kwargs)

    def repo_exists(self, repo_id, repo_type=None):
        self._call("repo_exists", repo_id=repo_id, repo_type=repo_type)
        return repo_type in self.other_types

    def create_branch(self, repo_id, **kwargs):
        self._call("create_branch", repo_id=repo_id, **kwargs)

    def create_commit(self, **kwargs):
        operations = kwargs.pop("operations")
        contents = {}
        for op in operations:
            if op.path_in_repo in ("README.md", "surgery.json"):
                with op.as_file() as handle:
                    contents[op.path_in_repo] = handle.read()
        self.uploaded.append(contents)
        self._call("create_commit", paths=[op.path_in_repo for op in operations], **kwargs)
        return SimpleNamespace(commit_url=f"https://hub.test/{kwargs['repo_id']}/commit/abc")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def fake(monkeypatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(push_module, "make_api", lambda token, endpoint=None: api)
    monkeypatch.setattr(hub, "prepare_hub", lambda: False)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    return api


def test_dry_run_prints_repo_files_sizes_and_card_and_touches_nothing(skip, fake, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token
    (skip / "notes.txt").write_text("mine")
    (skip / ".README.md.x.tmp").write_text("half")
    (skip / "__pycache__").mkdir()
    (skip / "__pycache__" / "x.pyc").write_bytes(b"0")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in skip.iterdir() if p.is_file()}
    result = invoke("push", skip, REPO, "--dry-run")
    assert result.exit_code == 0, result.output
    assert fake.calls == []  # no network
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in skip.iterdir() if p.is_file()} == before
    out = result.output
    assert f"repo:     {REPO} (model, revision main" in out
    shards = sorted(p.name for p in skip.glob("*.safetensors"))
    assert len(shards) >= 2
    assert listed_files(out) == sorted(
        ["README.md", "config.json", "generation_config.json", "surgery.json", *shards, "model.safetensors.index.json"]
    )
    assert "left out: .README.md.x.tmp, __pycache__, notes.txt" in out
    card = out.split("card (README.md):\n\n")[1]
    assert f"# {REPO}\n" in card and f'from_pretrained("{REPO}")' in card
    assert front_matter(card)["library_name"] == "transformers"


def test_push_uploads_through_huggingface_hub_and_records_the_stage(skip, fake, tmp_path):
    variant = eval_json(tmp_path / "variant.json", VARIANT, executed=6)
    result = invoke("push", skip, REPO, "--private", "--eval", variant, "--commit-message", "first")
    assert result.exit_code == 0, result.stderr
    assert fake.names() == ["create_repo", "repo_info", "create_commit"]
    assert fake.calls[0][1] == {"repo_id": REPO, "repo_type": "model", "private": True, "exist_ok": True}
    upload = fake.calls[2][1]
    assert upload["commit_message"] == "first" and upload["repo_type"] == "model"
    shards = sorted(p.name for p in skip.glob("*.safetensors"))
    index_and_configs = {"model.safetensors.index.json", "config.json", "generation_config.json"}
    assert set(upload["paths"]) == {*shards, *index_and_configs, "README.md", "surgery.json"}
    record = json.loads(fake.uploaded[0]["surgery.json"])
    (stage,) = [s for s in record["history"] if s["stage"] == "push"]
    assert stage["details"]["repo_id"] == REPO and stage["details"]["eval"] == [
        {"file": "variant.json", "sha256": sha256_file(variant)}
    ]
    assert "README.md" in stage["details"]["files"]
    assert b"# me/tiny-skip\n" in fake.uploaded[0]["README.md"]
    assert (skip / "surgery.json").read_bytes() == fake.uploaded[0]["surgery.json"]  # local copy = uploaded one
    assert "commit: https://hub.test/me/tiny-skip/commit/abc" in result.output


def test_a_revision_other_than_main_is_created_as_a_branch(skip, fake):
    assert invoke("push", skip, REPO, "--revision", "v2").exit_code == 0
    assert ("create_branch", {"repo_id": REPO, "branch": "v2", "exist_ok": True}) in fake.calls
    assert fake.calls[-1][1]["revision"] == "v2"


def _http_error(cls, status: int, text: str = "denied"):
    response = requests.Response()
    response.status_code, response._content, response.url = status, text.encode(), "https://hub.test/api"
    return cls(f"{status} Client Error: {text}", response=response)


@pytest.mark.parametrize(
    "fail, other_types, fragment",
    [
        (
            {"create_repo": [_http_error(HfHubHTTPError, 401)]},
            (),
            "not authorized: the Hub rejected the token in HF_TOKEN",
        ),
        ({"create_commit": [_http_error(HfHubHTTPError, 403)]}, (), "not authorized to write to me/tiny-skip (403)"),
        ({"repo_info": [_http_error(RepositoryNotFoundError, 404)]}, ("dataset",), "exists on the Hub as a dataset"),
        ({"repo_info": [_http_error(RepositoryNotFoundError, 404)]}, (), "repository me/tiny-skip not found"),
        ({"create_repo": [requests.ConnectionError("Max retries exceeded")]}, (), "cannot reach the Hub at"),
        ({"create_commit": [RuntimeError("Error while uploading")]}, (), None),  # a bug is not disguised
    ],
)
def test_hub_failures_are_one_line_and_leave_the_local_files_as_they_were(skip, fake, fail, other_types, fragment):
    fake.fail, fake.other_types = fail, other_types
    before = {name: (skip / name).read_bytes() for name in ("README.md", "surgery.json")}
    result = invoke("push", skip, REPO)
    if fragment is None:
        assert result.exit_code == 1 and "RuntimeError" in result.stderr
    else:
        assert fragment in error_line(result)
    assert {name: (skip / name).read_bytes() for name in before} == before


def test_missing_token_is_refused_before_any_network_call(skip, fake, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    assert "no Hub token: set HF_TOKEN" in error_line(invoke("push", skip, REPO))
    assert "set MY_TOKEN" in error_line(invoke("push", skip, REPO, "--token-env", "MY_TOKEN"))
    assert fake.calls == []


def test_offline_is_refused_before_any_network_call(skip, fake, monkeypatch):
    monkeypatch.setattr(hub, "prepare_hub", lambda: True)
    assert "cannot reach the Hub" in error_line(invoke("push", skip, REPO)) and fake.calls == []


def test_an_interrupted_push_reruns_to_the_same_bytes_and_one_push_stage(skip, fake):
    fake.fail = {"create_commit": [requests.ConnectionError("connection reset")]}
    assert "cannot reach the Hub" in error_line(invoke("push", skip, REPO))
    assert "push" not in (skip / "surgery.json").read_text()  # restored: no claim of a push that failed
    assert invoke("push", skip, REPO).exit_code == 0
    assert invoke("push", skip, REPO).exit_code == 0  # a rerun after success
    uploads = [kwargs for name, kwargs in fake.calls if name == "create_commit"]
    assert len(uploads) == 3 and all(u == uploads[0] for u in uploads)  # the same files, the same commit
    assert fake.uploaded[1] == fake.uploaded[2]  # identical README.md and surgery.json: nothing new to commit
    stages = [s["stage"] for s in json.loads((skip / "surgery.json").read_text())["history"]]
    assert stages == ["apply", "push"]


def test_include_onnx_uploads_the_export_first_and_describes_its_parity(skip, fake, tmp_path):
    onnx = tmp_path / "onnx-out"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"\x08\x07onnx")
    (onnx / "config.json").write_text("{}")
    parity = {
        "max_abs_diff": 2.5e-6,
        "tolerance": 1e-3,
        "generation_checked": True,
        "generated_tokens": 32,
        "generation_equal": True,
        "passed": True,
    }
    (onnx / "export.json").write_text(json.dumps({"task": "text-generation-with-past", "parity": parity}))
    shutil.copy(skip / "surgery.json", onnx / "surgery.json")
    dry = invoke("push", skip, REPO, "--include-onnx", onnx, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert "  onnx/model.onnx " in dry.output and "  onnx/export.json " in dry.output
    assert "max |Δlogits| 2.5e-06 (tolerance 0.001); 32 greedily generated tokens identical" in dry.output
    assert 'ORTModelForCausalLM.from_pretrained("me/tiny-skip", subfolder="onnx")' in dry.output
    assert invoke("push", skip, REPO, "--include-onnx", onnx).exit_code == 0
    first, second = [kwargs for name, kwargs in fake.calls if name == "create_commit"]
    assert sorted(first["paths"]) == ["onnx/config.json", "onnx/export.json", "onnx/model.onnx", "onnx/surgery.json"]
    assert not any(path.startswith("onnx/") for path in second["paths"]) and "README.md" in second["paths"]
    other = json.loads((onnx / "surgery.json").read_text())
    other["plan"]["canonical"] = "skip:5"
    (onnx / "surgery.json").write_text(json.dumps(other))
    assert "exported from another checkpoint" in error_line(invoke("push", skip, REPO, "--include-onnx", onnx))


def test_both_commands_are_listed_by_help():
    out = invoke("--help").output
    assert "push  " in out and "card  " in out


# ------------------------------------------------------------------ push, real huggingface_hub vs a local "Hub"


class LocalHub:
    """The Hub endpoints `create_repo`, `repo_info` and `create_commit` use, in memory: repos with a file tree
    (path -> git blob sha1, or sha256 for LFS files), an LFS object store, and failures to inject."""

    def __init__(self):
        import threading

        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], dict] = {}
        self.objects: dict[str, bytes] = {}
        self.puts: list[str] = []  # every LFS upload attempt, by oid
        self.commits: list[list[str]] = []  # paths of each commit
        self.fail: dict[str, int] = {}  # "commit" or "put:<oid>" -> failures left

    def failing(self, key: str) -> bool:
        with self.lock:
            if self.fail.get(key, 0) > 0:
                self.fail[key] -= 1
                return True
        return False

    def handler(self):
        import base64
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import unquote, urlsplit

        hub_state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def reply(self, status: int, body: dict | None = None, headers: dict | None = None):
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def base(self) -> str:
                return f"http://{self.headers['Host']}"

            def do_GET(self):  # repo_info / repo_exists: /api/{type}s/{owner}/{name}[/revision/{rev}]
                parts = unquote(urlsplit(self.path).path).split("/")
                kind, repo_id = parts[2].removesuffix("s"), "/".join(parts[3:5])
                repo = hub_state.repos.get((kind, repo_id))
                if repo is None:
                    return self.reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                self.reply(200, {"id": repo_id, "sha": repo["sha"], "private": repo["private"]})

            def do_PUT(self):  # LFS content: /lfs/{oid}
                oid = self.path.rsplit("/", 1)[1]
                data = self.body()
                hub_state.puts.append(oid)
                if hub_state.failing(f"put:{oid}"):
                    return self.reply(400, {"error": "upload interrupted (injected)"})
                assert hashlib.sha256(data).hexdigest() == oid
                hub_state.objects[oid] = data
                self.reply(200)

            def do_POST(self):
                path = unquote(urlsplit(self.path).path)
                data = self.body()
                if path == "/api/repos/create":
                    request = json.loads(data)
                    repo_id = f"{request['organization']}/{request['name']}"
                    key = (request.get("type") or "model", repo_id)
                    if key in hub_state.repos:
                        url = f"{self.base()}/{repo_id}"  # the client reads it even from a 409
                        return self.reply(409, {"error": "You already created this model repo", "url": url})
                    hub_state.repos[key] = {"files": {}, "sha": "0" * 40, "private": bool(request.get("private"))}
                    return self.reply(200, {"url": f"{self.base()}/{repo_id}"})
                if path == "/api/validate-yaml":
                    content = json.loads(data)["content"]
                    yaml.safe_load(content.split("---\n")[1])  # the front matter must parse
                    return self.reply(200, {"errors": [], "warnings": []})
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = [
                        {"oid": o["oid"], "size": o["size"]}
                        if o["oid"] in hub_state.objects  # already stored: no upload action
                        else {
                            "oid": o["oid"],
                            "size": o["size"],
                            "actions": {"upload": {"href": f"{self.base()}/lfs/{o['oid']}"}},
                        }
                        for o in json.loads(data)["objects"]
                    ]
                    return self.reply(200, {"transfer": "basic", "objects": objects})
                parts = path.split("/")  # /api/models/{owner}/{name}/{preupload|commit}/{revision}
                repo_id = "/".join(parts[3:5])
                repo = hub_state.repos[("model", repo_id)]
                if parts[5] == "preupload":
                    files = [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith((".safetensors", ".onnx")) else "regular",
                            "shouldIgnore": False,
                            "oid": repo["files"].get(f["path"]),
                        }
                        for f in json.loads(data)["files"]
                    ]
                    return self.reply(200, {"files": files})
                if parts[5] == "commit":
                    if hub_state.failing("commit"):
                        return self.reply(500, {"error": "commit interrupted (injected)"})
                    lines = [json.loads(line) for line in data.splitlines() if line.strip()]
                    paths = []
                    for line in lines[1:]:
                        value = line["value"]
                        if line["key"] == "file":
                            content = base64.b64decode(value["content"])
                            oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
                        else:
                            assert line["key"] == "lfsFile" and value["oid"] in hub_state.objects
                            oid = value["oid"]
                        repo["files"][value["path"]] = oid
                        paths.append(value["path"])
                    hub_state.commits.append(paths)
                    repo["sha"] = hashlib.sha1(json.dumps(repo["files"], sort_keys=True).encode()).hexdigest()
                    return self.reply(
                        200, {"commitUrl": f"{self.base()}/{repo_id}/commit/{repo['sha']}", "commitOid": repo["sha"]}
                    )
                self.reply(404, {"error": f"no endpoint {path}"})

        return Handler


@pytest.fixture
def local_hub(monkeypatch):
    import threading
    from http.server import ThreadingHTTPServer

    import huggingface_hub.constants
    from huggingface_hub.utils import reset_sessions

    state = LocalHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # as if set before the process started, where the library reads it:
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_state", {})
    reset_sessions()
    yield state
    server.shutdown()
    monkeypatch.undo()
    reset_sessions()


def test_interrupted_push_against_a_local_hub_resends_only_what_is_missing(skip, local_hub):
    """The real upload path (huggingface_hub's preupload / LFS batch / commit calls) against a stand-in Hub."""
    dry = invoke("push", skip, REPO, "--dry-run")
    planned = set(listed_files(dry.output))
    shards = sorted(p for p in skip.glob("*.safetensors"))
    oids = [hashlib.sha256(p.read_bytes()).hexdigest() for p in shards]
    # 1. one weight upload fails mid-way: nothing is committed
    local_hub.fail[f"put:{oids[-1]}"] = 1
    assert "the Hub refused the push to me/tiny-skip" in error_line(invoke("push", skip, REPO))
    assert local_hub.commits == [] and set(local_hub.objects) == set(oids[:-1])
    # 2. the rerun resends only the missing shard; then the commit fails
    local_hub.fail["commit"] = 1
    assert "500" in error_line(invoke("push", skip, REPO))
    assert sorted(local_hub.puts) == sorted([*oids, oids[-1]])  # the failed one twice, the others once
    # 3. the rerun uploads no weights again and commits every planned file, once
    result = invoke("push", skip, REPO)
    assert result.exit_code == 0, result.stderr
    assert len(local_hub.puts) == len(oids) + 1 and len(local_hub.commits) == 1
    tree = local_hub.repos[("model", REPO)]["files"]
    assert set(tree) == planned and all(tree[p.name] == o for p, o in zip(shards, oids))
    assert (
        tree["README.md"]
        == hashlib.sha1(
            b"blob %d\0" % len((skip / "README.md").read_bytes()) + (skip / "README.md").read_bytes()
        ).hexdigest()
    )
    # 4. a rerun of a finished push changes nothing: no upload, no commit
    assert invoke("push", skip, REPO).exit_code == 0
    assert len(local_hub.puts) == len(oids) + 1 and len(local_hub.commits) == 1
