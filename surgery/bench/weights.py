"""The physical bounds beside a latency: weight bytes read per decoded token, and sequential steps per token.

Decoding one token at batch 1 reads every weight the executed network uses: each executed layer instance reads
its layer's weights (a layer run twice, tied or copied, is read twice), the embeddings and head once (tied
embeddings once). At small batch decode is memory-bound, so ``variant / full`` of these bytes is the latency
ratio a perfect implementation would reach. No tensor is loaded: sizes come from the headers.

Where execution is bound by launches and Python per layer instead (small models, eager mode, a slow host CPU),
latency follows the number of *sequential steps* per token: a plain layer is one step, a fused parallel block is
one step whatever its members, an unfused group is one step per member, a looped block counts each loop. The
count comes from the surgery class's own :class:`~surgery.modeling.modeling_surgery.ExecutionList`, built on the
meta device (no weights), so it follows exactly the fusion decisions the class makes when it runs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from surgery.architectures.specs import arch_for_config
from surgery.errors import SurgeryError


def bytes_read_per_token(checkpoint: Path) -> int:
    """Weight bytes one decode step reads in ``checkpoint`` (a ``surgery apply`` output or any supported model)."""
    from surgery.io.model_ref import read_json_object
    from surgery.io.safetensors_stream import index_checkpoint
    from surgery.io.source import safetensors_files

    checkpoint = Path(checkpoint)
    config = read_json_object(checkpoint / "config.json", "config.json")
    spec = arch_for_config(config)
    files = safetensors_files(checkpoint)
    if not files:
        raise SurgeryError(f"no safetensors weights in {checkpoint}")
    pattern = spec.layer_key_pattern
    per_layer: Counter[int] = Counter()
    other = 0
    for name, record in index_checkpoint(files).items():
        match = pattern.match(name)
        if match is None:
            other += record.nbytes
        else:
            per_layer[int(match["index"])] += record.nbytes
    steps = config.get("surgery_steps") or []
    if not isinstance(steps, list) or not all(
        isinstance(step, list) and step and all(type(i) is int and i in per_layer for i in step) for step in steps
    ):
        raise SurgeryError(f"{checkpoint}: config.json's surgery_steps do not name stored layers")
    uses = Counter(index for step in steps for index in step)
    if not uses:  # the source layout: every stored layer runs once
        uses = Counter(per_layer.keys())
    return other + sum(per_layer[index] * count for index, count in uses.items())


def sequential_steps(checkpoint: Path, *, fuse: bool = True) -> int:
    """Sequential layer steps one forward of ``checkpoint`` executes (see the module docstring).

    ``fuse=False``: as if its config said ``surgery_fuse_parallel: false`` (an ONNX export's graph is unfused).
    """
    from surgery.io.model_ref import num_layers_of, read_json_object

    config = read_json_object(Path(checkpoint) / "config.json", "config.json")
    if config.get("model_type") != "surgery":
        return num_layers_of(config, str(checkpoint))  # a plain layout: every stored layer runs once, in order
    import torch

    from surgery.modeling.configuration_surgery import SurgeryConfig
    from surgery.modeling.modeling_surgery import ExecutionList, SurgeryModel

    try:
        with torch.device("meta"):
            model = SurgeryModel(
                SurgeryConfig.from_dict(config if fuse else {**config, "surgery_fuse_parallel": False})
            )
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as exc:  # a hand-edited surgery config
        raise SurgeryError(f"{checkpoint}: cannot build its executed steps from config.json ({exc})") from None
    execution = next(module for module in model.modules() if isinstance(module, ExecutionList))
    fused = execution.fuse_parallel
    return sum(1 if fused and step.fused is not None else len(step.layers) for step in execution.steps)


def checkpoint_of(model: Path) -> tuple[Path | None, str | None]:
    """The torch checkpoint behind a model folder and, when there is none to use, why.

    A checkpoint is its own; an ONNX export's is the one its ``export.json`` names, found relative to the export
    folder and verified by fingerprint (:func:`surgery.exporters.onnx.record.export_source`). A malformed
    ``export.json`` raises :class:`SurgeryError`.
    """
    from surgery.exporters.onnx.record import export_source

    model = Path(model)
    if (model / "model.onnx").is_file():
        source = export_source(model)
        return source.path, source.reason
    return (model, None) if (model / "config.json").is_file() else (None, f"no config.json in {model}")


def bounds(model: Path) -> dict[str, Any]:
    """``weight_bytes_per_token`` and ``sequential_steps`` of a bench MODEL, or ``bound_note`` saying why not."""
    source, reason = checkpoint_of(model)
    if source is None:
        return {"bound_note": f"no bounds: {reason}"}
    onnx = source != Path(model)  # `surgery export onnx` writes the surgery class unfused: one step per member
    return {
        "weight_bytes_per_token": bytes_read_per_token(source),
        "sequential_steps": sequential_steps(source, fuse=not onnx),
    }
