"""The architecture coverage matrix: every op on a tiny random model of one architecture, against a reference.

Used by ``tests/test_architecture_matrix.py`` (the default tier runs the common families, the ``slow`` tier every
architecture) and by ``benchmarks/architecture_matrix.py``, which writes ``docs/architectures.md``.

The reference is independent of the production planner and wrapper: the expected executed sequences are written
out by hand for T = 4 layers, and :func:`reference_output` runs the *source* model once to record the arguments
each source layer receives (its mask, rotary embeddings, ...), then calls the layers one by one in the expected
order (a tuple is a parallel group: members read the same input, the step's output is their mean) and feeds the
result to the source model's own final norm and head by substituting it for the last layer's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tiny_models import MATRIX_LAYERS, MATRIX_VOCAB, tiny_config, tiny_from_config

from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.architectures.detect import find_block_list, is_generative, refusal
from surgery.errors import SurgeryError

TOLERANCE = 1e-4
assert MATRIX_LAYERS == 4  # the sequences below are written out for T = 4

# op name -> (plan, executed sequence for T = 4, tie_repeats)
OPS: dict[str, tuple[str, list, bool]] = {
    "identity": ("identity", [0, 1, 2, 3], False),
    "skip": ("skip:1-2", [0, 3], False),
    "reverse": ("reverse:1-3", [0, 3, 2, 1], False),
    "repeat": ("repeat:1-3@2", [0, 2, 2, 2], False),
    "loop": ("loop:1-2x2", [0, 1, 2, 1, 2, 3], False),
    "parallel": ("parallel:1-2", [0, (1, 2), 3], False),
    "looped parallel": ("parallel:1-2x2", [0, (1, 2), (1, 2), 3], False),
    "tied repeat": ("repeat:1-2@1,loop:3x2", [0, 1, 1, 3, 3], True),
}
CACHE_OPS = ("loop", "looped parallel")  # generative outputs also generate with == without the KV cache


@dataclass
class ArchResult:
    """One row of the matrix."""

    model_type: str
    generative: bool | None = None
    refused: str | None = None  # the architecture is refused (by detection), with the reason
    ops: dict[str, str] = field(default_factory=dict)  # op -> "pass" | "refused: ..." | "fail: ..."
    cache: dict[str, str] = field(default_factory=dict)
    fresh: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> list[str]:
        return [op for op, status in self.ops.items() if status == "pass"]

    @property
    def all_pass(self) -> bool:
        return (
            self.refused is None
            and len(self.passed) == len(OPS)
            and all(v == "pass" for v in (*self.cache.values(), *self.fresh.values()))
        )


def _members(step) -> tuple[int, ...]:
    return step if isinstance(step, tuple) else (step,)


def _hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (hidden, *args[1:]), kwargs
    key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
    return args, {**kwargs, key: hidden}


def model_output(model, ids: torch.Tensor, generative: bool) -> torch.Tensor:
    """Logits of a causal LM, last hidden state of an encoder (no cache)."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False) if generative else model(input_ids=ids)
    return out.logits if generative else out.last_hidden_state


@torch.no_grad()
def reference_output(model, ids: torch.Tensor, sequence: list, generative: bool) -> torch.Tensor:
    """The output of ``sequence`` run on the source ``model`` (see module docstring)."""
    layers = model.get_submodule(find_block_list(model, model.config.num_hidden_layers))
    calls: dict[int, tuple[tuple, dict]] = {}
    hooks = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs, index=index: calls.setdefault(index, (args, kwargs)), with_kwargs=True
        )
        for index, layer in enumerate(layers)
    ]
    try:
        model_output(model, ids, generative)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = _hidden(calls[0][0][0] if calls[0][0] else calls[0][1].get("hidden_states"))
    for step in sequence:
        outputs = []
        for index in _members(step):
            args, kwargs = _with_hidden(*calls[index], hidden)
            outputs.append(_hidden(layers[index](*args, **kwargs)))
        hidden = sum(outputs) / len(outputs)

    def substitute(module, args, output):
        return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])

    hook = layers[len(layers) - 1].register_forward_hook(substitute)
    try:
        return model_output(model, ids, generative)
    finally:
        hook.remove()


def input_ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    """Token ids that avoid the special ids 0-2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, MATRIX_VOCAB, (batch, length), generator=generator)


def _load(path: Path, generative: bool):
    from transformers import AutoModel, AutoModelForCausalLM

    auto = AutoModelForCausalLM if generative else AutoModel
    return auto.from_pretrained(path, trust_remote_code=True, dtype=torch.float32).eval()


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:200]


def _cache_check(model, ids: torch.Tensor) -> str:
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    with torch.no_grad():
        cached = model.generate(ids, use_cache=True, **kwargs)
        uncached = model.generate(ids, use_cache=False, **kwargs)
    return "pass" if torch.equal(cached, uncached) else "fail: cached generation differs from uncached"


class OpTimeout(BaseException):  # not an Exception: the per-op handlers must not swallow it
    """An op ran past its time limit (see ``op_timeout``)."""


def _alarm(signum, frame):  # noqa: ARG001 - signal handler signature
    raise OpTimeout("ran past the time limit")


def run_architecture(
    model_type: str,
    work: Path,
    fresh: list | None = None,
    fresh_ops: tuple[str, ...] = ("tied repeat",),
    op_timeout: int = 0,
) -> ArchResult:
    """Build a tiny ``model_type``, apply every op and compare with the reference.

    ``fresh``, when given, collects the outputs of ``fresh_ops`` for :func:`check_fresh_process`. With
    ``op_timeout`` (seconds, main thread only), an op that runs longer fails as timed out.
    """
    if op_timeout:
        import signal

        signal.signal(signal.SIGALRM, _alarm)
    result = ArchResult(model_type)
    try:
        config = tiny_config(model_type)
        reason = refusal(config)
        if reason:
            result.refused = reason
            return result
        if config.num_hidden_layers != MATRIX_LAYERS:
            raise ValueError(f"the tiny config has {config.num_hidden_layers} layers, not {MATRIX_LAYERS}")
        result.generative = is_generative(model_type)
        model = tiny_from_config(config, result.generative)
        source = work / model_type / "source"
        model.save_pretrained(source, safe_serialization=True)
    except SurgeryError as exc:
        result.refused = str(exc)
        return result
    except Exception as exc:  # a config transformers cannot build at tiny size: recorded, not raised
        result.refused = f"tiny model not buildable: {_first_line(exc)}"
        return result
    ids = input_ids()
    for op in OPS:
        if op_timeout:
            signal.alarm(op_timeout)
        try:
            _run_op(model, model_type, source, op, ids, work, result, fresh, fresh_ops)
        except OpTimeout:
            result.ops[op] = f"fail: ran past {op_timeout}s"
        finally:
            if op_timeout:
                signal.alarm(0)
    return result


def _run_op(model, model_type, source, op, ids, work, result, fresh, fresh_ops) -> None:
    """Apply one op, check its output against the reference (and the KV cache); record it in ``result``."""
    plan, sequence, tie = OPS[op]
    out = work / model_type / op.replace(" ", "_")
    try:
        apply_plan(str(source), plan, out, ApplyOptions(tie_repeats=tie))
    except SurgeryError as exc:
        result.ops[op] = f"refused: {exc}"
        return
    except Exception as exc:
        result.ops[op] = f"fail: apply raised {_first_line(exc)}"
        return
    try:
        expected = reference_output(model, ids, sequence, result.generative)
        loaded = _load(out, result.generative)
        actual = model_output(loaded, ids, result.generative)
        if op == "identity":
            ok = torch.equal(actual, model_output(model, ids, result.generative))
            result.ops[op] = "pass" if ok else "fail: identity is not bit-exact"
        else:
            diff = (actual - expected).abs().max().item() if actual.shape == expected.shape else float("inf")
            result.ops[op] = "pass" if diff <= TOLERANCE else f"fail: max |output - reference| = {diff:.2e}"
        if result.generative and op in CACHE_OPS:
            result.cache[op] = _cache_check(loaded, ids)
        if fresh is not None and op in fresh_ops:
            torch.save(ids, out / "ids.pt")
            torch.save(expected, out / "expected.pt")
            fresh.append((str(out), result.generative, result, op))
    except Exception as exc:
        result.ops[op] = f"fail: {_first_line(exc)}"
        if os.environ.get("SURGERY_MATRIX_DEBUG"):
            traceback.print_exc()


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["surgery"] = None  # any import of this package now raises ImportError
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging
    logging.set_verbosity_error()
    torch.set_num_threads(1)
    report = {}
    for path, generative in json.loads(sys.argv[1]):
        try:
            auto = AutoModelForCausalLM if generative else AutoModel
            model = auto.from_pretrained(path, trust_remote_code=True).eval()
            ids = torch.load(path + "/ids.pt")
            with torch.no_grad():
                out = model(input_ids=ids)
            actual = out.logits if generative else out.last_hidden_state
            diff = (actual - torch.load(path + "/expected.pt")).abs().max().item()
            report[path] = "pass" if diff <= 1e-4 else f"fail: max |output - reference| = {diff:.2e}"
        except Exception as exc:
            report[path] = f"fail: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    assert not [m for m in sys.modules if m.split(".")[0] == "surgery" and sys.modules[m] is not None]
    print("REPORT" + json.dumps(report))
    """
)


def check_fresh_process(entries: list, cwd: Path) -> None:
    """Load every collected output in ONE fresh process where ``import surgery`` fails; record each result."""
    if not entries:
        return
    env = {**os.environ, "PYTHONPATH": "", "HF_MODULES_CACHE": str(cwd / "hf-modules")}
    payload = json.dumps([[path, generative] for path, generative, _, _ in entries])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, payload], capture_output=True, text=True, cwd=cwd, env=env, timeout=900
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("REPORT")]
    report = json.loads(lines[-1][len("REPORT") :]) if lines else {}
    for path, _, result, op in entries:
        result.fresh[op] = report.get(path, f"fail: fresh process exited {child.returncode}: {child.stderr[-300:]}")
