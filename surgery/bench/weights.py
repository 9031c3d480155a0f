"""The physical bound beside a latency: weight bytes read per decoded token, from the safetensors headers alone.

Decoding one token at batch 1 reads every weight the executed network uses: each executed layer instance reads
its layer's weights (a layer run twice, tied or copied, is read twice), the embeddings and head once (tied
embeddings once). At small batch decode is memory-bound, so ``variant / full`` of these bytes is the latency
ratio a perfect implementation would reach. No tensor is loaded: sizes come from the headers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from surgery.architectures import arch_for_config
from surgery.errors import SurgeryError


def bytes_read_per_token(checkpoint: Path) -> int:
    """Weight bytes one decode step reads in ``checkpoint`` (a ``surgery apply`` output or any supported model)."""
    from surgery.io.safetensors_stream import index_checkpoint
    from surgery.io.source import safetensors_files

    checkpoint = Path(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
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
    uses = Counter(index for step in config.get("surgery_steps") or [] for index in step)
    if not uses:  # the source layout: every stored layer runs once
        uses = Counter(per_layer.keys())
    return other + sum(per_layer[index] * count for index, count in uses.items())


def checkpoint_of(model: Path) -> Path | None:
    """The torch checkpoint behind a model folder: itself, or for an ONNX export the one its export.json names."""
    model = Path(model)
    record = model / "export.json"
    if record.is_file():
        source = Path(json.loads(record.read_text()).get("checkpoint", ""))
        return source if (source / "config.json").is_file() else None
    return model if (model / "config.json").is_file() else None
