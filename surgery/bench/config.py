"""Settings of ``surgery bench`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from surgery.config import CommandConfig

BACKENDS = ("torch", "torch-compile", "onnxruntime")
Backend = Literal["torch", "torch-compile", "onnxruntime"]


class BenchConfig(CommandConfig):
    """Which models on which backends, and the shape of the measurement."""

    models: list[str] = Field(min_length=1)
    backends: list[Backend] = Field(default_factory=lambda: ["torch"], min_length=1)
    prompt_len: int = Field(default=128, ge=1, le=32768)
    new_tokens: int = Field(default=64, ge=2, le=4096)
    batch: int = Field(default=1, ge=1, le=1024)
    repeats: int = Field(default=5, ge=1, le=100)  # timed rounds, each measuring every model once
    warmup: int = Field(default=1, ge=0, le=10)  # untimed rounds before them
    threads: int | None = Field(default=None, ge=1)  # default: every core of the machine
    device: Literal["cpu", "cuda"] = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    out_dir: Path = Path("bench")
    trust_remote_code: bool = False
    timeout_s: int = Field(default=1800, ge=10)  # per model x backend measurement

    @field_validator("backends")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))
