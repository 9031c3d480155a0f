"""The resumable state of ``surgery finetune`` (``.OUT_DIR.finetune-state/state.pt``): read, checked, restored.

The state file lives beside OUT_DIR and is read back on ``--resume``, so it is input like any other: it is
loaded with ``weights_only=True`` (tensors and plain values only) and every part is checked against the run
that resumes before anything is used. Trainable tensors and the optimizer's moments must have each parameter's
shape and dtype and be finite (a scalar would broadcast into every weight); the step must lie within the run's
steps, the log must have one finite entry per step; the optimizer's hyper-parameters, the scheduler and the
learning rate are rebuilt from the run's own settings and the saved ones must agree. A refused file is reported
in one line that says how to start over.
"""

from __future__ import annotations

import math
import random
from numbers import Real
from pathlib import Path
from typing import Any

import torch

from surgery.errors import SurgeryError
from surgery.io.model_ref import first_line

STATE_FILE = "state.pt"
STATE_KEYS = ("fingerprint", "step", "trainable", "optimizer", "scheduler", "torch_rng", "python_rng", "log")
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}
JSON_SCALARS = (type(None), bool, int, float, str)


class Refused(SurgeryError):
    """A saved state that does not belong to this run (or was never written by surgery)."""


def load_state(state_dir: Path) -> dict[str, Any] | None:
    """The saved resumable state of ``state_dir`` (tensors and plain values only), or None when there is none."""
    path = state_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        import pickle

        if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
            reason = "it holds objects other than tensors and plain values, so it was not written by surgery"
        else:
            reason = first_line(exc)
        raise Refused(f"cannot read the saved fine-tuning state {path}: {reason}; {_start_over(state_dir)}") from None
    if not isinstance(state, dict):
        raise Refused(f"cannot resume from {path}: not a fine-tuning state; {_start_over(state_dir)}")
    return state


def _start_over(state_dir: Path) -> str:
    return f"delete {state_dir} to start over"


def clear_state(state_dir: Path) -> None:
    """Remove what the loop wrote (``state.pt`` and its temporary), then the folder if that left it empty.

    Never a recursive delete: a folder at the state path that holds anything else is left as it is.
    """
    for name in (STATE_FILE, STATE_FILE + ".tmp"):
        (state_dir / name).unlink(missing_ok=True)
    try:
        state_dir.rmdir()
    except OSError:
        pass


def _finite_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_tensor(tensor: Any, like: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{what} is {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != tuple(like.shape) or tensor.dtype != like.dtype:
        raise ValueError(
            f"{what} is {tensor.dtype} {list(tensor.shape)}; the model's is {like.dtype} {list(like.shape)}"
        )
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{what} holds non-finite values")
    return tensor


def _check_log(log: Any, step: int) -> list[dict[str, Any]]:
    if not isinstance(log, list) or len(log) != step:
        raise ValueError(f"the log has {len(log) if isinstance(log, list) else 'no'} entries for {step} steps")
    for index, entry in enumerate(log):
        if (
            not isinstance(entry, dict)
            or entry.get("step") != index + 1
            or not _finite_real(entry.get("loss"))
            or not _finite_real(entry.get("lr"))
            or not all(isinstance(k, str) and isinstance(v, JSON_SCALARS) for k, v in entry.items())
        ):
            raise ValueError(f"log entry {index + 1} is not a step record with a finite loss and learning rate")
    return log


def _optimizer_state(saved: Any, named: list, fresh: dict, step: int, lr: float) -> dict[str, Any]:
    """The optimizer state to load: the saved moments (checked), the run's own hyper-parameters."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ValueError("the optimizer state is malformed")
    groups = saved.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(fresh["param_groups"]):
        raise ValueError("the optimizer's parameter groups do not match the model")
    for group, own in zip(groups, fresh["param_groups"]):
        if not isinstance(group, dict) or set(group) != set(own):
            raise ValueError("the optimizer's parameter groups do not match the model")
        for key, value in own.items():
            if key != "lr" and group[key] != value:
                raise ValueError(f"the optimizer's {key} is {group[key]!r}, not this run's {value!r}")
        if not _finite_real(group["lr"]) or not math.isclose(group["lr"], lr, rel_tol=1e-9, abs_tol=1e-15):
            raise ValueError(f"the learning rate {group['lr']!r} is not this run's {lr!r} at step {step}")
    moments = {}
    for index, entry in saved["state"].items():
        if not _count(index) or not 0 <= index < len(named) or not isinstance(entry, dict) or set(entry) != ADAM_KEYS:
            raise ValueError("the optimizer state does not match the trainable parameters")
        name, param = named[index]
        counter = entry["step"]
        if not isinstance(counter, torch.Tensor) or counter.dim() != 0 or not 0 <= float(counter) <= step:
            raise ValueError(f"the optimizer's step count for {name} is not within 0..{step}")
        exp_avg = _check_tensor(entry["exp_avg"], param, f"the optimizer's exp_avg of {name}")
        exp_avg_sq = _check_tensor(entry["exp_avg_sq"], param, f"the optimizer's exp_avg_sq of {name}")
        if bool((exp_avg_sq < 0).any()):
            raise ValueError(f"the optimizer's exp_avg_sq of {name} is negative")
        moments[index] = {"step": counter.float(), "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    groups = [{**own, "lr": lr} for own in fresh["param_groups"]]
    return {"state": moments, "param_groups": groups}


def restore_state(
    state: dict[str, Any],
    *,
    state_dir: Path,
    fingerprint: dict[str, Any],
    named: list[tuple[str, torch.nn.Parameter]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    total: int,
    lr_at: Any,
) -> tuple[int, list[dict[str, Any]], int, float]:
    """Check ``state`` against this run, then load it into the parameters, optimizer, scheduler and RNGs.

    ``lr_at(step)`` is the run's learning rate at a step. Returns ``(step, log, tokens, seconds)``; raises one
    :class:`Refused` line when anything does not belong to this run.
    """
    saved = state.get("fingerprint")
    if isinstance(saved, dict) and saved != fingerprint:
        changed = sorted(k for k in {*fingerprint, *saved} if fingerprint.get(k) != saved.get(k))
        raise Refused(
            f"cannot resume from {state_dir}: it was saved with other settings ({', '.join(changed)}); "
            "rerun with the same settings, or delete it to start over"
        )
    try:
        missing = [key for key in (*STATE_KEYS, "tokens", "seconds") if key not in state]
        if missing or not isinstance(saved, dict):
            raise ValueError(f"it lacks {', '.join(missing) or 'the settings'}")
        step = state["step"]
        if not _count(step) or not 0 <= step <= total:
            raise ValueError(f"step {step!r} is not within 0..{total} (the steps of this run)")
        if not _count(state["tokens"]) or state["tokens"] < 0 or not _finite_real(state["seconds"]):
            raise ValueError("the token count or the elapsed time is not a valid number")
        log = _check_log(state["log"], step)
        trainable = state["trainable"]
        if not isinstance(trainable, dict) or set(trainable) != {name for name, _ in named}:
            raise ValueError("its trainable tensors are not this model's trainable parameters")
        weights = {name: _check_tensor(trainable[name], param, name) for name, param in named}
        lr = lr_at(step)
        moments = _optimizer_state(state["optimizer"], named, optimizer.state_dict(), step, lr)
        if not isinstance(state["scheduler"], dict) or state["scheduler"].get("last_epoch") != step:
            raise ValueError(f"the scheduler is not at step {step}")
        rng = state["torch_rng"]
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
            raise ValueError("the saved torch random state is malformed")
        python_rng = random.getstate()
        try:
            random.setstate(state["python_rng"])
        except (TypeError, ValueError, OverflowError):
            raise ValueError("the saved Python random state is malformed") from None
        finally:
            random.setstate(python_rng)
    except ValueError as exc:
        raise Refused(f"cannot resume from {state_dir / STATE_FILE}: {exc}; {_start_over(state_dir)}") from None
    with torch.no_grad():
        for name, param in named:
            param.copy_(weights[name])
    optimizer.load_state_dict(moments)
    own = scheduler.state_dict()
    scheduler.load_state_dict(
        {**own, "last_epoch": step, "_step_count": step + 1, "_last_lr": [lr] * len(own["base_lrs"])}
    )
    torch.set_rng_state(rng)
    random.setstate(state["python_rng"])
    return step, log, state["tokens"], float(state["seconds"])
