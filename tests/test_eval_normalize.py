"""surgery eval: the paper's normalized score, the results JSON and table, and CLI errors (no model needed)."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from surgery.evaluation.harness import baseline_mismatches, load_results, seeds_for
from surgery.evaluation.normalize import (
    chance_for,
    log_perplexity_ratio,
    normalize,
    normalized_scores,
    unnormalized_average,
)
from surgery.evaluation.report import build_payload, format_results, write_json
from surgery.evaluation.tasks import BENCHMARKS


def _payload(**tasks):
    return {"results": {task: dict(metrics) for task, metrics in tasks.items()}}


def test_normalize_endpoints_and_undefined_scale():
    assert normalize(0.8, 0.8, 0.25) == 1.0
    assert normalize(0.25, 0.8, 0.25) == 0.0
    assert normalize(0.525, 0.8, 0.25) == pytest.approx(0.5)
    assert normalize(0.1, 0.8, 0.25) == pytest.approx(-0.15 / 0.55)  # below chance: negative
    assert normalize(0.3, 0.25, 0.25) is None and normalize(0.3, 0.2, 0.25) is None


def test_chance_table_matches_the_documented_baselines():
    assert {name: (b.primary_metric, b.chance) for name, b in BENCHMARKS.items()} == {
        "lambada_openai": ("acc,none", 0.0),
        "arc_easy": ("acc_norm,none", 0.25),
        "arc_challenge": ("acc_norm,none", 0.25),
        "hellaswag": ("acc_norm,none", 0.25),
        "winogrande": ("acc,none", 0.5),
        "gsm8k": ("exact_match,strict-match", 0.0),
    }
    assert chance_for("hellaswag_standin", "acc_norm,none") == 0.25
    assert chance_for("arc_easy", "acc_norm,none", {"arc_easy": {"acc_norm,none": 0.2502}}) == 0.2502
    assert chance_for("arc_easy", "acc_norm,none", {"arc_easy": {"acc_norm": 0.26}}) == 0.26  # plain keys


def test_normalized_scores_median_over_tasks_and_perplexity_aside():
    full = _payload(
        lambada_openai={"acc,none": 0.6, "perplexity,none": 10.0},
        arc_easy={"acc,none": 0.7, "acc_norm,none": 0.65},
        winogrande={"acc,none": 0.7},
        gsm8k={"exact_match,strict-match": 0.2, "exact_match,flexible-extract": 0.25},
    )
    variant = _payload(
        lambada_openai={"acc,none": 0.3, "perplexity,none": 100.0},
        arc_easy={"acc,none": 0.5, "acc_norm,none": 0.45},
        winogrande={"acc,none": 0.6},
        gsm8k={"exact_match,strict-match": 0.0},
    )
    variant["chance"] = {"arc_easy": {"acc,none": 0.25, "acc_norm,none": 0.25}}
    out = normalized_scores(variant, full)
    values = {task: entry["normalized"] for task, entry in out["tasks"].items()}
    assert values == pytest.approx({"lambada_openai": 0.5, "arc_easy": 0.5, "winogrande": 0.5, "gsm8k": 0.0})
    assert out["median"] == pytest.approx(0.5) and out["num_tasks"] == 4 and out["warnings"] == []
    assert out["tasks"]["arc_easy"]["metric"] == "acc_norm,none"
    assert out["tasks"]["gsm8k"]["metric"] == "exact_match,strict-match"
    ppl = out["tasks"]["lambada_openai"]["perplexity"]
    assert ppl["log_ratio"] == pytest.approx(0.5)  # log 10 / log 100
    assert normalized_scores(full, full)["median"] == 1.0


def test_normalized_scores_leaves_out_what_it_cannot_scale():
    full = _payload(arc_challenge={"acc_norm,none": 0.24}, winogrande={"acc,none": 0.7})
    variant = _payload(arc_challenge={"acc_norm,none": 0.26}, winogrande={"acc": 0.6}, arc_easy={"acc_norm,none": 0.5})
    out = normalized_scores(variant, full)
    assert out["tasks"]["arc_challenge"]["normalized"] is None
    assert out["tasks"]["winogrande"]["normalized"] == pytest.approx(0.5)  # plain "acc" key accepted
    assert out["median"] == pytest.approx(0.5) and out["num_tasks"] == 1
    assert any("arc_challenge" in w and "not above chance" in w for w in out["warnings"])
    assert any("arc_easy: not in the baseline" in w for w in out["warnings"])
    assert normalized_scores(_payload(), full)["median"] is None


def test_log_perplexity_ratio_and_unnormalized_average():
    assert log_perplexity_ratio(10.0, 10.0) == 1.0
    assert log_perplexity_ratio(math.inf, 10.0) is None and log_perplexity_ratio(0.5, 10.0) is None
    assert unnormalized_average({"sst2": 0.9, "rte": 0.6, "cola": 0.3}) == pytest.approx(0.6)
    assert unnormalized_average([1.0, 0.0]) == 0.5
    with pytest.raises(ValueError):
        unnormalized_average([])


def test_seeds_default_to_lm_evals():
    assert seeds_for(None) == {
        "random_seed": 0,
        "numpy_random_seed": 1234,
        "torch_random_seed": 1234,
        "fewshot_random_seed": 1234,
    }
    assert set(seeds_for(7).values()) == {7}


LM_EVAL_RESULTS = {
    "results": {
        "lambada_openai": {
            "alias": "lambada_openai",
            "perplexity,none": 29.5,
            "perplexity_stderr,none": float("nan"),
            "acc,none": 0.5,
            "acc_stderr,none": 0.19,
        },
        "hellaswag_standin": {"alias": "hellaswag_standin", "acc,none": 0.25, "acc_norm,none": 0.5},
    },
    "versions": {"lambada_openai": 1.0, "hellaswag_standin": 1.0},
    "n-shot": {"lambada_openai": 0, "hellaswag_standin": 0},
    "higher_is_better": {"lambada_openai": {"acc": True, "perplexity": False}},
    "n-samples": {"lambada_openai": {"original": 5153, "effective": 8}, "hellaswag_standin": {"effective": 8}},
    "configs": {"lambada_openai": {"doc_to_text": "..."}},
    "pretty_env_info": "...",
    "lm_eval_version": "0.4.13",
}


def test_results_json_shape_and_table(tmp_path):
    config = {
        "model": "m",
        "plan": "skip:13-19",
        "limit": 8,
        "data": {
            "lambada_openai": {"source": "local", "files": ["x"], "standin": False},
            "hellaswag_standin": {"source": "local", "files": ["y"], "standin": True, "note": "STAND-IN: derived"},
        },
    }
    chance = {"lambada_openai": {"acc,none": 0.0}, "hellaswag_standin": {"acc,none": 0.25, "acc_norm,none": 0.25}}
    payload = build_payload(LM_EVAL_RESULTS, config, chance)
    assert set(payload) == {
        "results",
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "config",
        "chance",
        "lm_eval",
    }
    assert payload["results"]["lambada_openai"]["acc,none"] == 0.5  # lm-eval's keys, verbatim
    payload["normalized"] = {
        "baseline": "full.json",
        **normalized_scores(
            payload, _payload(lambada_openai={"acc,none": 0.6}, hellaswag_standin={"acc_norm,none": 0.75})
        ),
    }
    path = tmp_path / "out" / "results.json"
    write_json(payload, path)
    written = json.loads(path.read_text())
    assert written["results"]["lambada_openai"]["perplexity_stderr,none"] is None  # NaN -> null
    assert written["config"]["data"]["hellaswag_standin"]["standin"] is True
    assert written["normalized"]["tasks"]["hellaswag_standin"]["normalized"] == pytest.approx(0.5)
    assert load_results(path)["results"] == written["results"]

    table = format_results(payload)
    assert "hellaswag_standin" in table and "local STAND-IN" in table and "note: hellaswag_standin: STAND-IN" in table
    assert "median normalized score: 0.6667 over 2 task(s)" in table  # lambada 0.5/0.6, hellaswag 0.5
    assert "perplexity" in table


def test_baseline_mismatch_warnings():
    config = {"limit": 8, "data": {"arc_easy": {"source": "local"}}}
    assert baseline_mismatches(config, {"plan": None, "limit": 8, "data": {"arc_easy": {"source": "local"}}}) == []
    warnings = baseline_mismatches(config, {"plan": "skip:3", "limit": 16, "data": {"arc_easy": {"source": "hub"}}})
    assert len(warnings) == 3


# ---------------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    from surgery.cli.main import main
    from surgery.evaluation.cli import eval_command

    main.add_command(eval_command)
    return main


def test_cli_unknown_task_is_one_error_line(cli, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "org/not-downloaded", "--tasks", "arc_easy,mmlu"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: unknown task mmlu; known tasks: lambada_openai, arc_easy, arc_challenge, hellaswag, winogrande, gsm8k"
    ]


def test_cli_missing_local_data_and_baseline(cli, tmp_path):
    result = CliRunner().invoke(cli, ["eval", "org/not-downloaded", "--tasks", "gsm8k", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "error: task 'gsm8k': no local data" in result.output
    result = CliRunner().invoke(cli, ["eval", "org/not-downloaded", "--baseline", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "error: baseline results not found" in result.output
    (tmp_path / "bad.json").write_text("[1]")
    result = CliRunner().invoke(cli, ["eval", "org/not-downloaded", "--baseline", str(tmp_path / "bad.json")])
    assert result.exit_code == 2 and "has no 'results' mapping" in result.output
    result = CliRunner().invoke(cli, ["eval", "org/not-downloaded", "--limit", "0"])
    assert result.exit_code == 2 and "must be positive" in result.output


def test_a_long_cpu_run_is_announced_with_a_hint(capsys):
    from surgery.evaluation.run import LONG_RUN_DOCS, announce_cost

    announce_cost({"arc_easy": 2376, "winogrande": 1267}, None, "cpu")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "evaluating 3643 documents (arc_easy 2376, winogrande 1267)"
    assert err[1].startswith("note: 3643 documents on a CPU take hours") and "--limit 100" in err[1]
    announce_cost({"arc_easy": LONG_RUN_DOCS}, 100, "cpu")
    assert capsys.readouterr().err.splitlines() == [f"evaluating {LONG_RUN_DOCS} documents (arc_easy {LONG_RUN_DOCS})"]
