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

from pydantic import AfterValidator, AllowInfNan, BaseModel, ConfigDict, Field, ValidationError

from surgery.errors import SurgeryError

Config = TypeVar("Config", bound="CommandConfig")


class CommandConfig(BaseModel):
    """A command's validated settings; unknown fields are errors, and so are non-finite numbers.

    ``allow_inf_nan=False``: every float option of every command (``--lr inf``, ``--lora-alpha nan``) is
    refused here with ``--option: Input should be a finite number``; a field that must take part in its own
    message (:data:`Limit`) opts back in with ``AllowInfNan(True)`` and refuses the values itself.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False)

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


MAX_LIMIT = 10**9  # documents per task: more than any benchmark has, and within what itertools.islice takes


def _positive_limit(value: int | float | None) -> int | float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"must be a positive number, got {value}")
    if value > MAX_LIMIT:
        raise ValueError(f"must be at most {MAX_LIMIT} documents (omit it to evaluate every document), got {value:g}")
    return value if value < 1 else int(value)


# A random seed every generator takes: numpy's (and lm-eval's) must be in [0, 2**32 - 1].
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]

# lm-eval's --limit: a count of documents, or a fraction of each task when below 1 (positive and finite).
Limit = Annotated[int | Annotated[float, AllowInfNan(True)] | None, AfterValidator(_positive_limit)]


def validation_message(exc: ValidationError, option_names: Mapping[str, str] | None = None) -> str:
    """pydantic's first error as one line, ``where: what``; with ``option_names`` fields read as CLI options.

    A check of the whole model (a ``model_validator``) has no field: its message, which names the options
    involved itself, is the whole line. With ``option_names``, a nested location (an item of a list option,
    a member of a union) reads as the option and the offending value: ``--backend 'foo': Input should be ...``.
    """
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = [str(part) for part in first["loc"]]
    if not loc:
        return message
    field = ".".join(loc)
    if option_names is not None:
        head = loc[0]
        field = option_names.get(field) or option_names.get(head) or "--" + head.replace("_", "-")
        if len(loc) > 1:
            field += f" {_shown_input(first.get('input'), loc[1:])}"
    return f"{field}: {message}"


def _shown_input(value: Any, rest: list[str]) -> str:
    """The offending value of a nested location, short (``'foo'``), else where it is (``item 2``)."""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        shown = repr(value)
        if len(shown) <= 60 and shown.isprintable():
            return shown
    indices = [part for part in rest if part.isdigit()]
    return f"item {int(indices[-1]) + 1}" if indices else f"({'.'.join(rest)})"


def config_from_options(cls: type[Config], option_names: Mapping[str, str] | None = None, **options: Any) -> Config:
    """The CLI's way to build a config: errors name the option (``--batch-size: ...``).

    ``option_names`` maps fields whose option is not ``--field-name`` (e.g. ``{"out_dir": "--out"}``).
    """
    try:
        return cls(**options)
    except ValidationError as exc:
        raise SurgeryError(validation_message(exc, option_names or {})) from None
