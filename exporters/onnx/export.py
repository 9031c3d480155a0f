"""Export a checkpoint to ONNX through optimum-onnx, check parity, install it atomically.

Plain outputs of ``surgery apply`` (and any supported model) export with optimum's own ONNX config for their
architecture. The surgery wrapper class (parallel blocks, looped parallel, tied repeats) exports with the
*source* architecture's ONNX config built from the wrapper's config, whose ``num_hidden_layers`` is the number of
executed layer instances: the graph gets one ``past_key_values.{i}.key/value`` pair per executed instance. The
exported folder's ``config.json`` is then rewritten to the source architecture (``model_type: llama``, the same
``num_hidden_layers`` = instances, no ``auto_map``): the graph is self-contained, so ONNX Runtime needs only the
cache shapes, and plain ``ORTModelForCausalLM.from_pretrained(OUT_DIR)`` loads it without ``trust_remote_code``
and with the right ``num_key_value_heads`` (optimum reads it only for model types it knows).

Nothing is installed at OUT_DIR unless the parity check (:mod:`~surgery.exporters.onnx.parity`) passes.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from surgery import __version__
from surgery.errors import SurgeryError
from surgery.exporters.onnx.config import FP16_ATOL, FP16_RTOL, FP32_ATOL, FP32_RTOL, ExportConfig
from surgery.exporters.onnx.record import EXPORT_FILE  # defined with its reader


def task_for(spec, model_config: dict[str, Any], cache: bool) -> str:
    """optimum's task name for this checkpoint."""
    if spec.generative:
        return "text-generation-with-past" if cache else "text-generation"
    architectures = model_config.get("source_architectures") or model_config.get("architectures") or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return "text-classification"
    return "feature-extraction"


def check(config: ExportConfig):
    """Everything that can be refused before torch loads: the extra, the checkpoint, its code, OUT_DIR."""
    from surgery.architectures.loading import check_loadable, check_stored_layers
    from surgery.architectures.specs import arch_for_config
    from surgery.cli.extras import require_extra
    from surgery.io.model_ref import ModelRef
    from surgery.io.output_dir import check_output_dir

    require_extra("export", "export onnx")
    ref = ModelRef.parse(config.checkpoint, config.revision)
    if ref.kind == "gguf":
        raise SurgeryError(
            f"{config.checkpoint} is a GGUF file; write a transformers checkpoint first "
            f"(surgery apply --plan identity {config.checkpoint} DIR) and export DIR"
        )
    ref, model_config, trust = check_loadable(ref, trust_remote_code=config.trust_remote_code)
    spec = arch_for_config(model_config)
    check_stored_layers(ref, model_config, spec)  # the layer check apply makes, before any weight loads
    check_output_dir(config.out_dir, overwrite=config.overwrite, protect=[ref.path] if ref.path else [])
    from surgery.evaluation.run import resolve_device

    resolve_device(config.device)  # one device check for every command (one line when CUDA is missing)
    return ref, model_config, spec, trust


def _load(ref, model_config, spec, task: str, trust: bool, config: ExportConfig):
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from surgery.io.source import TOKENIZER_FILES

    auto = {"text-classification": AutoModelForSequenceClassification}.get(task)
    auto = auto or (AutoModelForCausalLM if spec.generative else AutoModel)
    location, kwargs = ref.pretrained_args()
    dtype = torch.float16 if config.dtype == "fp16" else torch.float32
    # The surgery class exports unfused: fused parallel blocks would trace their stacked weight copies into the
    # graph as constants beside the per-layer weights (twice the block's bytes), for no gain in ONNX Runtime.
    unfused = {"surgery_fuse_parallel": False} if model_config.get("model_type") == "surgery" else {}
    model = auto.from_pretrained(location, dtype=dtype, trust_remote_code=trust, **kwargs, **unfused)
    model = model.eval().to(config.device)
    tokenizer = None
    if ref.path is None or any((ref.path / name).is_file() for name in TOKENIZER_FILES):
        kwargs.pop("use_safetensors", None)
        try:
            tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust, **kwargs)
        except (OSError, ValueError, TypeError):  # no usable tokenizer: parity runs on seeded random ids
            tokenizer = None
    return model, tokenizer


def _custom_config(model, spec, task: str, cache: bool) -> dict[str, Any]:
    """The source architecture's ONNX config, sized by the wrapper's config (one cache pair per instance)."""
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model_type=spec.onnx_model_type or spec.name, task=task, library_name="transformers"
    )
    if spec.generative:
        return {"model": constructor(model.config, use_past=cache, use_past_in_inputs=cache)}
    return {"model": constructor(model.config)}


def as_source_config(path: Path) -> None:
    """Rewrite an exported wrapper's ``config.json`` as the source architecture's (instances = layers)."""
    from surgery.modeling.configuration_surgery import SURGERY_KEYS

    config = json.loads(path.read_text())
    config["model_type"] = config["source_model_type"]
    config["architectures"] = list(config["source_architectures"])
    for key in (*SURGERY_KEYS, "auto_map"):
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _optimize(directory: Path, level: str) -> None:
    """ONNX Runtime graph optimizations, as optimum's ``main_export(optimize=...)`` applies them."""
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimizer = ORTOptimizer.from_pretrained(directory, file_names=["model.onnx"])
    optimization_config = AutoOptimizationConfig.with_optimization_level(optimization_level=level)
    optimization_config.disable_shape_inference = True
    optimizer.optimize(save_dir=directory, optimization_config=optimization_config, file_suffix="")


def ort_class(task: str):
    """The optimum ONNX Runtime class that loads an export of ``task``."""
    from optimum import onnxruntime as ort

    return {
        "text-generation-with-past": ort.ORTModelForCausalLM,
        "text-generation": ort.ORTModelForCausalLM,
        "text-classification": ort.ORTModelForSequenceClassification,
        "feature-extraction": ort.ORTModelForFeatureExtraction,
    }[task]


def export_onnx(config: ExportConfig, *, log=None) -> dict[str, Any]:
    """Export, check parity, and install at ``config.out_dir``; returns the record written as ``export.json``."""
    log = log or (lambda message: print(message, file=sys.stderr))
    ref, model_config, spec, trust = check(config)
    from optimum.exporters.onnx import onnx_export_from_model

    from surgery.apply.provenance import Provenance
    from surgery.exporters.onnx.parity import check_parity
    from surgery.exporters.onnx.record import source_record
    from surgery.io.output_dir import staged_output
    from surgery.io.source import copy_side_files
    from surgery.quiet import quiet_logger, quiet_transformers

    task = task_for(spec, model_config, config.cache)
    surgery_class = model_config.get("model_type") == "surgery"
    log(f"loading {config.checkpoint} ({'surgery class' if surgery_class else spec.name}, task {task})")
    model, tokenizer = _load(ref, model_config, spec, task, trust, config)
    custom = _custom_config(model, spec, task, config.cache) if surgery_class else None
    with staged_output(config.out_dir, overwrite=config.overwrite, protect=[ref.path] if ref.path else []) as tmp:
        started = time.perf_counter()
        log(f"exporting with optimum-onnx (TorchScript exporter, opset {config.opset})")
        # TorchScript's TracerWarnings about Python branches on tensors in transformers' cache/mask code are
        # expected for this exporter; the parity check below is what tells whether the graph is right.
        with warnings.catch_warnings(), quiet_transformers(True), quiet_logger("optimum"):
            warnings.simplefilter("ignore")
            onnx_export_from_model(
                model,
                tmp,
                opset=config.opset,
                task=task,
                custom_onnx_configs=custom,
                do_validation=False,
                device=config.device,
            )
        if surgery_class:
            as_source_config(tmp / "config.json")
            for code in tmp.glob("*.py"):  # the wrapper's modeling code: the ONNX graph does not need it
                code.unlink()
        if config.optimize:
            log(f"optimizing ({config.optimize})")
            _optimize(tmp, config.optimize)
        if ref.path is not None:
            copy_side_files(ref.path, tmp)
        seconds = time.perf_counter() - started
        log("checking parity: ONNX Runtime vs PyTorch")
        provider = "CUDAExecutionProvider" if config.device == "cuda" else "CPUExecutionProvider"
        extra = {"use_cache": config.cache} if spec.generative else {}
        ort_model = ort_class(task).from_pretrained(tmp, provider=provider, **extra)
        half = config.dtype == "fp16"
        parity = check_parity(
            model,
            ort_model,
            tokenizer,
            generative=spec.generative and config.cache,
            atol=FP16_ATOL if half else FP32_ATOL,
            rtol=FP16_RTOL if half else FP32_RTOL,
            new_tokens=config.parity_new_tokens,
        )
        record = {
            "surgery_version": __version__,
            "checkpoint": config.checkpoint,
            "source_checkpoint": source_record(ref, model_config, config.out_dir),  # where + fingerprint (record.py)
            "task": task,
            "layout": "surgery class (exported as the source architecture)" if surgery_class else "source architecture",
            "model_type": json.loads((tmp / "config.json").read_text())["model_type"],
            "kv_cache_pairs": int(model.config.num_hidden_layers) if spec.generative and config.cache else 0,
            "settings": config.record(),
            "export_seconds": round(seconds, 1),
            "parity": parity.to_dict(),
            "versions": _versions(),
            "files": sorted(p.name for p in tmp.iterdir()) + [EXPORT_FILE],
        }
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        if not parity.passed:
            raise SurgeryError(_failure(parity))
        provenance = Provenance.read(ref.path) if ref.path is not None else None
        if provenance is not None:
            provenance.add_stage("export", format="onnx", task=task, opset=config.opset, dtype=config.dtype)
            provenance.write(tmp)
    return record


def _failure(parity) -> str:
    parts = [f"max |logits difference| {parity.max_abs_diff:.3g} (tolerance {parity.tolerance:.3g})"]
    if not parity.generation_equal:
        parts.append(f"greedy generation differs from token {parity.first_mismatch}")
    return "ONNX parity check failed: " + "; ".join(parts) + "; nothing was installed"


def _versions() -> dict[str, str]:
    import importlib.metadata

    names = ("torch", "transformers", "optimum-onnx", "onnx", "onnxruntime")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
