"""Settings of ``surgery finetune`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from surgery.config import CommandConfig

# Fields that do not change what is trained: a resumed run may differ from the interrupted one in these only.
NOT_TRAINING = ("out_dir", "resume", "save_adapter", "overwrite", "save_every", "gradient_checkpointing")


class FinetuneConfig(CommandConfig):
    """What to fine-tune, on which data, how, and where to write the healed checkpoint."""

    model: str
    out_dir: Path
    method: Literal["full", "lora"]
    plan: str | None = None
    tie_repeats: bool = False
    data: str = "arc_challenge"
    data_dir: Path | None = None
    limit: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-5, gt=0, le=1)  # AdamW moves every weight by about lr a step; above 1 it overflows
    batch_size: int = Field(default=64, ge=1)
    micro_batch_size: int = Field(default=4, ge=1)
    max_length: int = Field(default=512, ge=2)
    seed: int = 0
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16.0, gt=0)
    lora_targets: str = "mlp"
    dtype: Literal["float32", "bfloat16"] = "float32"
    max_steps: int | None = Field(default=None, ge=1)
    gradient_checkpointing: bool = False
    resume: bool = False
    save_adapter: bool = False
    save_every: int = Field(default=10, ge=1)
    overwrite: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False

    @field_validator("micro_batch_size")
    @classmethod
    def _divides_batch(cls, value: int, info: ValidationInfo) -> int:
        batch_size = info.data.get("batch_size")
        if batch_size is not None and batch_size % value:
            raise ValueError(
                f"batch size {batch_size} is not divisible by micro-batch size {value} "
                "(the batch is accumulated over whole micro-batches)"
            )
        return value

    @field_validator("lora_targets")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("empty; give mlp, attn, all or module names")
        return value.strip()

    @field_validator("save_adapter")
    @classmethod
    def _adapter_needs_lora(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("method") != "lora":
            raise ValueError("needs --method lora (full fine-tuning has no adapter)")
        if value and info.data.get("plan") is not None:
            raise ValueError(
                "cannot be combined with --plan (the adapter's module names are the source model's layers, "
                "not the written variant's)"
            )
        return value

    @property
    def accumulation(self) -> int:
        """Micro-batches per optimizer step."""
        return self.batch_size // self.micro_batch_size

    def training_settings(self) -> dict[str, Any]:
        """The settings that decide the trained weights (a resumed run must match them exactly)."""
        record = self.record()
        for key in NOT_TRAINING:
            record.pop(key, None)
        if self.method == "full":
            for key in ("lora_rank", "lora_alpha", "lora_targets"):
                record.pop(key)
        return record
