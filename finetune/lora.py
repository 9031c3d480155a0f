"""LoRA through PEFT: ``LoraConfig`` + ``get_peft_model``, then ``merge_and_unload`` into a standalone model.

Targets are module names matched as suffixes of the model's ``nn.Linear`` modules inside its layers: the
architecture's groups (``mlp``, ``attn``, ``all``, from :mod:`surgery.architectures.specs`) or explicit
comma-separated names (``q_proj,v_proj``). A tied layer executed at several positions holds one set of
weights, so its LoRA is one adapter shared by every position (and merged once).
"""

from __future__ import annotations

from torch import nn

from surgery.architectures.specs import ArchSpec
from surgery.errors import SurgeryError

GROUPS = ("mlp", "attn", "all")


def layer_linear_names(model, spec: ArchSpec) -> list[str]:
    """Every ``nn.Linear`` module name under the block list, without the ``...layers.N.`` prefix."""
    pattern = spec.layer_key_pattern
    names = set()
    for name, module in model.named_modules():
        match = pattern.match(name)
        if match and isinstance(module, nn.Linear):
            names.add(match["tail"])
    return sorted(names)


def resolve_targets(model, spec: ArchSpec, targets: str) -> list[str]:
    """The target module names for ``targets`` (a group or comma-separated names), checked against the model."""
    available = layer_linear_names(model, spec)
    if targets in GROUPS:
        names = list(spec.lora_target_modules(targets))
    else:
        names = [name.strip() for name in targets.split(",") if name.strip()]
    unknown = [name for name in names if not any(tail == name or tail.endswith("." + name) for tail in available)]
    if unknown:
        valid = sorted({*available, *(tail.rpartition(".")[2] for tail in available)})
        raise SurgeryError(
            f"unknown LoRA target module(s) {', '.join(unknown)}; valid names in this model: {', '.join(valid)} "
            f"(or a group: {', '.join(GROUPS)})"
        )
    return names


def apply_lora(model, spec: ArchSpec, *, rank: int, alpha: float, targets: str):
    """Wrap ``model`` with fresh LoRA adapters (only they train); returns the PEFT model."""
    from peft import LoraConfig, get_peft_model

    names = resolve_targets(model, spec, targets)
    for param in model.parameters():
        param.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=names, lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(model, config)
    if not any(param.requires_grad for param in peft_model.parameters()):
        raise SurgeryError("no trainable parameters: the LoRA targets matched no module")
    return peft_model


def merge_lora(peft_model):
    """Fold the adapters into the base weights; returns the plain transformers model."""
    merged = peft_model.merge_and_unload()
    for param in merged.parameters():
        param.requires_grad_(False)
    return merged
