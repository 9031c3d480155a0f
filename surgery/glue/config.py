"""Settings of ``surgery glue`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from surgery.config import CommandConfig

MODES = ("full", "frozen")
DEFAULT_LR = {"full": 2e-5, "frozen": 1e-3}


class GlueConfig(CommandConfig):
    """The model and plan, the training recipe, and where the data come from."""

    model: str
    plan: str | None = None
    mode: Literal["full", "frozen"] = "full"
    epochs: int = Field(default=3, ge=1)
    lr: float | None = Field(default=None, gt=0)  # None: DEFAULT_LR[mode]
    batch_size: int = Field(default=32, ge=1)
    max_length: int = Field(default=128, ge=1)
    max_train: int | None = Field(default=None, ge=1)
    max_eval: int | None = Field(default=None, ge=1)
    seed: int = 0
    warmup_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    eval_batch_size: int = Field(default=64, ge=1)
    data_dir: Path | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @model_validator(mode="after")
    def _default_lr(self) -> GlueConfig:
        if self.lr is None:
            self.lr = DEFAULT_LR[self.mode]
        return self

    def record(self) -> dict[str, Any]:
        from surgery import __version__

        return {**super().record(), "surgery_version": __version__}
