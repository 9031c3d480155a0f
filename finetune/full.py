"""Full fine-tuning (the paper's Appendix A.2 setting): every parameter trains.

A tied layer that runs at several positions (a loop or ``tie_repeats`` checkpoint, or a repeat under
``--plan``) is one set of weights: its gradient is the sum over the positions, and it is updated once per step.
Layers a plan skips receive no gradient and are left unchanged.
"""

from __future__ import annotations

from surgery.errors import SurgeryError


def prepare_full(model):
    """Make every parameter trainable; returns the model (the one trained and written)."""
    for param in model.parameters():
        param.requires_grad_(True)
    if not any(param.requires_grad for param in model.parameters()):
        raise SurgeryError("no trainable parameters (nothing to fine-tune)")
    return model


def trainable_count(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (shared tensors counted once)."""
    seen: dict[int, tuple[int, bool]] = {}
    for param in model.parameters():
        seen[id(param)] = (param.numel(), param.requires_grad)
    return sum(n for n, grad in seen.values() if grad), sum(n for n, _ in seen.values())
