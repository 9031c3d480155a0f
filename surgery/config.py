"""The base of every command's configuration: validated once, at the edge, with pydantic.

Each command package has ``config.py`` (a :class:`CommandConfig`), a library entry point taking it, a report
module owning its files, and a thin ``cli.py`` that builds the config from its options with
:func:`config_from_options`. Library code raises errors in library terms (``batch_size``); the CLI helper
renders the field as the option the user typed (``--batch-size``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from surgery.errors import SurgeryError

Config = TypeVar("Config", bound="CommandConfig")


class CommandConfig(BaseModel):
    """A command's validated settings; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @classmethod
    def validated(cls: type[Config], **values: Any) -> Config:
        """Build and validate; one :class:`SurgeryError` (``field: message``) for the first problem."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SurgeryError(validation_message(exc)) from None

    def record(self) -> dict[str, Any]:
        """JSON-safe settings for results files (paths as strings)."""
        return self.model_dump(mode="json")


def _positive_limit(value: int | float | None) -> int | float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {value}")
    return value if value < 1 else int(value)


# lm-eval's --limit: a count of documents, or a fraction of each task when below 1 (positive and finite).
Limit = Annotated[int | float | None, AfterValidator(_positive_limit)]


def validation_message(exc: ValidationError, option_names: Mapping[str, str] | None = None) -> str:
    """pydantic's first error as one line, ``where: what``; with ``option_names`` fields read as CLI options."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if option_names is not None:
        field = option_names.get(field, "--" + field.replace("_", "-"))
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {message}"


def config_from_options(cls: type[Config], option_names: Mapping[str, str] | None = None, **options: Any) -> Config:
    """The CLI's way to build a config: errors name the option (``--batch-size: ...``).

    ``option_names`` maps fields whose option is not ``--field-name`` (e.g. ``{"out_dir": "--out"}``).
    """
    try:
        return cls(**options)
    except ValidationError as exc:
        raise SurgeryError(validation_message(exc, option_names or {})) from None
