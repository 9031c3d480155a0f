"""Hostile inputs, round 2, for ``surgery finetune`` and recipes (issue 18, items 5-8 and 11).

The resume-state folder beside OUT_DIR is protected like OUT_DIR; non-finite numbers are refused at the edge
and a run that diverges installs nothing; huge texts are cut before tokenizing and recipe grids are bounded
before expanding; a forged ``state.pt`` is refused in one line that never suggests ``weights_only=False``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_finetune import save_char_tokenizer, write_arc
from tiny_models import save_tiny

from surgery.cli.main import main as cli
from surgery.errors import SurgeryError
from surgery.finetune.config import FinetuneConfig
from surgery.finetune.data import tokenize_rows
from surgery.finetune.loop import Diverged
from surgery.finetune.run import run_finetune, state_dir_for
from surgery.finetune.state import STATE_FILE, Refused
from surgery.sweep import recipe as recipes
from surgery.text_limits import CHARS_PER_TOKEN, clip_text


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return _model(tmp_path_factory.mktemp("hostile-finetune") / "llama")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_arc(tmp_path_factory.mktemp("hostile-arc"))


def _model(directory: Path) -> Path:
    save_tiny("llama", directory)
    save_char_tokenizer(directory)
    return directory


def _settings(model: Path, out: Path, data_dir: Path, **overrides) -> FinetuneConfig:
    values = dict(model=str(model), out_dir=out, method="full", data_dir=data_dir, batch_size=8,
                  micro_batch_size=4, lr=1e-3, max_length=64, warmup_ratio=0.0, save_every=1)  # fmt: skip
    return FinetuneConfig.validated(**{**values, **overrides})


def _invoke(*args: str):
    return CliRunner().invoke(cli, ["finetune", *args, "--quiet"])


def _one_line(result, fragment: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    return lines[0]


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------- item 5: the resume-state folder


def test_source_at_the_state_path_is_refused_and_kept(source, data_dir, tmp_path, one_thread):
    """The issue's case: the source at .OUT.finetune-state; a successful run used to rmtree it."""
    model = tmp_path / ".out.finetune-state"
    shutil.copytree(source, model)
    before = _tree(model)
    result = _invoke(str(model), str(tmp_path / "out"), "--method", "full", "--data-dir", str(data_dir),
                     "--max-steps", "1", "--batch-size", "4")  # fmt: skip
    _one_line(result, "the resume-state folder")
    assert _tree(model) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["symlink-to-source", "contains-source", "symlink-to-parent"])
def test_state_folder_that_reaches_the_source_is_refused(layout, source, data_dir, tmp_path):
    state = tmp_path / ".out.finetune-state"
    if layout == "symlink-to-source":
        state.symlink_to(source)
        model, fragment = source, "is a symlink or not a directory"
    elif layout == "contains-source":
        model = shutil.copytree(source, state / "model")
        fragment = "contains an input of this run"
    else:
        state.symlink_to(tmp_path)
        model, fragment = source, "is a symlink or not a directory"
    before = _tree(model)
    with pytest.raises(SurgeryError, match=fragment):
        run_finetune(_settings(model, tmp_path / "out", data_dir, max_steps=1), progress=False)
    assert _tree(model) == before


def test_state_path_that_is_a_file_is_refused(source, data_dir, tmp_path):
    (tmp_path / ".out.finetune-state").write_text("my notes")
    with pytest.raises(SurgeryError, match="not a directory"):
        run_finetune(_settings(source, tmp_path / "out", data_dir, max_steps=1), progress=False)
    assert (tmp_path / ".out.finetune-state").read_text() == "my notes"


def test_training_data_inside_the_state_folder_is_refused(source, tmp_path):
    data = tmp_path / ".out.finetune-state" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"text": "abc abc abc"}\n')
    result = _invoke(str(source), str(tmp_path / "out"), "--method", "full", "--data", str(data))
    _one_line(result, "contains an input of this run")
    assert data.is_file()


@pytest.mark.parametrize("what", ["data", "plan"])
def test_overwrite_of_an_out_dir_holding_an_input_is_refused(what, source, data_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    data = out / "train.jsonl"
    data.write_text('{"text": "abc abc abc"}\n')
    plan = out / "plan.yaml"
    plan.write_text("- skip: 1\n")
    extra = ["--data", str(data)] if what == "data" else ["--plan", str(plan), "--data-dir", str(data_dir)]
    result = _invoke(str(source), str(out), "--method", "full", "--overwrite", *extra)
    _one_line(result, "contains an input of this run")
    assert data.is_file() and plan.is_file()


def test_success_removes_only_its_own_state_files(source, data_dir, tmp_path, one_thread):
    state = tmp_path / ".out.finetune-state"
    state.mkdir()
    (state / "mine.txt").write_text("keep me")
    run_finetune(_settings(source, tmp_path / "out", data_dir, max_steps=1), progress=False)
    assert (state / "mine.txt").read_text() == "keep me" and not (state / STATE_FILE).exists()
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------ item 6: non-finite numbers


@pytest.mark.parametrize(
    "option",
    ["--lr", "--lora-alpha", "--warmup-ratio", "--weight-decay", "--grad-clip"],  # the last two: config only
)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_float_options_are_refused(option, value, source, tmp_path):
    if option in ("--weight-decay", "--grad-clip"):  # not CLI options: the config is the edge
        field = option[2:].replace("-", "_")
        with pytest.raises(SurgeryError, match=f"{field}: Input should be a finite number"):
            FinetuneConfig.validated(model=str(source), out_dir=tmp_path / "o", method="full", **{field: float(value)})
        return
    result = _invoke(str(source), str(tmp_path / "out"), "--method", "lora", option, value)
    line = _one_line(result, option + ":")
    assert "finite" in line or "greater than" in line, line
    assert not (tmp_path / "out").exists()


def test_non_finite_floats_are_refused_by_every_command_config(tmp_path):
    from surgery.glue.config import GlueConfig
    from surgery.sweep.config import SweepConfig

    for build in (
        lambda: GlueConfig.validated(model="m", lr=float("inf")),
        lambda: GlueConfig.validated(model="m", max_grad_norm=float("nan")),
        lambda: SweepConfig.validated(recipe=tmp_path, model="m", out_dir=tmp_path, gpus_per_variant=float("inf")),
    ):
        with pytest.raises(SurgeryError, match="finite number"):
            build()
    limit = SweepConfig.validated(recipe=tmp_path, model="m", out_dir=tmp_path, limit=0.5).limit
    assert limit == 0.5  # --limit keeps its own message for inf/nan
    with pytest.raises(SurgeryError, match="must be a positive number, got inf"):
        SweepConfig.validated(recipe=tmp_path, model="m", out_dir=tmp_path, limit=float("inf"))


def test_absurd_learning_rate_is_refused(source, tmp_path):
    """1e38 is finite but AdamW's bias-corrected step (lr / 0.1) overflows float32: refused at the edge."""
    _one_line(_invoke(str(source), str(tmp_path / "out"), "--method", "full", "--lr", "1e38"), "--lr:")


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_diverging_run_stops_with_one_line_and_installs_nothing(
    where, source, data_dir, tmp_path, monkeypatch, one_thread
):
    """A loss or gradient norm that turns NaN at step 2 stops the run; no checkpoint, no resumable state."""
    import surgery.finetune.loop as loop

    calls = []
    if where == "loss":
        real = loop.summed_loss

        def poisoned(model, batch):
            calls.append(1)
            loss = real(model, batch)
            return loss * math.nan if len(calls) > 1 else loss

        monkeypatch.setattr(loop, "summed_loss", poisoned)
    else:
        real = torch.nn.utils.clip_grad_norm_

        def poisoned(params, max_norm):
            calls.append(1)
            norm = real(params, max_norm)
            return norm * math.inf if len(calls) > 1 else norm

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", poisoned)
    out = tmp_path / "out"
    result = _invoke(str(source), str(out), "--method", "full", "--data-dir", str(data_dir), "--batch-size", "4",
                     "--micro-batch-size", "4", "--max-steps", "3", "--save-every", "1")  # fmt: skip
    line = _one_line(result, "training diverged at step 2/3")
    assert ("the loss is nan" if where == "loss" else "the gradient norm is inf") in line
    assert not out.exists() and not (state_dir_for(out) / STATE_FILE).exists()


def test_non_finite_weights_are_never_written(source, data_dir, tmp_path, monkeypatch, one_thread):
    import surgery.finetune.lora as lora

    merge = lora.merge_lora

    def overflowing(peft_model):
        merged = merge(peft_model)
        next(merged.parameters()).data[0, 0] = math.inf  # a LoRA scale so large the merged sum overflows
        return merged

    monkeypatch.setattr(lora, "merge_lora", overflowing)
    out = tmp_path / "out"
    with pytest.raises(Diverged, match="the trained model: .* NaN or infinite"):
        run_finetune(_settings(source, out, data_dir, method="lora", max_steps=1), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.surgery-tmp-*"))
    assert not (state_dir_for(out) / STATE_FILE).exists()


def test_non_finite_recipe_settings_are_refused(tmp_path):
    for value in (".inf", "-.inf", ".nan"):
        path = tmp_path / "r.yaml"
        path.write_text(
            "# surgery sweep r.yaml\nversion: 1\nfigure: x\ntitle: t\nfinding: f\nkind: glue\n"
            f"settings: {{lr: {value}}}\nvariants:\n  - {{name: skip, plan: 'skip:{{lo}}-{{hi}}', grid: {{N: 1}}}}\n"
        )
        with pytest.raises(SurgeryError, match="r.yaml:7: settings.lr: Input should be a finite number"):
            recipes.load_recipe(path)
        with pytest.raises(SurgeryError, match="finite number"):
            recipes.parse_settings_override([f"lr={value}"], "glue")


# ------------------------------------------------------------------ item 7: unbounded work


class _Spy:
    """Wraps a tokenizer and records the longest text it was asked to encode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, *args, **kwargs):
        texts = text if isinstance(text, list) else [text]
        pairs = args[0] if args and isinstance(args[0], list) else []
        self.longest = max([self.longest, *(len(t) for t in [*texts, *pairs] if isinstance(t, str))])
        return self.tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.fixture(scope="module")
def tokenizer(source):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


HUGE = "abc " * 1_000_000  # 4 MB on one line


@pytest.mark.parametrize(
    "row", [{"text": HUGE}, {"prompt": HUGE, "completion": " x"}, {"prompt": "q", "completion": HUGE}]
)
def test_huge_training_example_is_cut_before_tokenizing(row, tokenizer):
    spy = _Spy(tokenizer)
    examples, truncated, _ = tokenize_rows([row], spy, 32)
    assert spy.longest <= 32 * CHARS_PER_TOKEN and truncated == 1
    tail = (row.get("text", row.get("prompt", "")) + row.get("completion", ""))[-1000:]
    whole = tokenizer(tail, add_special_tokens=False)["input_ids"]  # character tokens: the tail is the tail
    assert examples[0].input_ids == whole[-32:]  # the same tokens truncation of the whole text keeps


def test_huge_similarity_text_is_cut_before_tokenizing(tokenizer):
    from surgery.analysis.similarity import _tokenize

    spy = _Spy(tokenizer)
    (encoded, truncated) = _tokenize(spy, [HUGE, "short text"], 16, exclude_special=False)
    assert spy.longest <= 16 * CHARS_PER_TOKEN and truncated == 1
    assert encoded[0][0] == tokenizer(HUGE[:4000], truncation=True, max_length=16)["input_ids"]
    assert encoded[1][0] == tokenizer("short text")["input_ids"]


def test_huge_glue_text_is_cut_before_tokenizing(tokenizer):
    from surgery.glue.data import Example
    from surgery.glue.train import Encoded

    spy = _Spy(tokenizer)
    encoded = Encoded(spy, [Example(HUGE, HUGE, 0), Example("a b", "c d", 1)], 16, regression=False)
    assert spy.longest <= 16 * CHARS_PER_TOKEN and encoded.length(0) <= 16


def test_clip_text_keeps_short_texts_and_the_requested_end():
    assert clip_text("short", 4, keep="end") == "short"
    text = "x" * (4 * CHARS_PER_TOKEN) + "END"
    assert clip_text(text, 4, keep="end").endswith("END") and len(clip_text(text, 4, keep="start")) == 4 * 64


def _recipe(tmp_path: Path, grid: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(
        "# surgery sweep grid.yaml\nversion: 1\nfigure: x\ntitle: t\nfinding: f\nkind: eval\nplot: none\n"
        f"variants:\n  - {{name: skip, plan: 'skip:1', grid: {grid}}}\n"
    )
    return path


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        ('{a: "0 .. 99999", b: "0 .. 99999"}', "has 100,000 values; a grid parameter takes at most 10,000"),
        ('{a: "0 .. 400000000"}', "has 400,000,001 values"),
        ('{a: "0 .. 99999999999999999999999 by 1"}', "a grid parameter takes at most"),
        ('{a: "0 .. 999", b: "0 .. 999"}', "expands to 1,000,000 variants"),
        ('{a: "0 .. 29", b: "0 .. 29", c: "0 .. 29"}', "expands to 27,000 variants"),
        ("{a: [" + ", ".join(["1"] * 10_001) + "]}", "a list of 10,001 values"),
    ],
)
def test_recipe_grids_are_bounded_before_expanding(grid, fragment, tmp_path):
    path = _recipe(tmp_path, grid)
    started = time.perf_counter()
    result = CliRunner().invoke(cli, ["recipe", "validate", str(path)])
    assert time.perf_counter() - started < 10
    _one_line(result, fragment)


def test_grid_override_is_bounded(tmp_path):
    with pytest.raises(SurgeryError, match="takes at most 10,000"):
        recipes.parse_grid_override(["N=0..400000000"])
    with pytest.raises(SurgeryError, match="more than 10,000 values"):
        recipes.parse_grid_override(["N=" + ",".join(["0..9999"] * 2)])
    recipe, _ = recipes.load_recipe(_recipe(tmp_path, '{a: "0 .. 1", b: "0 .. 1"}'))
    with pytest.raises(SurgeryError, match="expands to 25,000,000 variants"):
        recipes.expand(recipe, 32, {"a": list(range(5000)), "b": list(range(5000))})


# ------------------------------------------------------------- item 8 and 11: a forged state.pt


@pytest.fixture(scope="module")
def saved_state(source, data_dir, tmp_path_factory) -> dict:
    """A genuine state after step 1 of 2 (interrupted), to forge from."""
    out = tmp_path_factory.mktemp("interrupted") / "out"

    def stop(step: int) -> None:
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_finetune(_settings(source, out, data_dir, max_steps=2), progress=False, on_step=stop)
    finally:
        torch.set_num_threads(threads)
    return torch.load(state_dir_for(out) / STATE_FILE, weights_only=True)


def _forge(state: dict, change) -> dict:
    import copy

    forged = copy.deepcopy(state)
    change(forged)
    return forged


def _first(state: dict) -> str:
    return next(iter(state["trainable"]))


def _set(mapping: dict, key, value) -> None:
    mapping[key] = value


FORGERIES = {
    "scalar tensors": (
        lambda s: s.update(trainable={k: torch.tensor(0.0) for k in s["trainable"]}),
        r"is torch.float32 \[\]",
    ),
    "wrong shape": (lambda s: _set(s["trainable"], _first(s), torch.zeros(3, 3)), "the model's is torch.float32"),
    "wrong dtype": (lambda s: _set(s["trainable"], _first(s), s["trainable"][_first(s)].double()), "torch.float64"),
    "missing tensor": (lambda s: s["trainable"].pop(_first(s)), "not this model's trainable parameters"),
    "extra tensor": (lambda s: _set(s["trainable"], "evil.weight", torch.zeros(1)), "not this model's trainable"),
    "nan weights": (lambda s: s["trainable"][_first(s)].fill_(math.nan), "holds non-finite values"),
    "step beyond max-steps": (lambda s: s.update(step=99), "step 99 is not within 0..2"),
    "negative step": (lambda s: s.update(step=-1), "step -1 is not within 0..2"),
    "step not an integer": (lambda s: s.update(step=1.0), "step 1.0 is not within"),
    "negative tokens": (lambda s: s.update(tokens=-5), "token count"),
    "short log": (lambda s: s.update(log=[]), "the log has 0 entries for 1 steps"),
    "log with a text loss": (lambda s: s["log"][0].update(loss="low"), "log entry 1"),
    "log with a tensor": (lambda s: s["log"][0].update(extra=torch.zeros(2)), "log entry 1"),
    "scalar moments": (
        lambda s: [m.update(exp_avg=torch.tensor(1.0)) for m in s["optimizer"]["state"].values()],
        "the optimizer's exp_avg of",
    ),
    "negative second moment": (
        lambda s: s["optimizer"]["state"][0]["exp_avg_sq"].fill_(-1.0),
        "exp_avg_sq of .* is negative",
    ),
    "optimizer counter ahead": (
        lambda s: s["optimizer"]["state"][0].update(step=torch.tensor(50.0)),
        "step count .* is not within 0..1",
    ),
    "optimizer lr inf": (lambda s: s["optimizer"]["param_groups"][0].update(lr=math.inf), "the learning rate inf"),
    "optimizer weight decay": (
        lambda s: s["optimizer"]["param_groups"][0].update(weight_decay=10.0),
        "the optimizer's weight_decay is 10.0",
    ),
    "optimizer extra key": (lambda s: s["optimizer"]["param_groups"][0].update(evil=1), "parameter groups"),
    "scheduler elsewhere": (lambda s: s["scheduler"].update(last_epoch=7), "the scheduler is not at step 1"),
    "torch rng": (lambda s: s.update(torch_rng=torch.zeros(3, dtype=torch.uint8)), "torch random state"),
    "python rng": (lambda s: s.update(python_rng=(3, (1, 2), None)), "Python random state"),
    "missing key": (lambda s: s.pop("optimizer"), "it lacks optimizer"),
    "fingerprint not a dict": (lambda s: s.update(fingerprint=[1]), "it lacks the settings"),
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_state_is_refused_on_resume(name, saved_state, source, data_dir, tmp_path, one_thread):
    change, fragment = FORGERIES[name]
    out = tmp_path / "out"
    state_dir_for(out).mkdir()
    torch.save(_forge(saved_state, change), state_dir_for(out) / STATE_FILE)
    with pytest.raises(Refused, match=fragment) as caught:
        run_finetune(_settings(source, out, data_dir, max_steps=2, resume=True), progress=False)
    assert "delete" in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_genuine_state_resumes(saved_state, source, data_dir, tmp_path, one_thread):
    """The control: the unforged state passes every check."""
    out = tmp_path / "out"
    state_dir_for(out).mkdir()
    torch.save(saved_state, state_dir_for(out) / STATE_FILE)
    details = run_finetune(_settings(source, out, data_dir, max_steps=2, resume=True), progress=False)
    assert details["resumed_from_step"] == 1 and details["steps"] == 2


@pytest.mark.parametrize("content", ["pickle", "truncated", "list"])
def test_unreadable_state_is_one_line_without_weights_only_advice(content, saved_state, source, data_dir, tmp_path):
    out = tmp_path / "out"
    state = state_dir_for(out) / STATE_FILE
    state.parent.mkdir()
    if content == "pickle":
        torch.save({"step": 1, "evil": Path("/etc/passwd")}, state)  # an object weights_only refuses
    elif content == "truncated":
        torch.save(saved_state, state)
        state.write_bytes(state.read_bytes()[:200])
    else:
        torch.save([1, 2, 3], state)
    result = _invoke(str(source), str(out), "--method", "full", "--data-dir", str(data_dir), "--max-steps", "2",
                     "--batch-size", "8", "--micro-batch-size", "4", "--lr", "1e-3", "--max-length", "64",
                     "--warmup-ratio", "0", "--save-every", "1", "--resume")  # fmt: skip
    line = _one_line(result, "delete")
    assert "weights_only" not in line and "arbitrary code" not in line.lower()
    assert json.dumps(line)  # one plain line
