"""Settings of ``surgery similarity`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from surgery.config import CommandConfig


class SimilarityConfig(CommandConfig):
    """What to measure, on which texts, and where to write it."""

    model: str
    plan: str | None = None
    data: str = "lambada"
    data_dir: Path | None = None
    limit: int = Field(default=100, ge=1)
    seed: int | None = None
    out_dir: Path = Path("similarity-out")
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=512, ge=1)
    final_norm: bool = True
    exclude_special_tokens: bool = False
    num_classes: int = Field(default=3, ge=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
