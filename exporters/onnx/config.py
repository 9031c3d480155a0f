"""Settings of ``surgery export onnx`` (validated once, at the edge)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from surgery.config import CommandConfig

# Parity tolerances on logits (max |ONNX Runtime - PyTorch|); the bound is max(ATOL, RTOL * max |logit|).
# fp32: the graph differs from eager PyTorch only in operator order. Measured: 3e-7 on the tiny models, 7e-5 to
# 1e-4 on plain SmolLM2 variants, 1.1e-3 on SmolLM2 with a tied repeat and a looped parallel block at logits of
# 35 (3e-5 of their scale: the averaged and repeated layers add reordered float sums). So 1e-3 absolute, or 1e-4
# of the logits' scale for deep or repeated plans, whichever is larger.
# fp16: 10 bits of mantissa give a relative step of 2**-10 ~ 1e-3 per operation; through a few dozen layers the
# rounding of two differently ordered computations compounds to about 1 % of the logits' scale (not measured:
# no GPU here).
FP32_ATOL, FP32_RTOL = 1e-3, 1e-4
FP16_ATOL, FP16_RTOL = 1e-2, 1e-2


class ExportConfig(CommandConfig):
    """What to export, where, and how."""

    checkpoint: str
    out_dir: Path
    dtype: Literal["fp32", "fp16"] = "fp32"
    opset: int = Field(default=18, ge=14, le=23)
    optimize: Literal["O1", "O2", "O3"] | None = None
    cache: bool = True  # export with KV cache (text-generation-with-past)
    device: Literal["cpu", "cuda"] = "cpu"
    overwrite: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    parity_new_tokens: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _fp16_needs_cuda(self) -> ExportConfig:
        if self.dtype == "fp16" and self.device != "cuda":
            raise ValueError("fp16 export needs --device cuda (ONNX Runtime's CPU provider lacks most fp16 kernels)")
        return self
