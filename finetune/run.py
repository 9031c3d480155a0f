"""``surgery finetune`` as a function: :func:`run_finetune` loads, trains (full or LoRA) and writes the checkpoint.

:func:`check` refuses bad input before torch loads; the training itself is :func:`surgery.finetune.loop.train`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.finetune.config import FinetuneConfig
from surgery.io.model_ref import ModelRef


@dataclass
class Checked:
    """What :func:`check` established about the input."""

    ref: ModelRef
    raw_config: dict[str, Any]
    num_layers: int
    surgery_class: bool
    data_dir: Path | None


def state_dir_for(out_dir: Path) -> Path:
    """The hidden sibling of OUT_DIR holding the resumable state: ``.NAME.finetune-state``."""
    real = Path(os.path.realpath(Path(out_dir).expanduser()))
    return real.parent / f".{real.name}.finetune-state"


def input_files(config: FinetuneConfig, data_dir: Path | None) -> list[Path]:
    """The files this run reads besides the model (training data, a plan file): protected like the model."""
    from surgery.finetune.data import ARC_SUBSETS, arc_local_path

    files = []
    if config.data in ARC_SUBSETS:
        if data_dir is not None:
            files.append(arc_local_path(config.data, data_dir))
    else:
        files.append(Path(config.data).expanduser())
    if config.plan is not None and len(config.plan) < 256 and "\n" not in config.plan:
        try:
            if Path(config.plan).expanduser().is_file():
                files.append(Path(config.plan).expanduser())
        except OSError:  # plan text that is no possible file name
            pass
    return files


def check_state_dir(config: FinetuneConfig, protect: list[Path]) -> Path:
    """The resume-state folder beside OUT_DIR, refused where removing it could touch an input."""
    from surgery.io.output_dir import check_apart

    state_dir = state_dir_for(config.out_dir)
    if state_dir.is_symlink() or (state_dir.exists() and not state_dir.is_dir()):
        raise SurgeryError(
            f"the resume-state path {state_dir} (beside OUT_DIR) is a symlink or not a directory; "
            "move it away or choose another OUT_DIR"
        )
    check_apart(
        state_dir,
        protect,
        what="the resume-state folder",
        choose="OUT_DIR (its state is kept beside it, in .OUT_DIR.finetune-state)",
        inputs="an input of this run",
    )
    return state_dir


def check(config: FinetuneConfig) -> Checked:
    """Everything that can be refused before the model loads (well under a second)."""
    from surgery.architectures.loading import check_loadable
    from surgery.architectures.specs import arch_for_config
    from surgery.cli.extras import require_extra
    from surgery.finetune.data import ARC_SUBSETS, check_data
    from surgery.finetune.loop import STATE_FILE
    from surgery.io.data_dir import resolve_data_dir
    from surgery.io.model_ref import num_layers_of
    from surgery.io.output_dir import check_apart, check_output_dir

    if config.method == "lora":
        require_extra("finetune", "finetune --method lora")
    data_dir = resolve_data_dir(config.data_dir)
    if config.data in ARC_SUBSETS and data_dir is None:
        require_extra("eval", "finetune --data " + config.data, ("datasets",))
    ref, raw_config, _ = check_loadable(
        config.model,
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    spec = arch_for_config(raw_config)
    if not spec.generative:
        raise SurgeryError(f"{config.model} is an encoder ({spec.name}); `surgery finetune` trains causal LMs")
    num_layers = num_layers_of(raw_config, config.model)
    surgery_class = raw_config.get("model_type") == "surgery"
    model_paths = [ref.path] if ref.path else []
    check_output_dir(config.out_dir, overwrite=config.overwrite, protect=model_paths)
    files = input_files(config, data_dir)
    check_apart(config.out_dir, files, inputs="an input of this run")
    check_state_dir(config, [*model_paths, *files])
    if config.plan is not None:
        from surgery.plan import load_plan, resolve_plan

        if surgery_class:
            raise SurgeryError(
                f"--plan needs a model of the source architecture; {config.model} is a surgery-class checkpoint "
                "(apply the composed plan to its source model instead)"
            )
        resolve_plan(load_plan(config.plan), num_layers)  # a plan that does not fit is refused here
    check_data(config.data, data_dir)
    state = state_dir_for(config.out_dir) / STATE_FILE  # checked above: a real folder apart from every input
    if state.is_file() and not config.resume:
        raise SurgeryError(
            f"an interrupted run left its state in {state.parent}; pass --resume to continue it "
            "(or delete that folder to start over)"
        )
    return Checked(ref, raw_config, num_layers, surgery_class, data_dir)


def run_finetune(
    config: FinetuneConfig, *, progress: bool = True, on_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Fine-tune and write the standalone checkpoint into ``config.out_dir``; returns the ``finetune`` stage record.

    ``on_step(step)`` is called after every optimizer step (tests use it to simulate an interruption).
    """
    checked = check(config)
    import torch

    from surgery.architectures.loading import load_model_and_tokenizer
    from surgery.architectures.specs import arch_for_config
    from surgery.finetune.data import load_train_data
    from surgery.finetune.full import prepare_full, trainable_count
    from surgery.finetune.loop import Diverged, LoopSettings, train
    from surgery.finetune.state import clear_state

    spec = arch_for_config(checked.raw_config)
    model, tokenizer = load_model_and_tokenizer(
        config.model,
        dtype="float32",
        revision=config.revision,
        trust_remote_code=config.trust_remote_code,
        allow_pickle=config.allow_pickle,
    )
    data = load_train_data(
        config.data, checked.data_dir, tokenizer, max_length=config.max_length, limit=config.limit, seed=config.seed
    )
    settings = LoopSettings(
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        micro_batch_size=config.micro_batch_size,
        seed=config.seed,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        grad_clip=config.grad_clip,
        dtype=config.dtype,
        max_steps=config.max_steps,
        save_every=config.save_every,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    state_dir = state_dir_for(config.out_dir)
    torch.manual_seed(config.seed)  # LoRA's initialisation
    from surgery.apply.inmemory import planned

    peft_model, targets = None, None
    with planned(model, config.plan) if config.plan is not None else nullcontext():
        if config.method == "lora":
            from surgery.finetune.lora import apply_lora, resolve_targets

            targets = resolve_targets(model, spec, config.lora_targets)
            peft_model = trainee = apply_lora(
                model, spec, rank=config.lora_rank, alpha=config.lora_alpha, targets=config.lora_targets
            )
        else:
            trainee = prepare_full(model)
        trainable, total_params = trainable_count(trainee)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        result = train(
            trainee,
            data.examples,
            settings,
            state_dir=state_dir,
            fingerprint=config.training_settings(),
            resume=config.resume,
            pad_id=pad_id,
            progress=progress,
            on_step=on_step,
        )
        if config.gradient_checkpointing:
            model.gradient_checkpointing_disable()
    details = {
        "method": config.method,
        "data": data.record(),
        "hyperparameters": config.training_settings(),
        "lora_target_modules": targets,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "resumed_from_step": result.resumed_from or None,
        "final_loss": result.final_loss,
        "first_loss": result.log[0]["loss"] if result.log else None,
        "tokens": result.tokens,
        "train_seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_per_s, 1) if result.tokens_per_s else None,
        "tied_layers": "a layer executed at several positions is one set of weights, trained once "
        "(its LoRA, if any, is shared by every position)",
    }
    try:
        _write(config, checked, model, tokenizer, peft_model, details, result.log)
    except Diverged:  # the merged weights overflowed: a resumed run would end the same way
        clear_state(state_dir)
        raise
    clear_state(state_dir)
    return details


def _write(config, checked: Checked, model, tokenizer, peft_model, details: dict, log: list[dict]) -> None:
    from surgery.finetune.loop import check_finite
    from surgery.finetune.lora import merge_lora
    from surgery.finetune.report import plot_loss, write_log
    from surgery.finetune.write import (
        input_base_model,
        input_provenance,
        planned_source,
        save_planned,
        save_same_kind,
        stored_dtype,
        write_card,
    )
    from surgery.io.output_dir import staged_output

    protect = [checked.ref.path] if checked.ref.path else []
    dtype = stored_dtype(checked.raw_config)
    with staged_output(config.out_dir, overwrite=config.overwrite, protect=protect) as tmp:
        if peft_model is not None:
            if config.save_adapter:
                peft_model.save_pretrained(tmp / "adapter")
            model = merge_lora(peft_model)
        check_finite(list(model.named_parameters()), "the trained model")
        if config.plan is not None:
            record = save_planned(model, tokenizer, config.plan, tmp, tie_repeats=config.tie_repeats, dtype=dtype)
            record.source = planned_source(checked.ref, checked.num_layers)
            record.base_model = input_base_model(checked.ref)
        else:
            save_same_kind(model, tokenizer, tmp, surgery_class=checked.surgery_class, dtype=dtype)
            record = input_provenance(checked.ref, checked.raw_config, checked.num_layers)
        record.add_stage("finetune", **details)
        record.write(tmp)
        name = Path(os.path.realpath(Path(config.out_dir).expanduser())).name
        write_card(tmp, record, name)
        write_log(tmp, log)
        plot_loss(
            tmp,
            log,
            f"surgery finetune --method {config.method}: {checked.ref.name} -> {name}\n"
            f"data {details['data']['name']} ({details['data']['examples']} examples), "
            f"lr {config.lr}, batch {config.batch_size}",
        )
