"""The one training loop of ``surgery finetune`` (full and LoRA alike): resumable, deterministic for a seed.

Each epoch visits the examples in a permutation drawn from ``seed + epoch``; an optimizer step accumulates
``batch_size / micro_batch_size`` right-padded micro-batches, and its loss is the mean cross-entropy over the
batch's target tokens (every micro-batch divides its summed loss by the whole batch's target count, so the
accumulated gradient equals that of one big batch). AdamW, linear warm-up over the first ``warmup_ratio`` of
the steps then linear decay to 0, gradient clipping, optional bf16 autocast (weights stay fp32).

Every ``save_every`` optimizer steps, and when interrupted (Ctrl-C, SIGTERM) between steps, the resumable state
is written into ``state_dir``: trainable weights, optimizer, scheduler, step, RNG states, the log so far, and the
training settings. A resumed run reloads it and continues exactly: the data order is a function of the step.
"""

from __future__ import annotations

import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from surgery.errors import SurgeryError
from surgery.finetune.data import IGNORE, Example
from surgery.finetune.state import STATE_FILE, clear_state, load_state, restore_state

__all__ = [
    "STATE_FILE",
    "Diverged",
    "LoopSettings",
    "TrainResult",
    "check_finite",
    "first_non_finite",
    "load_state",
    "train",
]


class Diverged(SurgeryError):
    """The loss, the gradients or the weights became NaN or infinite: nothing is written, no state is kept."""


def first_non_finite(named: list[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor of ``named`` holding NaN or inf, or None."""
    with torch.no_grad():
        for name, tensor in named:
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                return name
    return None


def check_finite(named: list[tuple[str, torch.Tensor]], when: str) -> None:
    """Raise :class:`Diverged` naming the first tensor of ``named`` with a NaN or infinite value."""
    name = first_non_finite(named)
    if name is not None:
        raise Diverged(
            f"{when}: {name} holds NaN or infinite values (try a lower --lr or --lora-alpha); nothing was written"
        )


@dataclass
class LoopSettings:
    """The loop's hyper-parameters (a subset of :class:`~surgery.finetune.config.FinetuneConfig`)."""

    epochs: int = 1
    lr: float = 5e-5
    batch_size: int = 64
    micro_batch_size: int = 4
    seed: int = 0
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dtype: str = "float32"
    max_steps: int | None = None
    save_every: int = 10


@dataclass
class TrainResult:
    """What the loop did: steps, the last step's loss, throughput, and the per-step log."""

    steps: int
    total_steps: int
    final_loss: float | None
    tokens: int
    seconds: float
    resumed_from: int
    log: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 else None


def schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier of step ``s``: linear warm-up over ``ceil(warmup_ratio * total)`` steps, then linear decay."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def step_counts(num_examples: int, settings: LoopSettings) -> tuple[int, int]:
    """``(steps per epoch, total optimizer steps)``; the last batch of an epoch may be smaller."""
    per_epoch = math.ceil(num_examples / settings.batch_size)
    total = per_epoch * settings.epochs
    return per_epoch, min(total, settings.max_steps) if settings.max_steps else total


def batch_of(step: int, num_examples: int, settings: LoopSettings, cache: dict[int, list[int]]) -> list[int]:
    """Example indices of optimizer step ``step`` (a pure function of the seed and the step)."""
    per_epoch = math.ceil(num_examples / settings.batch_size)
    epoch, index = divmod(step, per_epoch)
    if epoch not in cache:
        generator = torch.Generator().manual_seed(settings.seed + epoch)
        cache.clear()
        cache[epoch] = torch.randperm(num_examples, generator=generator).tolist()
    return cache[epoch][index * settings.batch_size : (index + 1) * settings.batch_size]


def collate(examples: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` on padding)."""
    width = max(len(example.input_ids) for example in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        mask[row, :length] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def summed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the next-token cross-entropy over the target tokens (fp32)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, state_dir / STATE_FILE)


def train(
    model,
    examples: list[Example],
    settings: LoopSettings,
    *,
    state_dir: Path,
    fingerprint: dict[str, Any],
    resume: bool = False,
    pad_id: int = 0,
    progress: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the parameters of ``model`` that require grad on ``examples``; see the module docstring."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not named:
        raise SurgeryError("no trainable parameters (nothing to fine-tune)")
    device = named[0][1].device
    per_epoch, total = step_counts(len(examples), settings)
    optimizer = torch.optim.AdamW(
        [param for _, param in named], lr=settings.lr, weight_decay=settings.weight_decay, betas=(0.9, 0.999)
    )
    factor = schedule(total, settings.warmup_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start, log, tokens_before, seconds_before = 0, [], 0, 0.0
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    state = load_state(state_dir) if resume else None
    if state is not None:
        start, log, tokens_before, seconds_before = restore_state(
            state,
            state_dir=state_dir,
            fingerprint=fingerprint,
            named=named,
            optimizer=optimizer,
            scheduler=scheduler,
            total=total,
            lr_at=lambda step: settings.lr * factor(step),
        )
    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16) if settings.dtype == "bfloat16" else nullcontext()
    )
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="finetune", unit="step", file=sys.stderr, disable=not progress)
    completed, saved, in_update = start, start, False
    tokens, began = 0, time.perf_counter()
    cache: dict[int, list[int]] = {}

    def snapshot() -> dict[str, Any]:
        return {
            "fingerprint": fingerprint,
            "step": completed,
            "trainable": {name: param.detach().to("cpu", copy=True) for name, param in named},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
            "log": log,
            "tokens": tokens_before + tokens,
            "seconds": seconds_before + time.perf_counter() - began,
        }

    model.train()
    try:
        for step in range(start, total):
            chosen = [examples[i] for i in batch_of(step, len(examples), settings, cache)]
            targets = sum(example.num_targets for example in chosen)
            loss_sum = 0.0
            for first in range(0, len(chosen), settings.micro_batch_size):
                batch = collate(chosen[first : first + settings.micro_batch_size], pad_id, device)
                with autocast:
                    loss = summed_loss(model, batch)
                (loss / targets).backward()
                loss_sum += loss.item()
                tokens += int(batch["attention_mask"].sum())
                if not math.isfinite(loss_sum):
                    raise Diverged(
                        f"training diverged at step {step + 1}/{total}: the loss is {loss_sum} "
                        "(try a lower --lr or --lora-alpha); nothing was written"
                    )
            grad_norm = torch.nn.utils.clip_grad_norm_([param for _, param in named], settings.grad_clip)
            if not math.isfinite(float(grad_norm)):
                raise Diverged(
                    f"training diverged at step {step + 1}/{total}: the gradient norm is {float(grad_norm)} "
                    "(try a lower --lr or --lora-alpha); nothing was written"
                )
            in_update = True
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            completed = step + 1
            in_update = False
            elapsed = seconds_before + time.perf_counter() - began
            entry = {
                "step": completed,
                "epoch": round(completed / per_epoch, 4),
                "loss": loss_sum / targets,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "examples": len(chosen),
                "target_tokens": targets,
                "tokens_seen": tokens_before + tokens,
                "elapsed_s": round(elapsed, 3),
                "tokens_per_s": round((tokens_before + tokens) / elapsed, 1) if elapsed > 0 else None,
            }
            log.append(entry)
            bar.update(1)
            bar.set_postfix(loss=f"{entry['loss']:.4f}", tok_s=f"{entry['tokens_per_s'] or 0:.0f}")
            if completed % settings.save_every == 0 or completed == total:  # the last: writing may still fail
                check_finite(named, f"training diverged at step {completed}/{total}")
                _save_state(state_dir, snapshot())
                saved = completed
            if on_step is not None:
                on_step(completed)
    except BaseException as exc:
        if isinstance(exc, Diverged):  # resuming would diverge again at the same step: no state is kept
            clear_state(state_dir)
        resumable = not isinstance(exc, Diverged) and first_non_finite(named) is None
        if not in_update and completed > saved and resumable:
            _save_state(state_dir, snapshot())
            print(
                f"\nnote: interrupted; state saved at step {completed}/{total} in {state_dir} "
                "(rerun with --resume to continue)",
                file=sys.stderr,
            )
        raise
    finally:
        bar.close()
        model.eval()
    return TrainResult(
        steps=completed,
        total_steps=total,
        final_loss=log[-1]["loss"] if log else None,
        tokens=tokens_before + tokens,
        seconds=seconds_before + time.perf_counter() - began,
        resumed_from=start,
        log=log,
    )
