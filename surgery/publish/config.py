"""Settings of ``surgery card`` and ``surgery push`` (validated once, at the edge)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from surgery.config import CommandConfig

REPO_TYPE_PREFIXES = ("datasets/", "spaces/", "models/")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CardInputs(CommandConfig):
    """Which checkpoint, and the measurement files whose results its card shows (kept ones when not given)."""

    checkpoint: Path
    eval_files: list[Path] = Field(default_factory=list)
    baseline: Path | None = None
    bench: Path | None = None


class CardConfig(CardInputs):
    """``surgery card``: re-render README.md in place."""

    name: str | None = None  # what the card tells users to load; default: last pushed repo id, else folder name


class PushConfig(CardInputs):
    """A card's settings plus where and how to upload."""

    repo_id: str
    private: bool = False
    revision: str = Field(default="main", min_length=1)
    commit_message: str | None = None
    include_onnx: Path | None = None
    dry_run: bool = False
    token_env: str = "HF_TOKEN"

    @field_validator("repo_id")
    @classmethod
    def _model_repo_id(cls, value: str) -> str:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        if value.startswith(REPO_TYPE_PREFIXES):
            raise ValueError(f"{value!r}: give the model repo id as owner/name (a checkpoint is a model repository)")
        if value.count("/") != 1:
            raise ValueError(f"{value!r} must be owner/name (your user name or an organization, then the model name)")
        try:
            validate_repo_id(value)
        except HFValidationError as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value
