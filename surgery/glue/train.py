"""Fine-tune-then-evaluate one GLUE task under a layer plan (paper §2, A.8 and A.9).

``AutoModelForSequenceClassification`` on the source checkpoint (a task head is initialized where the checkpoint
has none, e.g. MiniLM's ``BertModel``), the plan applied in memory with :func:`surgery.apply.inmemory.planned` for
training *and* evaluation (the plan swaps the block list only; parameters stay the same objects, so the
optimizer sees them throughout, skipped layers simply get no gradient and parallel groups get gradients
through the mean of their outputs), then a plain PyTorch loop: AdamW (no weight decay on biases and
LayerNorm weights), linear warmup over the first 10 % of steps then linear decay, gradient clipping at 1.

Modes:

* ``full``: every parameter trains (standard BERT fine-tuning; the paper's main BERT numbers).
* ``frozen`` (A.9, "an additional output layer can adapt, but the model itself is frozen"): only the task
  head trains, i.e. the parameters outside the base model (``classifier``) plus any the checkpoint did not
  provide (newly initialized by loading). A pretrained pooler is part of the model and stays frozen. The
  frozen encoder runs in eval mode (no dropout, as at inference); the head's own dropout stays active.

Runs are deterministic for a seed: it seeds the head's initialization, dropout and the shuffling. The training
subset (``max_train``) is a random sample drawn with the seed; the evaluation subset (``max_eval``) is a fixed
sample (seed 0) so that runs with different seeds are scored on the same examples.
"""

from __future__ import annotations

import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.glue.config import GlueConfig
from surgery.glue.data import Example, TaskData, TaskSpec, load_task
from surgery.glue.metrics import compute_metrics, task_score
from surgery.glue.report import TaskResult

EVAL_SUBSET_SEED = 0


def subset(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """At most ``limit`` examples: a random sample drawn with ``seed``, in file order."""
    if limit is None or limit >= len(examples):
        return list(examples)
    chosen = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in chosen]


def load_classifier(config: GlueConfig, spec: TaskSpec):
    """``(model, tokenizer, newly_initialized_names)`` for ``spec``: a sequence classifier on ``config.model``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from surgery.architectures.specs import arch_for
    from surgery.io.model_ref import ModelRef, first_line, remote_code_policy
    from surgery.quiet import quiet_transformers

    ref = ModelRef.parse(config.model, config.revision)
    if ref.kind == "gguf":
        raise SurgeryError(f"`surgery glue` fine-tunes encoder models (BERT); {config.model} is a GGUF file")
    model_config = ref.read_config()
    if model_config.get("model_type") == "surgery":
        raise SurgeryError(
            f"{config.model} is a surgery checkpoint; run `surgery glue` on its source model with --plan instead"
        )
    if arch_for(model_config.get("model_type")).generative:
        raise SurgeryError(
            f"`surgery glue` fine-tunes encoder models (BERT); {config.model} is a {model_config['model_type']} decoder"
        )
    trust = remote_code_policy(ref, model_config, config.trust_remote_code)
    ref.check_pickle(config.allow_pickle)
    location, location_kwargs = ref.pretrained_args(allow_pickle=config.allow_pickle)
    kwargs: dict[str, Any] = {"num_labels": spec.num_labels, "trust_remote_code": trust, **location_kwargs}
    if spec.regression:
        kwargs["problem_type"] = "regression"
    try:
        with quiet_transformers():  # the "newly initialized" warning is expected: we record it instead
            model, info = AutoModelForSequenceClassification.from_pretrained(
                location, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust, revision=ref.revision)
    except (OSError, ValueError) as exc:
        raise SurgeryError(f"cannot load {config.model}: {first_line(exc)}") from exc
    new = sorted({*info.get("missing_keys", ()), *(key for key, *_ in info.get("mismatched_keys", ()))})
    return model.float(), tokenizer, new


def trainable_names(model, mode: str, newly_initialized: list[str]) -> set[str]:
    """Names of the parameters that train in ``mode`` (see the module docstring)."""
    names = [name for name, _ in model.named_parameters()]
    if mode == "full":
        return set(names)
    base = model.base_model_prefix + "."
    new = set(newly_initialized)
    return {name for name in names if not name.startswith(base) or name in new}


def freeze(model, trainable: set[str]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)


def set_train_mode(model, mode: str) -> None:
    model.train()
    if mode == "frozen":
        model.base_model.eval()


class Encoded:
    """Tokenized examples; ``batch(indices)`` pads a batch dynamically."""

    def __init__(self, tokenizer, examples: list[Example], max_length: int, regression: bool):
        import torch

        from surgery.text_limits import clip_text

        a = [clip_text(example.text_a, max_length, keep="start") for example in examples]
        b = (
            [clip_text(example.text_b, max_length, keep="start") for example in examples]
            if examples and examples[0].text_b is not None
            else None
        )
        self.features = dict(tokenizer(a, b, truncation=True, max_length=max_length)) if examples else {"input_ids": []}
        self.pad_id = tokenizer.pad_token_id or 0
        dtype = torch.float32 if regression else torch.long
        self.labels = torch.tensor([example.label for example in examples], dtype=dtype)

    def __len__(self) -> int:
        return len(self.labels)

    def length(self, index: int) -> int:
        return len(self.features["input_ids"][index])

    def batch(self, indices: list[int]) -> dict:
        """Right-padded tensors for ``indices`` (pad id for ``input_ids``, 0 elsewhere) plus ``labels``."""
        import torch

        width = max(self.length(i) for i in indices)
        batch = {}
        for key, values in self.features.items():
            pad = self.pad_id if key == "input_ids" else 0
            batch[key] = torch.tensor([values[i] + [pad] * (width - len(values[i])) for i in indices])
        batch["labels"] = self.labels[indices]
        return batch


def make_optimizer(model, config: GlueConfig, total_steps: int):
    import torch
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([group for group in groups if group["params"]], lr=config.lr)
    warmup = int(config.warmup_ratio * total_steps)
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def train(model, data: Encoded, config: GlueConfig, *, progress: bool = True, desc: str = "train") -> dict:
    """Fine-tune ``model`` (already frozen/planned as wanted) on ``data``; returns loss statistics."""
    import torch
    from tqdm.auto import tqdm

    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    optimizer, scheduler = make_optimizer(model, config, total)
    generator = torch.Generator().manual_seed(config.seed)
    params = [param for param in model.parameters() if param.requires_grad]
    losses: list[float] = []
    set_train_mode(model, config.mode)
    with tqdm(total=total, desc=desc, file=sys.stderr, disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(data), generator=generator).tolist()
            for start in range(0, len(order), config.batch_size):
                batch = data.batch(order[start : start + config.batch_size])
                loss = model(**batch).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    tail = losses[-steps_per_epoch:]
    return {
        "train_steps": total,
        "first_loss": losses[0] if losses else None,
        "last_epoch_loss": sum(tail) / len(tail) if tail else None,
    }


def predict(model, data: Encoded, batch_size: int, regression: bool, *, progress: bool = True) -> list:
    """Predicted class ids (or scores for regression), in example order; batches sorted by length."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    order = sorted(range(len(data)), key=data.length)
    predictions: list = [None] * len(data)
    with torch.no_grad():
        for start in tqdm(
            range(0, len(order), batch_size), desc="eval", file=sys.stderr, disable=not progress, leave=False
        ):
            indices = order[start : start + batch_size]
            batch = data.batch(indices)
            batch.pop("labels")
            logits = model(**batch).logits
            values = logits.squeeze(-1).tolist() if regression else logits.argmax(-1).tolist()
            for index, value in zip(indices, values):
                predictions[index] = value
    return predictions


def run_task(
    task: str, config: GlueConfig, *, data: TaskData | None = None, progress: bool = True, model_and_tokenizer=None
) -> TaskResult:
    """Fine-tune ``config.model`` on ``task`` under ``config.plan`` and score it on the validation set.

    ``model_and_tokenizer`` (``(model, tokenizer, newly_initialized)`` as from :func:`load_classifier`) skips
    loading; it is trained in place.
    """
    from surgery.apply.inmemory import planned

    started = time.perf_counter()
    data = data if data is not None else load_task(task, config.data_dir)
    spec = data.spec
    train_examples = subset(data.train, config.max_train, config.seed)
    eval_examples = subset(data.validation, config.max_eval, EVAL_SUBSET_SEED)
    if not train_examples or not eval_examples:
        raise SurgeryError(f"GLUE task {task}: no training or evaluation examples in {data.source}")
    from transformers import set_seed

    set_seed(config.seed)
    model, tokenizer, new = model_and_tokenizer or load_classifier(config, spec)
    trainable = trainable_names(model, config.mode, new)
    freeze(model, trainable)
    train_data = Encoded(tokenizer, train_examples, config.max_length, spec.regression)
    eval_data = Encoded(tokenizer, eval_examples, config.max_length, spec.regression)
    with planned(model, config.plan) if config.plan else nullcontext() as execution:
        set_seed(config.seed)
        stats = train(model, train_data, config, progress=progress, desc=f"{task} ({config.mode})")
        predictions = predict(model, eval_data, config.eval_batch_size, spec.regression, progress=progress)
    labels = [example.label for example in eval_examples]
    metrics = compute_metrics(task, labels, predictions)
    details = {
        "data": data.source,
        "train_examples": len(train_examples),
        "eval_examples": len(eval_examples),
        "executed": execution.describe() if execution is not None else "identity",
        "newly_initialized": new,
        "trainable_parameters": sum(p.numel() for n, p in model.named_parameters() if n in trainable),
        **stats,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return TaskResult(task, metrics, task_score(task, metrics), details)


def check(config: GlueConfig, tasks: list[str], output: Path | None = None) -> None:
    """Everything that can be refused before torch loads: extra, data folder, output, plan, model."""
    from surgery.architectures.loading import check_loadable
    from surgery.cli.extras import require_extra
    from surgery.fileio import check_writable_file
    from surgery.io.data_dir import resolve_data_dir

    require_extra("eval", "glue", ("numpy", "sklearn", "scipy"))
    resolve_data_dir(config.data_dir)
    if output is not None:
        check_writable_file(output, "--output")
    if config.plan is not None:
        from surgery.plan import load_plan

        load_plan(config.plan)
    check_loadable(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )


def run_glue(tasks: list[str], config: GlueConfig, *, progress: bool = True, on_result=None) -> dict[str, Any]:
    """Run every task (the plan is parsed and all data loaded first, so those errors come before any training)."""
    check(config, tasks)
    datasets = {task: load_task(task, config.data_dir) for task in tasks}
    results = []
    for task in tasks:
        result = run_task(task, config, data=datasets[task], progress=progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    from surgery.glue.report import build_report

    return build_report(config, results)
