"""``surgery sweep`` / ``plot``: resumable in-memory sweeps on a tiny Llama, the Ray executor, scores and figures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from sweep_fixtures import SKIP_REVERSE, tiny_data, tiny_llama_with_tokenizer, write_recipe

from surgery.cli.main import main
from surgery.errors import SurgeryError
from surgery.sweep.config import SweepConfig
from surgery.sweep.report import VOLATILE_FIELDS, read_records, stable_record
from surgery.sweep.run import run_sweep


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return {
        "model": tiny_llama_with_tokenizer(tiny_checkpoints["llama"], root / "tiny-llama"),
        "data": tiny_data(root / "data"),
        "recipe": write_recipe(root / "skip_reverse.yaml", SKIP_REVERSE),
    }


def _config(tiny, out, **extra) -> SweepConfig:
    settings = dict(recipe=tiny["recipe"], model=str(tiny["model"]), out_dir=out, data_dir=tiny["data"], limit=4)
    return SweepConfig.validated(**{**settings, "progress": False, **extra})


def _stable(out) -> list[dict]:
    return sorted((stable_record(r) for r in read_records(out)), key=lambda r: r["key"])


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """One uninterrupted local sweep: identity + skip N=1..3 + reverse N=1,3 on LAMBADA (limit 4)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray actor (num_cpus=1): identical float sums
    try:
        summary = run_sweep(_config(tiny, out))
    finally:
        torch.set_num_threads(threads)
    return out, summary


def test_sweep_writes_one_record_per_variant_and_task(reference):
    out, summary = reference
    records = read_records(out)
    assert summary["units"] == len(records) == 6 and summary["evaluated"] == 6
    identity = records[0]
    assert identity["plan"] == "identity" and identity["variant"] == "identity" and identity["params"] == {}
    assert [r["plan"] for r in records] == ["identity", "skip:2-6", "skip:3-5", "skip:4", "reverse:2-6", "reverse:4"]
    by_params = {(r["variant"], r["params"].get("N")): r for r in records}
    assert by_params[("skip", 1)]["plan"] == "skip:2-6"  # paper N=1 on T=8: layers N+1 .. T-N-1
    assert by_params[("skip", 3)]["plan"] == "skip:4" and by_params[("reverse", 3)]["plan"] == "reverse:4"
    assert by_params[("skip", 1)]["derived"] == {"center": 4, "lo": 2, "hi": 6, "M": 5, "pct": 62.5}
    for record in records:
        assert record["task"] == "lambada_openai" and record["limit"] == 4 and record["n"] == 4
        assert 0.0 <= record["metrics"]["acc,none"] <= 1.0 and record["metrics"]["perplexity,none"] > 1
        assert record["model"]["layers"] == 8 and record["model"]["identity"].startswith("sha256:")
        assert record["provenance"]["surgery"] and record["settings"]["batch_size"] == 8
        assert set(VOLATILE_FIELDS) <= set(record)
    assert len({r["key"] for r in records}) == 6
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["units"] == 6 and manifest["model"]["layers"] == 8


def test_rerun_skips_everything_done(reference, tiny):
    out, _ = reference
    before = (out / "results.jsonl").read_bytes()
    summary = run_sweep(_config(tiny, out))
    assert summary["done_before"] == 6 and summary["evaluated"] == 0
    assert (out / "results.jsonl").read_bytes() == before
    assert not (out / ".sweep.lock").exists()
    from surgery.sweep.report import ResultStore

    with ResultStore(out).locked(), pytest.raises(SurgeryError, match="another sweep is writing"):
        run_sweep(_config(tiny, out))


def test_killed_sweep_resumes_to_the_uninterrupted_result(reference, tiny, tmp_path, monkeypatch, one_thread):
    """Interrupted after three evaluations, with a torn half-written line: the rerun completes the same records."""
    from surgery.sweep import workers

    out = tmp_path / "run"
    calls = {"n": 0}
    original = workers.Worker.run

    def flaky(self, plan, task):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, plan, task)

    monkeypatch.setattr(workers.Worker, "run", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(tiny, out))
    assert len(read_records(out)) == 3
    with open(out / "results.jsonl", "a") as handle:
        handle.write('{"key": "torn", "plan": "skip:')  # what a kill in the middle of a write leaves
    monkeypatch.setattr(workers.Worker, "run", original)
    summary = run_sweep(_config(tiny, out))
    assert summary["done_before"] == 3 and summary["evaluated"] == 3
    assert _stable(out) == _stable(reference[0])


@pytest.mark.slow  # Ray's start (~17 s) and two actor processes importing torch + lm-eval: ~2 min on 2 busy cores
def test_ray_executor_gives_the_local_results(reference, tiny, tmp_path):
    """Two actors on a local 2-CPU Ray instance; results equal the local executor's except VOLATILE_FIELDS."""
    pytest.importorskip("ray")
    out = tmp_path / "run"
    summary = run_sweep(_config(tiny, out, executor="ray", workers=2))
    assert summary["evaluated"] == 6
    assert _stable(out) == _stable(reference[0])
    # the file holds one complete line per record, nothing else
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line)["key"] for line in lines)


def test_ray_missing_is_one_clear_error(tiny, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SurgeryError, match=r"pip install 'surgery\[ray\]'"):
        run_sweep(_config(tiny, tmp_path / "run", executor="ray"))
    assert not (tmp_path / "run").exists()


def test_plot_writes_figures_and_a_table(reference, tmp_path):
    from surgery.sweep.plots import plot_run

    out, _ = reference
    paths = plot_run(out, tmp_path / "plots")
    png = tmp_path / "plots" / "plots" / "skip_reverse.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    table = (tmp_path / "plots" / "summary.md").read_text()
    assert "| full model | - | `identity` |" in table and "`skip:2-6`" in table and "`reverse:4`" in table
    # a random tiny model is at chance on LAMBADA (acc 0): no median; its log-perplexity ratio is still there
    assert "| full model | - | `identity` | 0.000 ± 0.000 (4) | 1.000 | - |" in table


def test_heatmap_and_similarity_recipes(tiny, tmp_path, one_thread):
    from surgery.sweep.plots import plot_run

    grid = write_recipe(
        tmp_path / "grid.yaml",
        'version: 1\nfigure: "10"\ntitle: t\nfinding: f\nkind: eval\ntasks: [lambada_openai]\nplot: heatmap\n'
        'x: M\ny: K\nvariants:\n  - {name: lp, plan: "parallel:{lo}-{hi}x{K}", grid: {N: [1, 2], K: [1, 2]}}\n',
    )
    run_sweep(_config(tiny, tmp_path / "grid", recipe=grid, limit=2))
    assert (tmp_path / "grid" / "plots" / "grid.png") in plot_run(tmp_path / "grid")
    similarity = write_recipe(
        tmp_path / "sim.yaml",
        'version: 1\nfigure: "15"\ntitle: t\nfinding: f\nkind: similarity\nplot: similarity\n'
        'variants:\n  - {name: skip, plan: "skip:{lo}-{hi}", grid: {N: "T//2 - 3"}}\n',
    )
    run_sweep(_config(tiny, tmp_path / "sim", recipe=similarity, limit=3))
    records = read_records(tmp_path / "sim")
    assert [r["plan"] for r in records] == ["identity", "skip:2-6"]
    assert records[0]["metrics"]["entries"] == 9 and records[1]["metrics"]["entries"] == 4 and records[0]["n"] == 3
    written = plot_run(tmp_path / "sim")
    assert tmp_path / "sim" / "plots" / "layer_stats.png" in written
    assert (tmp_path / "sim" / records[1]["files"] / "matrix.npy").is_file()
    last = json.loads((tmp_path / "sim" / records[1]["files"] / "similarity.json").read_text())["hidden_states"]
    assert records[1]["metrics"]["last_text_norm"] == round(last["mean_norm_text_tokens"][-1], 4)  # the plot's
    summary = (tmp_path / "sim" / "summary.md").read_text()
    assert f"| {records[1]['metrics']['last_text_norm']} (after final norm) |" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--grid", "Q=1,2"], "--grid Q: not a parameter"),
        (["--grid", "N"], "expected NAME=VALUES"),
        (["--variants", "nope"], "--variants nope: not in"),
        (["--address", "auto"], "needs --executor ray"),
        (["--limit", "0"], "must be positive"),
        (["--tasks", "nope"], "unknown task nope"),
        (["--set", "epochs=2"], "--set epochs: not a setting of eval recipes"),
    ],
)
def test_bad_sweep_arguments_are_one_error_line(tiny, tmp_path, args, message):
    argv = ["sweep", str(tiny["recipe"]), "--model", str(tiny["model"]), "--out", str(tmp_path / "o"), *args]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert message in lines[-1] and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_plot_of_a_folder_that_is_not_a_sweep(tmp_path):
    result = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert result.exit_code == 2 and "is not a sweep run directory" in result.output


def test_scores_normalized_median_error_bars_and_seed_aggregate():
    from surgery.sweep.scores import aggregate, binomial_se, score_rows

    def record(variant, plan, params, task, value, n=100):
        metric = {"lambada_openai": "acc,none", "arc_easy": "acc_norm,none", "winogrande": "acc,none"}[task]
        chance = {"lambada_openai": 0.0, "arc_easy": 0.25, "winogrande": 0.5}[task]
        return {"variant": variant, "label": variant, "params": params, "derived": {}, "plan": plan, "task": task,
                "metrics": {metric: value}, "n": n, "chance": {metric: chance}}  # fmt: skip

    full = {"lambada_openai": 0.6, "arc_easy": 0.75, "winogrande": 0.7}
    records = [record("identity", "identity", {}, t, v) for t, v in full.items()]
    for seed, values in enumerate([(0.3, 0.5, 0.6), (0.6, 0.25, 0.6)]):
        for (task, _), value in zip(full.items(), values):
            records.append(record("shuffle", f"shuffle:1-2@{seed}", {"N": 1, "seed": seed}, task, value))
    rows = score_rows(records, "eval")
    assert rows[0]["score"] == pytest.approx(1.0)
    first = rows[1]  # normalized: lambada 0.5, arc 0.5, winogrande 0.5
    assert first["score"] == pytest.approx(0.5)
    assert first["per_task"]["arc_easy"]["normalized_se"] == pytest.approx(binomial_se(0.5, 100) / 0.5)
    assert rows[2]["score"] == pytest.approx(0.5)  # 1.0, 0.0, 0.5 -> median 0.5
    combined = aggregate(rows, "seed")
    shuffle = next(r for r in combined if r["variant"] == "shuffle")
    assert shuffle["count"] == 2 and shuffle["score"] == pytest.approx(0.5) and shuffle["score_se"] == 0.0
    assert shuffle["per_task"]["lambada_openai"]["normalized"] == pytest.approx(0.75)
    assert binomial_se(0.5, 4) == pytest.approx(0.25) and binomial_se(None, 4) is None
    glue = score_rows(
        [{**record("identity", "identity", {}, "lambada_openai", 0), "task": t, "metrics": {"score": s}}
         for t, s in (("sst2", 0.9), ("cola", 0.3))],
        "glue",
    )  # fmt: skip
    assert glue[0]["score"] == pytest.approx(0.6)  # the unnormalized average


def test_best_cell_per_column():
    from surgery.sweep.plots import best_cells

    cells = {(4, 1): 0.2, (4, 2): 0.5, (4, 3): 0.4, (8, 1): 0.1, (8, 3): 0.3}
    assert best_cells(cells) == {4: 2, 8: 3}


def test_glue_recipe_fine_tunes_each_variant(tiny_checkpoints, tmp_path, one_thread):
    """A GLUE recipe on a tiny BERT: one fine-tune per (variant, task), scored by the unnormalized average."""
    from sweep_fixtures import char_tokenizer

    from surgery.sweep.scores import score_rows

    model = tmp_path / "bert"
    import shutil

    shutil.copytree(tiny_checkpoints["bert"], model)
    char_tokenizer().save_pretrained(model)
    sst2 = tmp_path / "data" / "SST-2"
    sst2.mkdir(parents=True)
    rows = "".join(f"{'good fun' if i % 2 else 'bad dull'} {i}\t{i % 2}\n" for i in range(12))
    for name in ("train.tsv", "dev.tsv"):
        (sst2 / name).write_text("sentence\tlabel\n" + rows)
    recipe = write_recipe(
        tmp_path / "glue.yaml",
        "version: 1\nfigure: A.8\ntitle: t\nfinding: f\nkind: glue\ntasks: [sst2]\nx: N\n"
        "settings: {epochs: 1, batch_size: 4, lr: 1.0e-3}\n"
        'variants:\n  - {name: skip, plan: "skip:{lo}-{hi}", grid: {N: [2]}}\n',
    )
    config = SweepConfig.validated(
        recipe=recipe, model=str(model), out_dir=tmp_path / "run", data_dir=tmp_path / "data", limit=8,
        overrides=["max_train=8"], progress=False,
    )  # fmt: skip
    run_sweep(config)
    records = read_records(tmp_path / "run")
    assert [(r["plan"], r["task"], r["n"]) for r in records] == [("identity", "sst2", 8), ("skip:3-5", "sst2", 8)]
    assert records[1]["executed"] == "0-2 6-7" and records[1]["train_examples"] == 8
    assert records[0]["settings"]["max_train"] == 8 and records[0]["settings"]["epochs"] == 1
    rows = score_rows(records, "glue")
    assert rows[0]["score"] == records[0]["metrics"]["score"] == records[0]["metrics"]["accuracy"]


def test_without_the_eval_extra_sweep_is_one_line_and_recipes_still_validate(tiny, tmp_path):
    from test_packaging import _run_without_extras

    result = _run_without_extras(
        "sweep", str(tiny["recipe"]), "--model", str(tiny["model"]), "--out", str(tmp_path / "o"), cwd=tmp_path
    )
    lines = [line for line in result.stderr.splitlines() if not line.startswith("EXTRA MODULES LOADED")]
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: `surgery sweep` needs the [eval] extra")
    assert "pip install 'surgery[eval]'" in lines[0]
    result = _run_without_extras("recipe", "validate", str(tiny["recipe"]), cwd=tmp_path)
    assert result.returncode == 0 and "1 recipe(s) valid" in result.stdout
    assert "EXTRA MODULES LOADED: []" in result.stderr
