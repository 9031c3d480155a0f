"""Where a plan becomes a checkpoint.

``apply_plan`` = resolve the source model, resolve the plan against its layer count, map every output
tensor to a source tensor (:func:`build_tensor_map`, pure), then stream the weights, config, tokenizer,
model card and provenance into a temporary directory that is renamed into place only when complete.

Two output layouts:

* **source architecture** when the plan only drops, reorders or repeats layers: the same model class with
  ``num_hidden_layers`` = executed layers; a repeated layer's weights are copied once per position.
* **surgery class** (``SurgeryConfig`` / ``SurgeryForCausalLM``, files copied into the checkpoint and
  referenced by ``auto_map``) when the plan has a parallel block, or ``tie_repeats`` stores each layer once.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from surgery.apply.card import write_model_card
from surgery.apply.provenance import PlanRecord, Provenance
from surgery.architectures.integrity import (
    check_config_agrees,
    check_layer_numbering,
    check_layers_consistent,
    expected_outputs,
    group_layer_tensors,
    verify_written,
)
from surgery.architectures.layer_config import check_layer_config, layer_config_updates, raw_layer_config_updates
from surgery.architectures.specs import (
    ArchSpec,
    check_model_type,
    layer_count,
    layer_count_key,
    spec_from_detection,
)
from surgery.config import CommandConfig
from surgery.errors import SurgeryError
from surgery.io.model_code import CODE_CONFIG_KEYS, hub_kernels
from surgery.io.model_ref import ModelRef, first_line, read_json_object
from surgery.io.output_dir import check_output_dir, staged_output
from surgery.io.safetensors_stream import (
    FLOAT_DTYPES,
    OutputTensor,
    TensorRecord,
    index_checkpoint,
    write_checkpoint_weights,
)
from surgery.io.source import SourceModel, copy_side_files, resolve_source
from surgery.modeling import MODELING_FILES
from surgery.plan import ExecutionPlan, LayerPlan, load_plan, resolve_plan

DTYPE_CHOICES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
SURGERY_AUTO_MAP = {"AutoConfig": "configuration_surgery.SurgeryConfig"}


class ApplyOptions(CommandConfig):
    """Options of ``surgery apply`` (validated once, at the edge, like every command's config)."""

    dtype: Literal["float32", "float16", "bfloat16"] | None = None  # None keeps the source dtype
    shard_size: int = Field(default=5 * 10**9, ge=1)
    tie_repeats: bool = False
    surgery_class: bool = False  # always write the surgery wrapper class, even when not needed
    fuse_parallel: bool = True  # surgery class: run parallel groups fused at inference (config flag)
    overwrite: bool = False
    revision: str | None = None
    allow_pickle: bool = False
    progress: bool = False  # GGUF dequantization progress on stderr (the CLI sets it unless --quiet)
    base_model: str | None = None  # --base-model: the Hub model the source is a copy of (surgery.json, the card)

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, value: str | None) -> str | None:
        from surgery.publish.config import base_model_id

        return base_model_id(value)


@dataclass
class TensorMap:
    """The pure result of planning the output: tensors to write and the stored-layer layout."""

    tensors: list[OutputTensor]
    stored_sources: list[int]  # source layer of each stored (output) layer
    steps: list[list[int]]  # executed steps over stored layers
    layer_list: str  # dotted path of the block list, e.g. "model.layers"


@dataclass
class ApplyResult:
    out_dir: Path
    execution: ExecutionPlan
    custom_class: bool
    num_stored_layers: int
    files: list[str] = field(default_factory=list)
    bytes_written: int = 0


def build_tensor_map(
    records: dict[str, TensorRecord],
    spec: ArchSpec,
    execution: ExecutionPlan,
    *,
    custom_class: bool,
    tie_repeats: bool,
    dtype: str | None,
    signatures: tuple[str, ...] | None = None,
) -> TensorMap:
    """Map every output tensor to its source tensor. Pure: reads only the records' metadata.

    Layers whose detected ``signatures`` are equal (all of them when not given) must hold the same tensors.
    """
    layers, others = group_layer_tensors(records, spec, execution.num_source_layers)
    kinds = signatures or ("",) * execution.num_source_layers
    for kind in dict.fromkeys(kinds):
        check_layers_consistent({i: layers[i] for i in layers if kinds[i] == kind})
    instances = execution.instances
    if custom_class:
        stored_sources = list(dict.fromkeys(instances)) if tie_repeats else list(instances)
        if tie_repeats:
            position = {source: index for index, source in enumerate(stored_sources)}
            steps = [[position[layer] for layer in step.layers] for step in execution.steps]
        else:
            counter = iter(range(len(instances)))
            steps = [[next(counter) for _ in step.layers] for step in execution.steps]
        prefix = "inner."
    else:
        stored_sources = list(instances)
        steps = [[index] for index in range(len(instances))]
        prefix = ""

    def out_dtype(record: TensorRecord) -> str:
        return dtype if dtype is not None and record.dtype in FLOAT_DTYPES else record.dtype

    def output(name: str, record: TensorRecord) -> OutputTensor:
        return OutputTensor(prefix + name, record, out_dtype(record))

    head = layers[0][0][0]
    front = [output(r.name, r) for r in others if spec.is_embedding_tensor(r.name)]
    back = [output(r.name, r) for r in others if not spec.is_embedding_tensor(r.name)]
    layer_tensors = [
        output(f"{layer_head}{stored}.{tail}", record)
        for stored, source in enumerate(stored_sources)
        for layer_head, tail, record in layers[source]
    ]
    return TensorMap(front + layer_tensors + back, stored_sources, steps, head.rstrip("."))


def _default_architecture(model_type: str, generative: bool) -> str:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_MAPPING_NAMES

    mapping = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if generative else MODEL_MAPPING_NAMES
    return mapping[model_type]


def _write_source_config(raw: dict, updates: dict, dtype: str | None, out: Path) -> None:
    """Edit the source ``config.json`` as JSON: layer count and per-layer keys (``updates``), dtype."""
    config = dict(raw)
    for key in CODE_CONFIG_KEYS:  # no code is copied into a plain output, so nothing for these to point at
        config.pop(key, None)
    config.update(updates)
    if dtype is not None:
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _write_surgery_config(
    config,
    spec: ArchSpec,
    updates: dict,
    execution: ExecutionPlan,
    tensor_map: TensorMap,
    plan: LayerPlan,
    dtype: str | None,
    out: Path,
    fuse_parallel: bool = True,
) -> None:
    """``SurgeryConfig``: the source config sized for the stored layers (``updates``), ``layer_types`` per instance."""
    from surgery.modeling import SurgeryConfig

    fields = {
        k: v
        for k, v in config.to_dict().items()
        if k not in ("model_type", "architectures", "transformers_version", *CODE_CONFIG_KEYS)
    }
    architectures = config.architectures or [_default_architecture(config.model_type, spec.generative)]
    layer_types = getattr(config, "layer_types", None) if "layer_types" in spec.per_layer_config else None
    fields.update(updates)
    if layer_types is not None:  # the wrapper's contract: layer_types per instance (cache), stored ones apart
        fields["layer_types"] = [layer_types[i] for i in execution.instances]
    if dtype is not None:
        fields["dtype"] = dtype
    wrapper = spec.wrapper_class
    auto_key = spec.auto_class
    fields["num_hidden_layers"] = len(execution.instances)
    surgery_config = SurgeryConfig(
        source_model_type=config.model_type,
        source_architectures=list(architectures),
        surgery_layer_list=tensor_map.layer_list,
        surgery_stored_layers=len(tensor_map.stored_sources),
        surgery_source_layers=tensor_map.stored_sources,
        surgery_stored_layer_types=[layer_types[i] for i in tensor_map.stored_sources] if layer_types else None,
        surgery_steps=tensor_map.steps,
        surgery_plan=plan.canonical,
        surgery_fuse_parallel=fuse_parallel,
        architectures=[wrapper],
        auto_map={**SURGERY_AUTO_MAP, auto_key: f"modeling_surgery.{wrapper}"},
        **fields,
    )
    surgery_config.save_pretrained(out)
    for path in MODELING_FILES:
        shutil.copy2(path, out / path.name)


def _transformers_config(source: SourceModel):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, trust_remote_code=False)
    except (ValueError, OSError, TypeError, KeyError) as exc:  # transformers' errors for an unusable config
        raise SurgeryError(f"cannot read config of {source.given}: {first_line(exc)}") from exc
    if hub_kernels({"_attn_implementation": getattr(config, "_attn_implementation", None)}):
        config._attn_implementation = None  # a Hub kernel is code: never downloaded to build the meta model
    return config


@dataclass
class SourceArch:
    """The source's raw ``config.json``, its transformers config (None: not needed), and what detection found."""

    raw: dict
    config: object | None
    spec: ArchSpec
    signatures: tuple[str, ...]


def _detect_source(source: SourceModel, raw: dict, num_layers: int, custom: bool) -> SourceArch:
    """Detect the source architecture on a meta-device instance of its config (no weights).

    The result is cached per ``config.json`` (:mod:`surgery.architectures.cache`); a plain output of a cached,
    simple architecture is then written without importing torch or transformers.
    """
    from surgery.architectures import cache as detection_cache

    cached = detection_cache.load(raw)
    if cached is not None and not custom and detection_cache.plain_from_raw(cached, raw):
        return SourceArch(raw, None, spec_from_detection(cached), cached.signatures)
    from surgery.architectures.detect import detect

    config = _transformers_config(source)
    detection = detect(config)
    if config.num_hidden_layers != num_layers:
        raise SurgeryError(
            f"config of {source.given}: transformers reads {config.num_hidden_layers} layers, not {num_layers}"
        )
    detection_cache.store(raw, detection)
    return SourceArch(raw, config, spec_from_detection(detection), detection.signatures)


def _layer_config(arch: SourceArch, sources: list[int]) -> dict:
    """Config values for output layers ``sources`` (checked on a meta instance unless nothing moved)."""
    if arch.config is None:  # identical layers, per-layer lists in the file: follow the layers
        return raw_layer_config_updates(arch.raw, arch.spec, sources)
    updates = layer_config_updates(arch.config, arch.spec, sources)
    if list(sources) != list(range(arch.config.num_hidden_layers)):
        check_layer_config(arch.config, arch.spec, arch.signatures, sources, updates)
    return updates


def _provenance(
    model: str,
    source: SourceModel,
    plan: LayerPlan,
    execution: ExecutionPlan,
    tensor_map: TensorMap,
    options: ApplyOptions,
    custom: bool,
    raw_config: dict,
    spec: ArchSpec,
) -> Provenance:
    """The machine-readable record written as ``surgery.json`` (with its first stage, ``apply``)."""
    architecture = spec.wrapper_class if custom else (raw_config.get("architectures") or [None])[0]
    record = Provenance(
        plan=PlanRecord(
            given=plan.text,
            canonical=plan.canonical,
            executed=execution.describe(),
            steps=[list(step.layers) for step in execution.steps],
        ),
        source={**source.provenance, "given": model, "num_layers": execution.num_source_layers},
        output={
            "layout": "surgery" if custom else "source",
            "architecture": architecture,
            "executed_layers": len(execution.instances),
            "stored_layers": len(tensor_map.stored_sources),
            "stored_layer_sources": tensor_map.stored_sources,
            "tie_repeats": options.tie_repeats,
            "tensor_dtypes": sorted({tensor.dtype for tensor in tensor_map.tensors}),
            "total_bytes": sum(tensor.nbytes for tensor in tensor_map.tensors),
        },
    )
    record.base_model = options.base_model
    record.add_stage("apply", plan=plan.canonical, dtype=options.dtype, shard_size=options.shard_size)
    return record


def apply_plan(
    model: str,
    plan_text: str,
    out_dir: Path,
    options: ApplyOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ApplyResult:
    """Materialize ``plan_text`` applied to ``model`` as a standalone checkpoint in ``out_dir``.

    ``progress(bytes_done, bytes_total)`` is called while weights stream. Raises :class:`SurgeryError`
    for every user error; on any failure no directory that looks like a checkpoint is left behind.
    Every source header is validated and every layer checked against its peers before anything is written;
    the written headers are read back and checked before the checkpoint is installed.
    """
    options = options or ApplyOptions()
    ref = ModelRef.parse(model, options.revision)
    protect = [ref.path] if ref.path is not None else []
    check_output_dir(Path(out_dir), overwrite=options.overwrite, protect=protect)
    plan = load_plan(plan_text)
    if ref.kind == "gguf":  # the layer count from the file's metadata: a bad plan is refused before dequantizing
        resolve_plan(plan, layer_count(ref.read_config(), ref.given))
    dtype = DTYPE_CHOICES[options.dtype] if options.dtype else None
    with resolve_source(ref, allow_pickle=options.allow_pickle, progress=options.progress) as source:
        raw_config = read_json_object(source.path / "config.json", f"config.json of {source.given}")
        check_model_type(raw_config)
        execution = resolve_plan(plan, layer_count(raw_config, source.given))
        custom = options.surgery_class or execution.needs_custom_class(options.tie_repeats)
        try:  # headers first: a config claiming more layers than stored must not build that many on meta
            records, unreadable = index_checkpoint(source.weight_files), None
        except SurgeryError as exc:  # reported after detection, which names an unsupported architecture first
            records, unreadable = None, exc
        if records is not None:
            check_layer_numbering(records, execution.num_source_layers, source.given, layer_count_key(raw_config))
            check_config_agrees(raw_config, records)
        arch = _detect_source(source, raw_config, execution.num_source_layers, custom)
        if unreadable is not None:
            raise unreadable
        spec = arch.spec
        tensor_map = build_tensor_map(
            records,
            spec,
            execution,
            custom_class=custom,
            tie_repeats=options.tie_repeats,
            dtype=dtype,
            signatures=arch.signatures,
        )
        updates = _layer_config(arch, tensor_map.stored_sources)
        total = sum(t.nbytes for t in tensor_map.tensors)
        with staged_output(Path(out_dir), overwrite=options.overwrite, protect=[*protect, source.path]) as tmp:
            done = 0

            def step(nbytes: int) -> None:
                nonlocal done
                done += nbytes
                if progress:
                    progress(done, total)

            # Real sharded checkpoints keep their shard boundaries (page-aligned copies); GGUF temp shards don't.
            paths = write_checkpoint_weights(
                tmp, tensor_map.tensors, options.shard_size, step, split_at_source_files=source.kind != "gguf"
            )
            verify_written(paths, expected_outputs(tensor_map.tensors))
            if custom:
                _write_surgery_config(
                    arch.config, spec, updates, execution, tensor_map, plan, options.dtype, tmp, options.fuse_parallel
                )
            else:
                _write_source_config(raw_config, updates, options.dtype, tmp)
            copy_side_files(source.path, tmp)
            record = _provenance(model, source, plan, execution, tensor_map, options, custom, raw_config, spec)
            record.write(tmp)
            final = Path(os.path.realpath(Path(out_dir).expanduser()))
            write_model_card(tmp, record, execution, name=final.name, custom_class=custom, generative=spec.generative)
            files = sorted(p.name for p in tmp.iterdir())
    return ApplyResult(Path(out_dir), execution, custom, len(tensor_map.stored_sources), files, total)
