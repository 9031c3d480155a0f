"""Packaging: the wheel holds every source file, core commands need no extra, a missing extra is one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.system  # builds a wheel; fresh interpreters without the extras

ROOT = Path(__file__).resolve().parent.parent
ROOTS = {"surgery": "surgery", "exporters": "surgery/exporters", "finetune": "surgery/finetune"}
EXTRA_MODULES = (
    "lm_eval",
    "datasets",
    "matplotlib",
    "sklearn",
    "scipy",
    "optimum",
    "onnx",
    "onnxruntime",
    "peft",
    "ray",
)
# Runs the CLI with the optional extras made unimportable, as in a core-only install.
WITHOUT_EXTRAS = textwrap.dedent(
    """
    import sys
    for name in {modules!r}:
        sys.modules[name] = None  # import raises ImportError; find_spec raises ValueError
    from surgery.cli.main import main
    sys.argv = ["surgery", *{args!r}]
    try:
        main()
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {modules!r} and sys.modules[m] is not None)
        print("EXTRA MODULES LOADED:", loaded, file=sys.stderr)
    """
)


def _tracked_sources() -> list[str]:
    """Every tracked (or, outside git, present) .py file under the three source roots."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", *ROOTS],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for root in ROOTS for p in (ROOT / root).rglob("*")]
    return sorted(path for path in listed if path.endswith(".py") and (ROOT / path).is_file())


def test_wheel_contains_every_source_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PIP_NO_INPUT": "1"},
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("surgery-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = _tracked_sources()
    assert len(sources) > 40
    expected = {ROOTS[path.split("/", 1)[0]] + "/" + path.split("/", 1)[1] for path in sources}
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"
    assert "surgery/evaluation/tasks/lambada_openai.yaml" in names
    assert not [name for name in names if name.startswith(("tests/", "exporters/", "finetune/", "benchmarks/"))]


def _run_without_extras(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    script = WITHOUT_EXTRAS.format(modules=EXTRA_MODULES, args=list(args))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_core_commands_need_no_extra(tiny_checkpoints, tmp_path):
    source = str(tiny_checkpoints["llama"])
    for args in (
        ["plan", "show", "--plan", "parallel:2-4", source],
        ["apply", "-q", "--plan", "skip:1", source, str(tmp_path / "plain")],
        ["apply", "-q", "--plan", "parallel:2-4", source, str(tmp_path / "wrapped")],
        ["--help"],
    ):
        result = _run_without_extras(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
        assert "EXTRA MODULES LOADED: []" in result.stderr, (args, result.stderr)
    assert (tmp_path / "wrapped" / "modeling_surgery.py").is_file()


@pytest.mark.parametrize("command", ["similarity", "eval", "glue"])
def test_a_missing_extra_is_one_clear_line(command, tiny_checkpoints, tmp_path):
    result = _run_without_extras(command, str(tiny_checkpoints["llama"]), cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if not line.startswith("EXTRA MODULES LOADED")]
    assert result.returncode == 2, result.stderr
    assert lines == [lines[0]] and lines[0].startswith(f"error: `surgery {command}` needs the [eval] extra")
    assert "pip install 'surgery[eval]'" in lines[0]
