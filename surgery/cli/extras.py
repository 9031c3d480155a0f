"""Optional dependency groups (``pip install 'surgery[eval]'``) and the one clear error when one is missing."""

from __future__ import annotations

import importlib.util

from surgery.errors import SurgeryError

# extra -> the modules it provides (import names), as declared in pyproject.toml
EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("lm_eval", "datasets", "matplotlib", "numpy", "sklearn", "scipy"),
    "export": ("optimum.exporters.onnx", "onnx", "onnxruntime"),
    "finetune": ("peft",),
    "ray": ("ray",),
}


def require_extra(extra: str, command: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise one :class:`SurgeryError` naming the extra when any of its modules is not installed.

    Checked with ``importlib.util.find_spec`` (nothing is imported), before any heavy work starts.
    """
    missing = []
    for module in modules if modules is not None else EXTRAS[extra]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found:
            missing.append(module.split(".")[0])
    if missing:
        raise SurgeryError(
            f"`surgery {command}` needs the [{extra}] extra (missing: {', '.join(dict.fromkeys(missing))}); "
            f"install it with: pip install 'surgery[{extra}]'"
        )
