"""Settings of ``surgery sweep`` and ``surgery plot`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from surgery.config import CommandConfig, Limit, Seed


class SweepConfig(CommandConfig):
    """Which recipe on which model, the evaluation settings that make a result, and how to run it."""

    recipe: Path
    model: str
    out_dir: Path
    tasks: str | None = None  # None: the recipe's tasks (eval: else the paper's six; glue: else all found)
    limit: Limit = None  # eval: lm-eval's --limit; similarity: texts; glue: evaluation examples
    data_dir: Path | None = None
    grid: dict[str, list[int]] = Field(default_factory=dict)  # thins a parameter's values (--grid N=4,8)
    variants: list[str] | None = None  # only these recipe lines (identity always runs when the recipe has it)
    overrides: list[str] = Field(default_factory=list)  # --set KEY=VALUE: recipe settings (checked against the kind)
    batch_size: int = Field(default=8, ge=1)
    max_gen_toks: int | None = Field(default=None, ge=1)
    bootstrap_iters: int = Field(default=0, ge=0)  # stderrs here are binomial; lm-eval's bootstrap is optional
    seed: Seed | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str | None = None
    executor: Literal["local", "ray"] = "local"
    address: str | None = None
    gpus_per_variant: float = Field(default=0, ge=0)
    workers: int | None = Field(default=None, ge=1)
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    progress: bool = True

    def evaluation_settings(self, kind: str, recipe_settings: dict[str, Any]) -> dict[str, Any]:
        """The settings a result depends on (part of its resume key); run settings (executor...) are not."""
        if kind == "eval":
            settings = {
                "batch_size": self.batch_size,
                "max_gen_toks": self.max_gen_toks,
                "bootstrap_iters": self.bootstrap_iters,
                "seed": self.seed,
                "dtype": self.dtype,
            }
        elif kind == "similarity":
            settings = {"batch_size": self.batch_size, "dtype": self.dtype, "max_length": 512, "texts": "lambada"}
        else:
            settings = {"seed": self.seed or 0}
        return {**settings, **recipe_settings}


class PlotConfig(CommandConfig):
    """``surgery plot RUN_DIR``: where the sweep is and where the figures go."""

    run_dir: Path
    out_dir: Path | None = None  # default: RUN_DIR
