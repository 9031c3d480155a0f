"""surgery eval on the real SmolLM2-135M-Instruct: exact parity with lm-eval's own HF backend, and a plan
applied in memory scoring exactly like the checkpoint `surgery apply` writes for it.

Small limits keep this cheap on CPU; the data are the local copies in ``<repo>/../shared/data``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from resources import DATA_DIR as DATA
from resources import data_path

from surgery.apply.materialize import apply_plan

pytestmark = pytest.mark.integration

BATCH = 4
BOOTSTRAP = 1000  # perplexity stderr resamples (same on both sides)


@pytest.fixture(scope="module", autouse=True)
def _offline_and_data(monkeypatch_module):
    data_path()
    monkeypatch_module.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def smollm(smollm2_dir) -> Path:
    """SmolLM2 as a plain HF directory (what lm-eval's HF backend loads; dequantized once, in conftest)."""
    return smollm2_dir


def _lm_eval_itself(model_dir: Path, tasks: str, limit: int, tmp_path: Path, **kwargs) -> dict:
    """lm-eval's own `--model hf` path on the same local task files (its CLI's --include_path)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from surgery.evaluation.tasks import parse_tasks, resolve_local, write_task_yamls

    include = write_task_yamls(resolve_local(parse_tasks(tasks), DATA), tmp_path / "lm-eval-tasks")
    names = [path.stem for path in sorted(include.glob("*.yaml"))]
    return lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32",
        tasks=names,
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
        limit=limit,
        batch_size=BATCH,
        device="cpu",
        bootstrap_iters=BOOTSTRAP,
        **kwargs,
    )


def _assert_same_samples(ours: dict, reference: dict) -> None:
    assert ours.keys() == reference.keys()
    for task in ours:
        mine = sorted(ours[task], key=lambda s: (s["doc_id"], s["filter"]))
        theirs = sorted(reference[task], key=lambda s: (s["doc_id"], s["filter"]))
        assert [s["arguments"] for s in mine] == [s["arguments"] for s in theirs], task  # prompts / continuations
        assert [s["resps"] for s in mine] == [s["resps"] for s in theirs], task  # log-likelihoods or generations
        assert [s["filtered_resps"] for s in mine] == [s["filtered_resps"] for s in theirs], task


@pytest.fixture(scope="module")
def cli():
    from surgery.cli.main import main
    from surgery.evaluation.cli import eval_command

    main.add_command(eval_command)
    return main


COMMON = ["--data-dir", str(DATA), "--limit", "8", "--batch-size", str(BATCH), "--bootstrap-iters", str(BOOTSTRAP)]


@pytest.fixture(scope="module")
def full_json(cli, smollm, tmp_path_factory) -> Path:
    """`surgery eval` of the full model on three tasks (limit 8), written to JSON."""
    out = tmp_path_factory.mktemp("eval-full") / "full.json"
    result = CliRunner().invoke(cli, ["eval", str(smollm), "--tasks", PARITY_TASKS, *COMMON, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "lambada_openai" in result.output and f"wrote {out}" in result.output
    return out


PARITY_TASKS = "lambada_openai,arc_easy,winogrande"


def test_scores_equal_lm_eval_hf_backend_exactly(full_json, smollm, tmp_path):
    ours = json.loads(full_json.read_text())
    reference = _lm_eval_itself(smollm, PARITY_TASKS, 8, tmp_path)
    assert ours["results"] == json.loads(json.dumps(reference["results"]))  # every metric and stderr, bit for bit
    assert ours["n-samples"] == reference["n-samples"]
    assert set(ours["results"]) == {"lambada_openai", "arc_easy", "winogrande"}
    assert ours["config"]["data"]["arc_easy"]["source"] == "local" and ours["config"]["plan"] is None
    assert ours["chance"]["winogrande"] == {"acc,none": 0.5}
    print("parity:", json.dumps({t: {k: v for k, v in r.items() if "," in k} for t, r in ours["results"].items()}))


def test_gsm8k_generation_equals_lm_eval_hf_backend(smollm, tmp_path):
    from surgery.evaluation.harness import evaluate

    ours = evaluate(str(smollm), tasks="gsm8k", data_dir=DATA, limit=1, batch_size=BATCH, max_gen_toks=16,
                    bootstrap_iters=BOOTSTRAP, log_samples=True)  # fmt: skip
    reference = _lm_eval_itself(smollm, "gsm8k", 1, tmp_path, gen_kwargs={"max_gen_toks": 16}, log_samples=True)
    assert ours["results"] == reference["results"]
    _assert_same_samples(ours["samples"], reference["samples"])
    first = ours["samples"]["gsm8k"][0]
    assert first["arguments"][0][0].count("Question:") == 6  # 5-shot from the train split + the item
    assert first["resps"][0][0].strip()  # something was generated
    print("gsm8k generation:", repr(first["resps"][0][0]))


def test_plan_in_memory_scores_like_the_written_checkpoint_and_cli_normalizes(cli, full_json, smollm, tmp_path):
    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.evaluation.harness import TaskSet

    skip_json = tmp_path / "skip.json"
    variant = ["--plan", "skip:13-19", "--baseline", str(full_json), "--output", str(skip_json)]
    result = CliRunner().invoke(cli, ["eval", str(smollm), "--tasks", "lambada_openai", *COMMON, *variant])
    assert result.exit_code == 0, result.output
    assert "median normalized score" in result.output
    in_memory = json.loads(skip_json.read_text())
    assert in_memory["config"]["plan"] == "skip:13-19" and in_memory["config"]["executed_layers"] == 23

    written = apply_plan(str(smollm), "skip:13-19", tmp_path / "skip-ckpt").out_dir
    model, tokenizer = load_model_and_tokenizer(str(written))
    assert model.config.num_hidden_layers == 23
    from_checkpoint = TaskSet("lambada_openai", data_dir=DATA).run(
        model, tokenizer, limit=8, batch_size=BATCH, bootstrap_iters=BOOTSTRAP
    )
    # same ops on the same weights: identical to the last bit (log-likelihoods, perplexity, stderrs)
    assert in_memory["results"] == json.loads(json.dumps(from_checkpoint["results"]))
    results = from_checkpoint["results"]["lambada_openai"]

    full = json.loads(full_json.read_text())["results"]["lambada_openai"]
    normalized = in_memory["normalized"]["tasks"]["lambada_openai"]
    assert normalized["full"] == full["acc,none"] > 0 and normalized["score"] == results["acc,none"]
    assert normalized["normalized"] == pytest.approx(results["acc,none"] / full["acc,none"])
    assert in_memory["normalized"]["median"] == normalized["normalized"]
    assert set(in_memory["normalized"]["tasks"]) == {"lambada_openai"}  # baseline's extra tasks are ignored
    print("full:", full, "\nskip:13-19:", in_memory["results"]["lambada_openai"], "\nnormalized:", normalized)
