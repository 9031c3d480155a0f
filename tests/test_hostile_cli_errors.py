"""Hostile inputs, round 2: the CLI's signal handler stays in its own process, and internal errors are messages.

* SIGTERM: the handler that turns SIGTERM into clean-up (``surgery.cli.Terminated``) must not act in forked
  children (lm-eval's bootstrap pool): there SIGTERM kills, as by default, so ``Pool.terminate`` always ends.
* File name or plan text: a plan longer than a file name may be is plan text, never ``OSError``.
* Every case here used to end in ``error: SomeType: ...`` (exit 1); each is now one written line, exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from sweep_fixtures import tiny_data, tiny_llama_with_tokenizer

from surgery.cli.main import main as cli
from surgery.config import config_from_options, validation_message
from surgery.errors import SurgeryError
from surgery.fileio import path_is
from surgery.plan import load_plan, resolve_plan

LONG_PLAN = ",".join(f"shuffle:{2 * i}-{2 * i + 1}@987654321" for i in range(15))  # 349 characters, valid on T=30
LONG_NAME = "a" * 300  # over NAME_MAX (255)


def _error_line(result, fragment: str) -> str:
    """One ``error:`` line containing ``fragment``, exit 2, no generic ``SomeType:`` prefix."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0], result.output
    assert "--debug for the traceback" not in lines[0] and "Traceback" not in result.output, result.output
    return lines[0]


# ---------------------------------------------------------------- item 3: SIGTERM handler stays in its process

_FORK_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import surgery.cli.main as cli
    mode = sys.argv[1]
    cli._handler_pid = os.getpid()
    signal.signal(signal.SIGTERM, cli._on_sigterm)
    pid = os.fork()
    if pid == 0:
        if mode == "reinstalled":  # a child made without os.fork's hooks keeps the handler: the pid check acts
            signal.signal(signal.SIGTERM, cli._on_sigterm)
        try:
            time.sleep(30)
        except BaseException as exc:
            print("child raised", type(exc).__name__, file=sys.stderr, flush=True)
            os._exit(3)
        os._exit(0)
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    _, status = os.waitpid(pid, 0)
    print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, flush=True)
    """
)


@pytest.mark.parametrize("mode", ["forked", "reinstalled"])
def test_forked_child_dies_of_sigterm_without_terminated(mode: str) -> None:
    """A forked child of the CLI process receiving SIGTERM is killed by it, as by default: no Terminated."""
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True", (result.stdout, result.stderr)
    assert "Terminated" not in result.stderr and "raised" not in result.stderr, result.stderr


_POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    import click
    from surgery.cli.main import main

    def slow(x):
        time.sleep(0.2)
        return x

    @main.command("pool-test")
    def pool_test():
        # as lm-eval's bootstrap: a fork pool left by `with`, whose __exit__ SIGTERMs the workers
        with multiprocessing.get_context("fork").Pool(2) as pool:
            click.echo(sum(pool.imap(slow, range(4))))

    sys.exit(main(["pool-test"]))
    """
)


def test_fork_pool_inside_a_command_ends_without_worker_tracebacks() -> None:
    """``Pool.__exit__`` terminates workers with SIGTERM: they must die quietly and the command must end."""
    result = subprocess.run([sys.executable, "-c", _POOL_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "6"
    assert "Traceback" not in result.stderr and "Terminated" not in result.stderr, result.stderr


def test_sigterm_in_the_cli_process_still_raises_terminated() -> None:
    """The handler still acts where it was installed (clean-up of temporary files depends on it)."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        import surgery.cli.main as cli
        cli._handler_pid = os.getpid()
        signal.signal(signal.SIGTERM, cli._on_sigterm)
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
        except cli.Terminated:
            print("terminated")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "terminated", result.stderr


def test_eval_with_bootstrap_ends_without_worker_traceback(tiny_checkpoints, tmp_path) -> None:
    """A real ``surgery eval`` whose perplexity stderr runs lm-eval's forked bootstrap pool: exit 0, quiet."""
    model = tiny_llama_with_tokenizer(tiny_checkpoints["llama"], tmp_path / "model")
    data = tiny_data(tmp_path / "data")
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    args = ["eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(data), "--bootstrap-iters", "2000"]
    result = subprocess.run(
        [sys.executable, "-m", "surgery.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bootstrapping for stddev: perplexity" in result.stdout + result.stderr  # the pool did run
    assert "Traceback" not in result.stderr and "Terminated" not in result.stderr, result.stderr[-3000:]
    assert "perplexity" in result.stdout


# ---------------------------------------------------------------- item 11: plan text longer than a file name


def test_long_plan_text_is_plan_text_not_a_file_name() -> None:
    """Plan text over 255 bytes is parsed as a plan (stat would fail with ENAMETOOLONG)."""
    assert len(LONG_PLAN) > 255
    execution = resolve_plan(load_plan(LONG_PLAN), 30)
    assert len(execution.instances) == 30 and not execution.skipped


@pytest.mark.parametrize(
    ("text", "expected"),
    [(LONG_PLAN, False), (LONG_NAME, False), ("bad\x00name", False), ("", False), ("   ", False), (".", False)],
)
def test_path_is_answers_false_for_impossible_names(text: str, expected: bool) -> None:
    """path_is never raises: no file can have a name over NAME_MAX or with a NUL byte."""
    assert path_is(Path.is_file, text) is expected


def test_path_is_finds_real_files_and_folders(tmp_path) -> None:
    (tmp_path / "plan.txt").write_text("skip:1-2")
    assert path_is(Path.is_file, str(tmp_path / "plan.txt")) and path_is(Path.is_dir, str(tmp_path))


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        (LONG_NAME + ".yaml", "File name too long"),
        ("plan\x00.yaml", "plan file not found"),
        (LONG_NAME + "bad", "malformed plan op"),  # long text that is no plan: the plan parser's message, not OSError
    ],
)
def test_unusable_plan_names_are_one_error(plan: str, fragment: str) -> None:
    with pytest.raises(SurgeryError) as raised:
        load_plan(plan)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_plan_show_takes_a_long_plan() -> None:
    result = CliRunner().invoke(cli, ["plan", "show", "--plan", LONG_PLAN, "--layers", "30"])
    assert result.exit_code == 0, result.output
    assert "executed:  30 layer instances" in result.output


def test_apply_takes_a_long_plan(tiny_checkpoints, tmp_path) -> None:
    """Eight layers: the long plan is an explicit sequence of 160 instances (over 255 characters)."""
    plan = "sequence:" + " ".join(["0 1 2 3 4 5 6 7"] * 20)
    assert len(plan) > 255
    result = CliRunner().invoke(
        cli, ["apply", "-q", "--plan", plan, str(tiny_checkpoints["llama"]), str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "config.json").read_text())["num_hidden_layers"] == 160


def test_recipe_validate_takes_a_long_plan(tmp_path) -> None:
    recipe = tmp_path / "long.yaml"
    header = f"# surgery sweep {recipe} --model M --out O\nversion: 1\nfigure: '0'\ntitle: t\nfinding: f\n"
    header += "kind: eval\ntasks: [lambada_openai]\nplot: none\n"
    recipe.write_text(header + f"variants:\n  - name: shuffled\n    plan: '{LONG_PLAN}'\n")
    result = CliRunner().invoke(cli, ["recipe", "validate", str(recipe)])
    assert result.exit_code == 0, result.output


def test_recipe_validate_of_an_impossible_name() -> None:
    _error_line(CliRunner().invoke(cli, ["recipe", "validate", LONG_NAME]), "no such recipe file or folder")


# ---------------------------------------------------------------- item 11: pydantic errors read as options


def test_model_level_error_has_no_top_level_location() -> None:
    """A model_validator's message is the whole line (was ``--(top level): fp16 export needs ...``)."""
    from surgery.exporters.onnx.config import ExportConfig

    with pytest.raises(SurgeryError) as raised:
        config_from_options(ExportConfig, checkpoint="c", out_dir=Path("o"), dtype="fp16", device="cpu")
    assert str(raised.value).startswith("fp16 export needs --device cuda"), raised.value
    with pytest.raises(SurgeryError) as raised:
        ExportConfig.validated(checkpoint="c", out_dir=Path("o"), dtype="fp16", device="cpu")
    assert "(top level)" not in str(raised.value)


def test_list_item_error_names_the_option_and_the_value() -> None:
    """``--backend torch,foo`` reads ``--backend 'foo': ...`` (was ``--backends.1: ...``)."""
    from surgery.bench.config import BenchConfig

    with pytest.raises(SurgeryError) as raised:
        config_from_options(BenchConfig, {"backends": "--backend"}, models=["m"], backends=["torch", "foo"])
    assert str(raised.value).startswith("--backend 'foo': Input should be"), raised.value


def test_unprintable_nested_value_is_named_by_position() -> None:
    from surgery.bench.config import BenchConfig

    try:
        BenchConfig(models=["m"], backends=["torch", "x" * 100])
    except ValidationError as exc:
        assert validation_message(exc, {"backends": "--backend"}).startswith("--backend item 2: ")
    else:  # pragma: no cover - the config must refuse the backend
        pytest.fail("BenchConfig accepted an unknown backend")


# ---------------------------------------------------------------- item 11: eval inputs checked at the edge


@pytest.fixture(scope="module")
def eval_model(tiny_checkpoints, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-hostile")
    return tiny_llama_with_tokenizer(tiny_checkpoints["llama"], root / "model"), tiny_data(root / "data")


def _eval(eval_model, *extra: str):
    model, data = eval_model
    args = ["eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(data), "--limit", "2", *extra]
    return CliRunner().invoke(cli, args)


BASELINES = {
    "list": ("[1, 2]", "no 'results' mapping"),
    "results_list": ('{"results": []}', "no 'results' mapping"),
    "task_not_mapping": ('{"results": {"lambada_openai": 5}}', "'results.lambada_openai' must be a mapping"),
    "config_list": ('{"results": {}, "config": []}', "'config' must be a mapping"),
    "chance_list": ('{"results": {}, "chance": [0.25]}', "'chance' must be a mapping"),
    "data_not_mapping": ('{"results": {}, "config": {"data": {"arc_easy": "hub"}}}', "'config.data' must map"),
    "nan_score": ('{"results": {"lambada_openai": {"acc,none": NaN}}}', "must be a finite number"),
    "inf_ppl": ('{"results": {"lambada_openai": {"acc,none": 0.5, "perplexity,none": Infinity}}}', "finite"),
    "empty": ("", "cannot read baseline results"),
    "not_utf8": (b"\xff\xfe\x00garbage", "cannot read baseline results"),
    "deep": ("[" * 100000 + "]" * 100000, "cannot read baseline results"),
}


@pytest.mark.parametrize("case", sorted(BASELINES))
def test_hostile_baseline_is_one_error(eval_model, tmp_path, case: str) -> None:
    """--baseline is checked before the model loads; wrong shapes and non-finite scores are named."""
    content, fragment = BASELINES[case]
    path = tmp_path / "baseline.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    _error_line(_eval(eval_model, "--baseline", str(path)), fragment)


def test_baseline_that_is_a_fifo_does_not_hang(eval_model, tmp_path) -> None:
    fifo = tmp_path / "baseline.json"
    os.mkfifo(fifo)
    _error_line(_eval(eval_model, "--baseline", str(fifo)), "named pipe")


def test_baseline_that_is_a_directory(eval_model, tmp_path) -> None:
    _error_line(_eval(eval_model, "--baseline", str(tmp_path)), "cannot read baseline results")


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (LONG_NAME + ".json", "cannot write there (File name too long)"),
        ("afile/sub.json", "cannot write in"),
        ("/proc/results.json", "cannot write"),
        (".", "is a directory"),
    ],
)
def test_unwritable_output_is_refused_before_the_run(eval_model, tmp_path, monkeypatch, output, fragment) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    _error_line(_eval(eval_model, "--output", output), fragment)


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("bogus", "not a torch device"), ("meta", "runs on cpu, cuda or mps"), ("cuda:99", "--device cuda:99: ")],
)
def test_bad_device_is_refused_before_the_model_loads(eval_model, device: str, fragment: str) -> None:
    _error_line(_eval(eval_model, "--device", device), fragment)


@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999999"])
def test_seed_out_of_range(eval_model, seed: str) -> None:
    _error_line(_eval(eval_model, "--seed", seed), "--seed: ")


# ---------------------------------------------------------------- item 11: OUT_DIR that cannot be made


@pytest.mark.parametrize(
    ("out", "fragment"),
    [
        ("afile/sub", "afile is not a directory"),
        (LONG_NAME, "File name too long"),
        ("/proc/surgery-out", "cannot create files in /proc"),
    ],
)
def test_apply_out_dir_that_cannot_be_made(tiny_checkpoints, tmp_path, monkeypatch, out: str, fragment: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["apply", "-q", "--plan", "skip:1-2", str(tiny_checkpoints["llama"]), out])
    _error_line(result, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing left behind


def test_limit_beyond_any_task_is_refused(eval_model) -> None:
    """Was ``ValueError: Stop argument for islice()`` after the model loaded."""
    _error_line(_eval(eval_model, "--limit", "99999999999999999999999"), "--limit: must be at most")


# ---------------------------------------------------------------- item 11: any path too long to exist


@pytest.mark.parametrize(
    "args",
    [
        ["card", f"/tmp/{LONG_NAME}"],
        ["push", f"/tmp/{LONG_NAME}", "me/model", "--dry-run"],
        ["eval", "smollm2-demo", "--tasks", "lambada_openai", "--data-dir", f"/tmp/{LONG_NAME}"],
    ],
    ids=["card", "push", "eval-data-dir"],
)
def test_path_too_long_is_a_user_error(args: list[str]) -> None:
    """ENAMETOOLONG from a command-line path, wherever it is first used, is one line and exit 2."""
    _error_line(CliRunner().invoke(cli, args), "path too long")


def test_plot_of_a_run_dir_too_long_to_exist() -> None:
    _error_line(CliRunner().invoke(cli, ["plot", f"/tmp/{LONG_NAME}"]), "no such run directory")


# ---------------------------------------------------------------- item 11: in-place output folders, sweep settings


def _sweep(tmp_path: Path, model: Path, *extra: str):
    recipe = tmp_path / "r.yaml"
    header = f"# surgery sweep {recipe} --model M --out O\nversion: 1\nfigure: '0'\ntitle: t\nfinding: f\n"
    body = "kind: eval\ntasks: [lambada_openai]\nplot: none\nvariants:\n  - name: s\n    plan: 'skip:{N}'\n"
    recipe.write_text(header + body + "    grid: {N: '1 .. 2'}\n")
    return CliRunner().invoke(cli, ["sweep", str(recipe), "--model", str(model), *extra])


@pytest.mark.parametrize(
    ("out", "fragment"),
    [("afile/sub", "afile is not a directory"), ("/proc/surgery-out", "cannot create files in /proc")],
)
@pytest.mark.parametrize("command", ["similarity", "sweep"])
def test_in_place_out_dir_that_cannot_be_made(eval_model, tmp_path, monkeypatch, command, out, fragment) -> None:
    """similarity and sweep write --out in place: a path through a file or a pseudo file system is refused first."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    model, data = eval_model
    if command == "similarity":
        result = CliRunner().invoke(cli, ["similarity", str(model), "--data-dir", str(data), "--out", out])
    else:
        result = _sweep(tmp_path, model, "--data-dir", str(data), "--out", out)
    _error_line(result, fragment)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [(["--seed", "99999999999999999999999"], "--seed: "), (["--device", "bogus"], "not a torch device")],
)
def test_sweep_seed_and_device_checked_before_the_run(eval_model, tmp_path, extra, fragment) -> None:
    model, data = eval_model
    _error_line(_sweep(tmp_path, model, "--data-dir", str(data), "--out", str(tmp_path / "run"), *extra), fragment)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- secrets and missing tokenizers in error lines


@pytest.mark.parametrize("raised", ["surgery", "internal"])
def test_error_lines_never_echo_url_secrets(monkeypatch, raised: str) -> None:
    """Whatever a library's exception quotes, the CLI's error line redacts URL credentials and Hub tokens."""
    import surgery.cli.main as cli_module

    url = "http://alice:s3cret@hub.example:8080/api/models?token=hf_abcdefghijklmnop"
    error = SurgeryError(f"cannot reach {url}") if raised == "surgery" else RuntimeError(f"GET {url} failed")

    @cli_module.main.command("boom-for-test")
    def boom() -> None:
        raise error

    try:
        result = CliRunner().invoke(cli, ["boom-for-test"])
    finally:
        cli_module.main.commands.pop("boom-for-test", None)
    assert result.exit_code == (2 if raised == "surgery" else 1), result.output
    assert "s3cret" not in result.output and "alice" not in result.output and "hf_abcdefghijklmnop" not in result.output
    assert "hub.example:8080" in result.output  # the host stays: the user needs to know which endpoint failed


def test_eval_of_a_folder_without_tokenizer_is_one_error(tiny_checkpoints, tmp_path) -> None:
    import shutil

    model = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_checkpoints["llama"], model)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / name).unlink(missing_ok=True)
    data = tiny_data(tmp_path / "data")
    result = CliRunner().invoke(cli, ["eval", str(model), "--tasks", "lambada_openai", "--data-dir", str(data)])
    _error_line(result, "has no tokenizer files")
