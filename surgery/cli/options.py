"""Click options shared by the commands, defined once (same names, same help, same checks everywhere).

Importing this module imports click only: every command module can use it without slowing ``surgery --help``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from surgery.io.data_dir import DATA_DIR_ENV

PLAN_EXAMPLES = (
    "e.g. 'skip:13-19', 'reverse:8-23', 'shuffle:4-25@3', 'repeat:8-23@15', 'loop:8-12x2', 'parallel:8-23x3' "
    "(comma-separated), or a YAML plan file"
)
MODEL_HELP = "MODEL is a Hub id, a local checkpoint directory (including `surgery apply` outputs) or a .gguf file."
DTYPES = ("float32", "float16", "bfloat16")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def plan_option(*, required: bool = False, default: str | None = None, what: str = "") -> Decorator:
    """``--plan PLAN``; ``what`` says where the plan applies (e.g. 'applied in memory')."""
    help_text = f"Layer plan{' ' + what if what else ''}: {PLAN_EXAMPLES}."
    if not required and default is None:
        help_text += "  [default: none, the unmodified model]"
    return click.option(
        "--plan", "plan_text", required=required, default=default, show_default=default is not None, help=help_text
    )


def revision_option() -> Decorator:
    return click.option("--revision", help="Hub revision (branch, tag or commit) when MODEL is a Hub id.")


def base_model_option() -> Decorator:
    """``--base-model OWNER/NAME``: the Hub model a local or GGUF source is a copy of (the card's ``base_model``)."""
    return click.option(
        "--base-model",
        help="The Hub model (owner/name) the source model is a copy of (e.g. a local folder or GGUF file): the "
        "card's base_model, linking a pushed variant to its parent in the Hub's model tree. Kept in surgery.json "
        "[default: the source's Hub id, or the one the GGUF metadata names].",
    )


def trust_remote_code_option() -> Decorator:
    return click.option(
        "--trust-remote-code",
        is_flag=True,
        help="Run Python code shipped with MODEL (its auto_map). Only for models you trust; not needed for "
        "`surgery apply` outputs, whose code is checked to be this package's own.",
    )


def allow_pickle_option() -> Decorator:
    return click.option(
        "--allow-pickle",
        is_flag=True,
        help="Allow pickle (.bin) weights; unpickling can run code. Only for models you trust.",
    )


def data_dir_option(layout: str) -> Decorator:
    """``--data-dir DIR`` (env ``SURGERY_DATA_DIR``); ``layout`` names the files this command reads there."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help=f"Local benchmark data folder ({layout}) [default: ${DATA_DIR_ENV}; without either, the Hub].",
    )


def dtype_option(default: str | None = "float32", help_text: str = "Model weights dtype.") -> Decorator:
    return click.option(
        "--dtype", type=click.Choice(DTYPES), default=default, show_default=default is not None, help=help_text
    )


def quiet_option() -> Decorator:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars or summary.")


def model_loading_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--revision``, ``--trust-remote-code`` and ``--allow-pickle``: how MODEL may be loaded."""
    for decorator in (allow_pickle_option(), trust_remote_code_option(), revision_option()):
        function = decorator(function)
    return function
