"""Hard bounds on what a plan may ask for, checked before anything is expanded.

A plan is user input (a command-line string or a YAML file, possibly from someone else), and a few characters
such as ``loop:0-29x1000000000`` would otherwise expand into billions of steps. Every bound below is checked
arithmetically, before a list of layers or steps is built, and fails with one :class:`~surgery.errors.SurgeryError`
that names the limit.
"""

from __future__ import annotations

#: Most times a ``loop``/``parallel`` block may run (its K). The paper's looped variants use K <= 4; 64 is far
#: beyond anything useful and keeps T * K small for any real model.
MAX_LOOPS = 64

#: Most executed layer instances a resolved plan may have (a parallel group of n layers counts n). Each instance
#: is a KV-cache slot and a forward step at inference time (and a stored layer when repeats are not tied), so
#: this bounds memory and time; 4096 is ~30x the deepest released decoder (126 layers), identity included.
MAX_EXECUTED_STEPS = 4096

#: Layer indices must be below this, whatever the model: keeps numbers in messages short and arithmetic cheap.
#: Indices are checked against the model's real layer count later, in :mod:`surgery.plan.resolve`.
MAX_LAYER_INDEX = 1_000_000

#: Largest absolute ``shuffle`` seed (a signed 64-bit integer).
MAX_SEED = 2**63 - 1

#: Largest plan file, and longest plan text. The largest useful plan (an explicit sequence of MAX_EXECUTED_STEPS
#: entries, commented) is well under 64 KiB; pure-Python YAML parses 256 KiB in about a second.
MAX_PLAN_BYTES = 256 * 1024

#: Deepest nesting of YAML collections in a plan file. Real plans nest 4 deep (mapping > list > mapping > list);
#: the bound keeps the recursive YAML composer far from Python's recursion limit.
MAX_YAML_DEPTH = 16

__all__ = ["MAX_EXECUTED_STEPS", "MAX_LAYER_INDEX", "MAX_LOOPS", "MAX_PLAN_BYTES", "MAX_SEED", "MAX_YAML_DEPTH"]
