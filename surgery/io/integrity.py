"""Consistency checks over checkpoint metadata: the source's layers and config, and what was written.

Everything here reads only :class:`TensorRecord` metadata and safetensors headers (no tensor data, no torch), so
the checks cost milliseconds. Each raises :class:`SurgeryError` with one line naming the first problem found.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.io.safetensors_stream import (
    INDEX_NAME,
    OutputTensor,
    TensorRecord,
    _show,
    read_header,
    read_weight_map,
)

# Name endings of input-embedding matrices ([vocab_size, hidden_size]) in the supported families.
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "word_embeddings.weight", "embed_in.weight", "wte.weight")
# Output projections onto the vocabulary, also [vocab_size, hidden_size].
OUTPUT_EMBEDDING_SUFFIXES = ("lm_head.weight", "embed_out.weight")
# Config keys that name the hidden size; the first one present is the one checked.
HIDDEN_SIZE_KEYS = ("hidden_size", "n_embd", "d_model")


def format_layers(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 4, 6, 7]`` -> ``"layers 0-4, 6-7"``; ``[3]`` -> ``"layer 3"``."""
    ordered = sorted(set(indices))
    runs: list[list[int]] = []
    for index in ordered:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
    return f"{'layer' if len(ordered) == 1 else 'layers'} {text}"


def _verb(indices: list[int], singular: str, plural: str) -> str:
    return singular if len(indices) == 1 else plural


def _describe(dtype: str, shape: tuple[int, ...]) -> str:
    return f"{dtype} {list(shape)}"


def _raise_first(problems: list[tuple[tuple, str]], what: str) -> None:
    if not problems:
        return
    problems.sort(key=lambda item: item[0])
    message = problems[0][1]
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more {what})"
    raise SurgeryError(message)


def check_layers_consistent(layers: Mapping[int, list[tuple[str, str, TensorRecord]]]) -> None:
    """Check that every layer has the same tensors, with the same dtypes and shapes, as its peers.

    ``layers`` is what :func:`surgery.materialize.group_layer_tensors` returns: layer index -> list of
    ``(head, tail, record)``. For each tensor tail the majority of layers is the reference (ties go to the lowest
    layer index), so the error names the odd layer out, e.g.
    ``layer 5 lacks tensor mlp.up_proj.weight that layers 0-4, 6-7 have``. Raises :class:`SurgeryError`.
    """
    if len(layers) < 2:
        return
    heads = {head for entries in layers.values() for head, _, _ in entries}
    single_head = len(heads) <= 1
    per_layer: dict[int, dict[str, tuple[str, tuple[int, ...]]]] = {
        index: {(tail if single_head else head + tail): (record.dtype, record.shape) for head, tail, record in entries}
        for index, entries in layers.items()
    }
    order = sorted(per_layer)
    keys = list(dict.fromkeys(key for index in order for key in per_layer[index]))
    problems: list[tuple[tuple, str]] = []
    for position, key in enumerate(keys):
        shown = _show(key)
        having = [i for i in order if key in per_layer[i]]
        lacking = [i for i in order if key not in per_layer[i]]
        if len(having) < len(lacking) or (len(having) == len(lacking) and order[0] in lacking):
            # Most layers lack it: the few that have it are the odd ones out.
            verb = _verb(lacking, "lacks", "lack")
            for i in having:
                problems.append(((i, position), f"layer {i} has tensor {shown} that {format_layers(lacking)} {verb}"))
            continue
        verb = _verb(having, "has", "have")
        for i in lacking:
            problems.append(((i, position), f"layer {i} lacks tensor {shown} that {format_layers(having)} {verb}"))
        variants = Counter(per_layer[i][key] for i in having)
        if len(variants) == 1:
            continue
        top = max(variants.values())
        reference = next(per_layer[i][key] for i in having if variants[per_layer[i][key]] == top)
        same = [i for i in having if per_layer[i][key] == reference]
        for i in having:
            if per_layer[i][key] != reference:
                problems.append(
                    (
                        (i, position),
                        f"layer {i} tensor {shown} is {_describe(*per_layer[i][key])} but "
                        f"{format_layers(same)} {_verb(same, 'has', 'have')} {_describe(*reference)}",
                    )
                )
    _raise_first(problems, "layer inconsistencies")


def _config_int(config: Mapping, key: str) -> int | None:
    value = config.get(key)
    return value if type(value) is int else None


def _ends_with(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def check_config_agrees(config: Mapping, records: Mapping[str, TensorRecord]) -> None:
    """Check the config's ``vocab_size`` and hidden size against the embedding matrices' shapes.

    Conservative: only what the config states is checked, and only 2-D tensors whose names end in an embedding
    (``embed_tokens.weight``, ``word_embeddings.weight``, ``embed_in.weight``, ``wte.weight``) or an output head
    (``lm_head.weight``, ``embed_out.weight``), all of shape ``[vocab_size, hidden_size]``. The hidden size is the
    first of ``hidden_size``, ``n_embd``, ``d_model`` present in the config. Raises :class:`SurgeryError`, e.g.
    ``config hidden_size=64 disagrees with model.embed_tokens.weight shape [96, 32]``.
    """
    hidden_key = next((key for key in HIDDEN_SIZE_KEYS if key in config), None)
    expected = {"vocab_size": _config_int(config, "vocab_size")}
    if hidden_key is not None:
        expected[hidden_key] = _config_int(config, hidden_key)
    axes = list(expected.items())  # [(vocab key, value), (hidden key, value)]: the two dims in order
    suffixes = EMBEDDING_SUFFIXES + OUTPUT_EMBEDDING_SUFFIXES
    for name, record in records.items():
        if len(record.shape) != 2 or not any(_ends_with(name, suffix) for suffix in suffixes):
            continue
        for dim, (key, value) in zip(record.shape, axes):
            if value is not None and dim != value:
                raise SurgeryError(
                    f"config {key}={value} disagrees with {_show(name)} shape {list(record.shape)} "
                    f"(expected [vocab_size, {hidden_key or 'hidden_size'}])"
                )


def expected_outputs(tensors: Iterable[OutputTensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{output name: (dtype, shape)}`` of the tensors handed to ``write_checkpoint_weights``."""
    return {tensor.name: (tensor.dtype, tuple(tensor.source.shape)) for tensor in tensors}


def verify_written(files: list[Path], expected: Mapping[str, tuple[str, tuple[int, ...]]]) -> None:
    """Re-read the written shards' headers and check they hold exactly ``expected`` (name -> (dtype, shape)).

    Each header is validated by :func:`read_header`; each file must end exactly where its last tensor does; no
    tensor may be missing, extra, duplicated across shards, or of another dtype or shape; and when the directory
    has a ``model.safetensors.index.json`` (required for more than one shard) its ``weight_map`` must name each
    tensor's actual shard. Raises :class:`SurgeryError` naming the first problem.
    """
    found: dict[str, tuple[str, tuple[int, ...], Path]] = {}
    for path in files:
        path = Path(path)
        header, data_start = read_header(path)
        end = 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in found:
                raise SurgeryError(f"output check failed: tensor {_show(name)} is in both {found[name][2]} and {path}")
            found[name] = (info["dtype"], tuple(info["shape"]), path)
            end = max(end, info["data_offsets"][1])
        size = os.stat(path).st_size
        if size != data_start + end:
            raise SurgeryError(
                f"output check failed: {path} is {size} bytes but its header describes {data_start + end}"
            )
    problems: list[tuple[tuple, str]] = []
    names = list(expected)
    for i, name in enumerate(names):
        if name not in found:
            problems.append(((0, i), f"output check failed: the written checkpoint lacks tensor {_show(name)}"))
            continue
        dtype, shape, _ = found[name]
        want_dtype, want_shape = expected[name]
        if (dtype, shape) != (want_dtype, tuple(want_shape)):
            problems.append(
                (
                    (0, i),
                    f"output check failed: written tensor {_show(name)} is {_describe(dtype, shape)} "
                    f"but should be {_describe(want_dtype, tuple(want_shape))}",
                )
            )
    for i, name in enumerate(name for name in found if name not in expected):
        problems.append(((1, i), f"output check failed: the written checkpoint has unexpected tensor {_show(name)}"))
    _raise_first(problems, "problems")
    if not files:
        return
    directory = Path(files[0]).parent
    if len(files) > 1 or (directory / INDEX_NAME).exists():
        weight_map = read_weight_map(directory)
        for name, (_, _, path) in found.items():
            if weight_map.get(name) != path.name:
                raise SurgeryError(
                    f"output check failed: {INDEX_NAME} maps tensor {_show(name)} to "
                    f"{weight_map.get(name)!r}, but it is in {path.name}"
                )
        unknown = next((name for name in weight_map if name not in found), None)
        if unknown is not None:
            raise SurgeryError(f"output check failed: {INDEX_NAME} lists tensor {_show(unknown)}, which no shard holds")
