"""Hostile inputs to `surgery card` / `surgery push` cards and `surgery plot` (issue 18, items 6 and 9).

* numbers that are not finite are refused at the edge, and ones already kept in surgery.json no longer block
  every later card and push;
* text from files is inert on the card (no HTML, no link, no broken table, no front matter, metadata dumped
  safely), the bench machine is published through an allow-list;
* `surgery plot` writes only inside its output folder, whatever sweep.json says.

Push's file safety, ONNX provenance and URL redaction: test_hostile_publish.py.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import test_publish as publish
import yaml
from test_publish import REPO, VARIANT, error_line, eval_json, front_matter, invoke

# test_publish's fixtures, used here by name: the checkpoints made once, a fresh copy, the fake HfApi
made, skip, fake = publish.made, publish.skip, publish.fake

# -------------------------------------------------------------------------------------- non-finite numbers


def _nan_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _eval_with(tmp_path: Path, edit) -> Path:
    path = eval_json(tmp_path / "hostile.json", VARIANT, executed=6)
    payload = json.loads(path.read_text())
    edit(payload)
    path.write_text(json.dumps(payload))  # json writes NaN / Infinity / -Infinity as Python reads them
    return path


def _bench(tmp_path: Path, **row) -> Path:
    measured = {
        "model": "tiny-skip",
        "backend": "torch",
        "prefill_ms": {"median": 12.5, "min": 12.0, "max": 14.25},
        "decode_ms_per_token": {"median": 3.75, "min": 3.5, "max": 4.0},
        **row,
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"machine": {"cpu": "Test CPU"}, "settings": {}, "results": [measured]}))
    return path


NON_FINITE = {
    "NaN metric": (
        lambda t: ["--eval", _eval_with(t, lambda p: p["results"]["arc_easy"].update({"acc,none": float("nan")}))],
        "arc_easy.acc,none",
    ),  # fmt: skip
    "Infinity stderr": (
        lambda t: [
            "--eval",
            _eval_with(t, lambda p: p["results"]["arc_easy"].update({"acc_stderr,none": float("inf")})),
        ],
        "arc_easy.acc_stderr,none",
    ),  # fmt: skip
    "-Infinity metric": (
        lambda t: [
            "--eval",
            _eval_with(t, lambda p: p["results"]["lambada_openai"].update({"perplexity,none": -float("inf")})),
        ],
        "perplexity,none",
    ),  # fmt: skip
    "1e999 literal": (
        lambda t: ["--eval", _nan_file(t / "e.json", '{"results": {"arc_easy": {"acc,none": 1e999}}}')],
        "not a finite number",
    ),
    "int beyond float": (
        lambda t: ["--eval", _nan_file(t / "e.json", '{"results": {"arc_easy": {"acc,none": 1%s}}}' % ("0" * 400))],
        "not a finite number",
    ),
    "NaN chance": (
        lambda t: ["--eval", _eval_with(t, lambda p: p["chance"]["arc_easy"].update({"acc,none": float("nan")}))],
        "chance.arc_easy.acc,none",
    ),  # fmt: skip
    "NaN normalized": (
        lambda t: [
            "--eval",
            _eval_with(
                t,
                lambda p: p.update(
                    normalized={"tasks": {"arc_easy": {"metric": "acc,none", "normalized": float("nan")}}}
                ),
            ),
        ],
        "normalized.tasks.arc_easy.normalized",
    ),  # fmt: skip
    "absurd example count": (
        lambda t: ["--eval", _eval_with(t, lambda p: p["n-samples"]["arc_easy"].update(effective=-5))],
        "n-samples.arc_easy.effective",
    ),
    "NaN baseline": (
        lambda t: [
            *("--eval", eval_json(t / "v.json", VARIANT, executed=6)),
            *(
                "--baseline",
                _eval_with(
                    t,
                    lambda p: (
                        p.update(config={"executed_layers": 8})
                        or p["results"]["arc_easy"].update({"acc,none": float("nan")})
                    ),
                ),
            ),
        ],
        "--baseline",
    ),  # fmt: skip
    "NaN bench median": (
        lambda t: ["--bench", _bench(t, prefill_ms={"median": float("nan"), "min": 1, "max": 2})],
        "results.0.prefill_ms.median",
    ),  # fmt: skip
    "Infinity bench tokens/s": (lambda t: ["--bench", _bench(t, tokens_per_s=float("inf"))], "results.0.tokens_per_s"),
}


@pytest.mark.parametrize("case", list(NON_FINITE), ids=list(NON_FINITE))
@pytest.mark.parametrize("command", ["card", "push"])
def test_non_finite_numbers_are_refused_at_the_edge(case, command, skip, tmp_path, fake):
    make, fragment = NON_FINITE[case]
    before = {name: (skip / name).read_bytes() for name in ("README.md", "surgery.json")}
    args = ["card", skip] if command == "card" else ["push", skip, REPO, "--dry-run"]
    line = error_line(invoke(*args, *make(tmp_path)))
    assert fragment in line, line
    assert {name: (skip / name).read_bytes() for name in before} == before
    assert not re.search(r"\b(nan|inf)\b", (skip / "README.md").read_text().lower())


def _kept(skip: Path, tmp_path: Path, edit) -> None:
    """Measurements kept in surgery.json, then spoiled as an older version (or a hand edit) left them."""
    variant = eval_json(tmp_path / "variant.json", VARIANT, executed=6)
    base = eval_json(tmp_path / "base.json", {"arc_easy": VARIANT["arc_easy"]}, executed=8)
    assert invoke("card", skip, "--eval", variant, "--baseline", base, "--bench", _bench(tmp_path)).exit_code == 0
    record = json.loads((skip / "surgery.json").read_text())
    edit(record["measurements"])
    (skip / "surgery.json").write_text(json.dumps(record))


KEPT = {
    "NaN kept in eval": (
        lambda m: m["eval"][0]["results"]["arc_easy"].update({"acc,none": float("nan")}),
        ["eval", "baseline"],
    ),
    "nulls kept (older version)": (
        lambda m: [metrics.update(dict.fromkeys(metrics)) for metrics in m["eval"][0]["results"].values()],
        ["eval", "baseline"],
    ),
    "Infinity kept in bench": (lambda m: m["bench"]["results"][0].update(tokens_per_s=float("inf")), ["bench"]),
    "garbage kept in baseline": (lambda m: m.update(baseline={"results": "x"}), ["baseline"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(KEPT), ids=list(KEPT))
def test_spoiled_kept_measurements_are_left_off_with_a_warning_not_a_dead_end(case, skip, tmp_path, fake):
    edit, dropped = KEPT[case]
    _kept(skip, tmp_path, edit)
    for args in (["push", skip, REPO, "--dry-run"], ["card", skip]):  # a dry run writes nothing: the card still warns
        result = invoke(*args)
        assert result.exit_code == 0, result.stderr
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        assert [w.split()[2] for w in warnings] == dropped, result.stderr
        assert all("give --" in w and "again to show them" in w for w in warnings)
    result = invoke("card", skip)  # the card left them out of surgery.json too: no more warnings
    assert result.exit_code == 0 and "warning" not in result.stderr
    text = (skip / "README.md").read_text()
    assert not re.search(r"\b(nan|inf)\b", text.lower())
    assert ("## Results" in text) == ("eval" not in dropped) and ("## Latency" in text) == ("bench" not in dropped)
    # giving the option again puts the results back
    variant = eval_json(tmp_path / "again.json", VARIANT, executed=6)
    result = invoke("card", skip, "--eval", variant, "--bench", _bench(tmp_path))
    assert result.exit_code == 0 and "warning" not in result.stderr and "## Results" in (skip / "README.md").read_text()


# ---------------------------------------------------------------------------------- text from files on the card


def _body(text: str) -> str:
    """The card below its front matter, without the one link it has by design (to the project)."""
    from surgery import PROJECT_URL

    return text.split("---\n", 2)[2].replace(f"[surgery]({PROJECT_URL})", "")


def _results_table(text: str) -> list[str]:
    return [line for line in text.split("## Results\n\n")[1].split("\n\n")[0].splitlines()]


def _card_with_tasks(skip: Path, tmp_path: Path, results: dict, **extra) -> str:
    path = eval_json(tmp_path / "e.json", results, executed=6, **extra)
    result = invoke("card", skip, "--eval", path)
    assert result.exit_code == 0, result.stderr
    return (skip / "README.md").read_text()


SCRIPT = "<script>alert(1)</script>"
HOSTILE_TASKS = {
    "html task": SCRIPT,
    "img onerror": '<img src=x onerror="alert(1)">',
    "pipe in task": "a | b | c",
    "front matter": "x\n---\nlicense: evil\n---\n# pwned",
    "link": "[click](javascript:alert(1))",
    "image": "![x](http://tracker.example/p.png)",
    "backticks": "``` evil fence",
    "bidi override": "abc\u202edcba",
    "yaml specials": "key: value\n- item\n? q",
}


@pytest.mark.parametrize("case", list(HOSTILE_TASKS), ids=list(HOSTILE_TASKS))
def test_task_names_and_metric_keys_are_inert_on_the_card(case, skip, tmp_path):
    hostile = HOSTILE_TASKS[case]
    text = _card_with_tasks(skip, tmp_path, {hostile: {"acc": 0.5, f"{hostile}_m": 0.25}})
    meta = front_matter(text)
    assert set(meta) == {"library_name", "pipeline_tag", "tags", "model-index"}  # nothing added by the data
    assert (
        text.split("\n").count("---") == 2 and "\n# pwned" not in text and "license: evil" not in text.split("---")[1]
    )
    body = _body(text)
    for forbidden in ("<script", "<img", "\u202e", "\ud800"):
        assert forbidden not in text, forbidden  # nor in the metadata
    assert "](" not in body and [line for line in body.splitlines() if line.startswith("```")] == ["```python", "```"]
    rows = _results_table(text)
    assert all(row.count("|") == 5 for row in rows), rows  # task, metric, this model, examples: no extra cell
    (entry,) = meta["model-index"]
    assert all("\n" not in r["dataset"]["name"] for r in entry["results"])


@pytest.mark.parametrize("where", ["task", "metric", "note"])
def test_text_that_is_not_unicode_is_refused_with_one_line(where, skip, tmp_path):
    """A lone surrogate (JSON's \\ud800) can be neither stored in surgery.json nor written into the card."""
    bad = "x\ud800y"
    task, metric = (bad, "acc") if where == "task" else ("arc_easy", bad if where == "metric" else "acc")
    path = eval_json(tmp_path / "e.json", {task: {metric: 0.5}}, executed=6)
    if where == "note":
        payload = json.loads(path.read_text())
        payload["config"]["data"] = {"arc_easy": {"note": bad}}
        path.write_text(json.dumps(payload))
    before = (skip / "surgery.json").read_bytes()
    assert "is not valid Unicode text" in error_line(invoke("card", skip, "--eval", path))
    assert (skip / "surgery.json").read_bytes() == before


def test_notes_sources_and_versions_from_the_eval_file_are_inert(skip, tmp_path):
    path = eval_json(tmp_path / "e.json", {"arc_easy": VARIANT["arc_easy"]}, executed=6)
    payload = json.loads(path.read_text())
    payload["config"].update(
        lm_eval_version=f"0.4 {SCRIPT}",
        surgery_version="1 | 2",
        dtype="bf16\n## Injected heading",
        data={"arc_easy": {"source": "<b>local</b>", "note": "[x](javascript:alert(1)) ![t](http://t.example/p.png)"}},
    )
    payload["normalized"] = {"baseline": "/home/alice/full.json", "warnings": [SCRIPT], "tasks": {}}
    path.write_text(json.dumps(payload))
    assert invoke("card", skip, "--eval", path).exit_code == 0
    text = (skip / "README.md").read_text()
    for forbidden in ("<script", "<b>", "](", "\n## Injected", "/home/alice"):
        assert forbidden not in _body(text), forbidden
    assert "&lt;b&gt;local&lt;/b&gt;" in text and "1 &#124; 2" in text


def test_an_eval_file_named_with_backticks_keeps_its_code_span(skip, tmp_path):
    path = eval_json(tmp_path / "a`b``c.json", {"arc_easy": VARIANT["arc_easy"]}, executed=6)
    assert invoke("card", skip, "--eval", path).exit_code == 0
    assert "- this model: ```a`b``c.json``` (sha256" in (skip / "README.md").read_text()


def test_bench_machine_is_published_through_an_allow_list_and_rows_are_inert(skip, tmp_path):
    payload = {
        "machine": {
            "cpu": "<img src=x onerror=alert(1)>",
            "gpu": "H200 | fast",
            "threads": 2,
            "hostname": "alice-laptop",
            "/home/alice/.ssh/id_rsa": "x",
            "user": "alice",
            "python": "/home/alice/venv/bin/python",
            "versions": {"torch": "2.5.1", "/home/alice/pkg": "1", "evil": "/opt/secret", "ok-pkg": "1.0<i>"},
        },
        "settings": {"prompt_len": 128, "/home/alice/.ssh/id_rsa": 1, "note": "a\nb"},
        "results": [
            {"model": "m | x\n## h", "backend": SCRIPT, "skipped": "[x](javascript:alert(1))"},
        ],
    }
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(payload))
    result = invoke("card", skip, "--bench", bench)
    assert result.exit_code == 0, result.stderr
    text = (skip / "README.md").read_text()
    kept = json.loads((skip / "surgery.json").read_text())["measurements"]["bench"]
    assert set(kept["machine"]) == {"cpu", "gpu", "threads", "versions"}  # hostname, user, paths: gone
    assert kept["machine"]["versions"] == {"torch": "2.5.1", "ok-pkg": "1.0<i>"}
    assert set(kept["settings"]) == {"prompt_len", "note"}
    for forbidden in ("alice", "id_rsa", "/opt/secret", "<script", "<i>", "](", "\n## h"):
        assert forbidden not in _body(text), forbidden
    latency = text.split("## Latency")[1]
    rows = [line for line in latency.splitlines() if line.startswith("|")]
    assert len(rows) == 3 and all(row.count("|") == 9 for row in rows), rows


def _hostile_record(skip: Path, edit) -> None:
    record = json.loads((skip / "surgery.json").read_text())
    edit(record)
    (skip / "surgery.json").write_text(json.dumps(record))


def test_fields_of_surgery_json_are_inert_on_the_card(skip):
    def edit(record):
        record["source"].update(kind="hub", repo_id=f"org/x{SCRIPT}", revision="main`\n## r")
        record["plan"]["given"] = "version: 1\n```\n<script>alert(1)</script>\n```\n# pwned"
        record["output"]["architecture"] = "Llama`<b>x</b>"
        record["history"].append(
            {"stage": "finetune", "surgery_version": "0.1 | x", "date": "d\n---", "details": {"a|b": "c\n| d |"}}
        )
        record["history"].append({"stage": SCRIPT, "surgery_version": "0", "date": "d", "details": {"k": SCRIPT}})

    _hostile_record(skip, edit)
    result = invoke("card", skip)
    assert result.exit_code == 0, result.stderr
    text = (skip / "README.md").read_text()
    meta = front_matter(text)
    assert "base_model" not in meta  # not a Hub id: not named in the metadata
    assert "<script" not in text and "<b>" not in text
    fenced = "````yaml\nversion: 1\n```\n&lt;script&gt;alert(1)&lt;/script&gt;\n```\n# pwned\n````"
    assert fenced in text  # inside a fence longer than any backtick run in it
    assert text.split("\n").count("---") == 2
    finetune = text.split("## Fine-tuning")[1].split("\n\n")[2].splitlines()
    assert finetune == ["- a&#124;b: c &#124; d &#124;"], finetune  # one list line, no table cell break


@pytest.mark.parametrize(
    "name",
    ['x"); import os; os.system("id"); ("', "a\n```\n<script>\n---", "n`\\"],
    ids=["quote", "fence", "backslash"],
)
def test_the_model_name_is_a_python_literal_in_the_code_and_inert_in_the_text(name, skip):
    assert invoke("card", skip, "--name", name).exit_code == 0
    text = (skip / "README.md").read_text()
    code = text.split("```python\n")[1].split("\n```")[0]
    calls = [node for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Call)]
    shown = "path/to/" + " ".join(name.split("\n")).strip()  # not a Hub id: a placeholder path to replace
    assert [ast.literal_eval(call.args[0]) for call in calls] == [shown] * 2
    assert text.split("\n").count("---") == 2 and "<script" not in text


def test_metadata_is_dumped_safely_and_parses_back_to_the_same_values(skip, tmp_path):
    task = "weird: [task]\n\u0085{x}"
    text = _card_with_tasks(skip, tmp_path, {task: {"acc": 0.5}})
    (entry,) = yaml.safe_load(text.split("---\n")[1])["model-index"]
    assert entry["results"][0]["dataset"]["name"] == "weird: [task]  {x} (8 of 2000 examples)"  # controls: spaces


# ---------------------------------------------------------------------------------------- surgery plot paths


def _run_dir(root: Path, recipe_name: str) -> Path:
    """A finished eval sweep, written by hand: the full model and two variants on one task."""
    root.mkdir(parents=True)
    spec = {"kind": "eval", "plot": "curves", "x": "N", "figure": "2", "title": "t", "finding": "f"}
    variants = [{"name": "identity", "params": {}, "plan": "identity"}] + [
        {"name": "skip", "params": {"N": n}, "plan": f"skip:{n}"} for n in (1, 2)
    ]
    manifest = {
        "recipe": "r.yaml",
        "recipe_name": recipe_name,
        "recipe_spec": spec,
        "model": {"name": "tiny", "given": "tiny", "layers": 8},
        "tasks": ["arc_easy"],
        "limit": 4,
        "settings": {},
        "variants": variants,
    }
    (root / "sweep.json").write_text(json.dumps(manifest))
    lines = []
    for index, variant in enumerate(variants):
        record = {
            "key": str(index),
            "variant": variant["name"],
            "label": variant["name"],
            "params": variant["params"],
            "derived": {},
            "plan": variant["plan"],
            "task": "arc_easy",
            "metrics": {"acc,none": 0.75 - 0.1 * index, "acc_norm,none": 0.75 - 0.1 * index},
            "chance": {"acc,none": 0.25, "acc_norm,none": 0.25},
            "n": 4,
            "limit": 4,
            "settings": {},
        }
        lines.append(json.dumps(record))
    (root / "results.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize(
    "name", ["../../../PWNED_plot", "/tmp/PWNED_abs", "..", "a/../../b", "x\0y", ".hidden"], ids=str
)
def test_plot_writes_only_inside_its_output_folder(name, tmp_path):
    from surgery.sweep.plots import plot_run

    run = _run_dir(tmp_path / "deep" / "er" / "run", name)
    out = tmp_path / "deep" / "er" / "out"
    before = set(tmp_path.rglob("*"))
    written = plot_run(run, out)
    created = {path for path in set(tmp_path.rglob("*")) - before if path.is_file()}
    assert created == set(written) and all(out in path.parents for path in created), created
    assert not list(Path("/tmp").glob("PWNED_abs*"))
    (figure,) = [path for path in written if path.suffix == ".png"]
    assert figure.parent == out / "plots" and not figure.name.startswith(".")


def test_plot_refuses_a_similarity_result_outside_the_run(tmp_path):
    from surgery.errors import SurgeryError
    from surgery.sweep.plots import figure_name, plot_similarity

    manifest = {"recipe_spec": {"figure": "15"}, "model": {"name": "tiny"}}
    record = {"files": "../../../etc", "variant": "v", "params": {}, "plan": "identity", "label": "v"}
    with pytest.raises(SurgeryError, match="names files outside"):
        plot_similarity(manifest, [record], tmp_path, tmp_path / "plots")
    taken: set[str] = set()
    assert [figure_name("a/b", taken), figure_name("a_b", taken), figure_name("../..", taken)] == [
        "a_b",
        "a_b-2",
        "_..",
    ]
