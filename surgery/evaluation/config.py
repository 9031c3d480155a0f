"""Settings of ``surgery eval`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from surgery.config import CommandConfig, Limit, Seed

DEFAULT_BOOTSTRAP_ITERS = 100000  # lm-eval's default


class EvalConfig(CommandConfig):
    """Which model and plan, which benchmarks on which data, and how to run lm-eval."""

    model: str
    plan: str | None = None
    tasks: str | list[str] | None = None  # None: the paper's six
    data_dir: Path | None = None
    limit: Limit = None  # lm-eval's --limit: a count, or a fraction when < 1
    batch_size: int = Field(default=8, ge=1)
    max_gen_toks: int | None = Field(default=None, ge=1)
    bootstrap_iters: int = Field(default=DEFAULT_BOOTSTRAP_ITERS, ge=0)
    seed: Seed | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str | None = None
    revision: str | None = None
    baseline: Path | None = None
    output: Path | None = None
    log_samples: bool = False
    trust_remote_code: bool = False
    allow_pickle: bool = False
