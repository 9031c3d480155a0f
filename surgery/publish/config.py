"""Settings of ``surgery card`` and ``surgery push`` (validated once, at the edge)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from surgery.config import CommandConfig

REPO_TYPE_PREFIXES = ("datasets/", "spaces/", "models/")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def model_repo_id(value: str) -> str:
    """``value`` if it is a Hub model id ``owner/name`` (as ``huggingface_hub.validate_repo_id`` accepts it);
    ``ValueError`` with one line saying why not. Used for ``push``'s REPO_ID and every ``--base-model``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if value.startswith(REPO_TYPE_PREFIXES):
        raise ValueError(f"{value!r}: give the model repo id as owner/name (a checkpoint is a model repository)")
    if value.count("/") != 1 or value.startswith(("/", ".", "~")):
        raise ValueError(f"{value!r} must be owner/name (your user name or an organization, then the model name)")
    try:
        validate_repo_id(value)
    except HFValidationError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    return value


def base_model_id(value: str | None) -> str | None:
    """``--base-model``: None, or a Hub model id ``owner/name`` (see :func:`model_repo_id`)."""
    return None if value is None else model_repo_id(value)


class CardInputs(CommandConfig):
    """Which checkpoint, and the measurement files whose results its card shows (kept ones when not given)."""

    checkpoint: Path
    eval_files: list[Path] = Field(default_factory=list)
    baseline: Path | None = None
    bench: Path | None = None
    base_model: str | None = None  # the Hub model the source is a copy of; kept in surgery.json once given

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str | None) -> str | None:
        return base_model_id(value)


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
        return model_repo_id(value)

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not an environment variable name")
        return value
