"""Consistency checks over checkpoint metadata: the source's layers and config, and what was written.

Everything here reads only :class:`TensorRecord` metadata and safetensors headers (no tensor data, no torch), so
the checks cost milliseconds. Each raises :class:`SurgeryError` with one line naming the first problem found.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from surgery.errors import SurgeryError
from surgery.io.safetensors_stream import (
    INDEX_NAME,
    OutputTensor,
    TensorRecord,
    _show,
    read_header,
    read_weight_map,
)

if TYPE_CHECKING:
    from surgery.architectures.specs import ArchSpec

# A layer number inside a tensor name: ``model.layers.12.mlp...`` (at most 9 digits; longer runs are not layers).
_NUMBERED = re.compile(r"(?:^|\.)(\d{1,9})\.")

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


def numbered_lists(names: Iterable[str]) -> dict[str, set[int]]:
    """``{prefix: numbers}`` of every numbered module list in tensor ``names`` (``model.layers.`` -> {0, 1, ...}).

    Every position is looked at, so ``model.layers.3.mlp.experts.7.w1`` counts for ``model.layers.`` (3) and for
    ``model.layers.3.mlp.experts.`` (7). Pure string work: no architecture knowledge, no torch.
    """
    lists: dict[str, set[int]] = defaultdict(set)
    for name in names:
        for match in _NUMBERED.finditer(name):
            lists[name[: match.start(1)]].add(int(match.group(1)))
    return lists


def check_layer_numbering(records: Mapping[str, TensorRecord], num_layers: int, given: str, key: str) -> None:
    """Refuse a checkpoint whose config's layer count (``key`` = ``num_layers``) no stored block list has.

    The cheap half of the layer check (milliseconds, before anything builds a model of ``num_layers`` layers,
    which for a config claiming 50000 takes minutes): some numbered list in the tensor names must hold exactly
    the layers ``0 .. num_layers - 1``. :func:`group_layer_tensors` then checks that list is the architecture's
    block list. Raises :class:`SurgeryError`, e.g. ``config of M says num_hidden_layers=8, but its weights hold
    layers 0-5 (model.layers.*)``.
    """
    lists = numbered_lists(records)
    wanted = set(range(num_layers))
    if any(numbers == wanted for numbers in lists.values()):
        return
    if not lists:
        raise SurgeryError(
            f"config of {given} says {key}={num_layers}, but no tensor of its weights is numbered by layer"
        )
    prefix, numbers = max(lists.items(), key=lambda item: (len(item[1]), -len(item[0])))
    held = format_layers(numbers) if len(numbers) <= 64 else f"{len(numbers)} numbered layers"
    raise SurgeryError(
        f"config of {given} says {key}={num_layers}, but its weights hold {held} ({prefix}*); "
        "the config and the tensors must agree"
    )


def group_layer_tensors(
    records: dict[str, TensorRecord], spec: ArchSpec, num_layers: int
) -> tuple[dict[int, list[tuple[str, str, TensorRecord]]], list[TensorRecord]]:
    """Split tensors into per-layer ``(head, tail, record)`` lists and the non-layer rest.

    The check ``apply`` and every other command make (:func:`surgery.architectures.loading.check_stored_layers`) before
    using a checkpoint: each of the config's ``num_layers`` layers has tensors under ``spec``'s block list and
    none is numbered beyond it. Raises :class:`SurgeryError` naming the first disagreement.
    """
    pattern = spec.layer_key_pattern
    layers: dict[int, list[tuple[str, str, TensorRecord]]] = {i: [] for i in range(num_layers)}
    others: list[TensorRecord] = []
    for name, record in records.items():
        match = pattern.match(name)
        if match is None:
            others.append(record)
            continue
        digits = match["index"]
        index = int(digits) if len(digits) <= 9 else -1  # int() of thousands of digits raises ValueError
        if index not in layers:
            shown = digits if len(digits) <= 12 else digits[:12] + "..."
            raise SurgeryError(f"tensor {_show(name)} names layer {shown}, but the config has {num_layers} layers")
        layers[index].append((match["head"], match["tail"], record))
    missing = [i for i, tensors in layers.items() if not tensors]
    if missing:
        raise SurgeryError(f"checkpoint has no tensors for layer(s) {missing[:5]} (layer list {spec.layer_list!r})")
    return layers, others


def check_layers_consistent(layers: Mapping[int, list[tuple[str, str, TensorRecord]]]) -> None:
    """Check that every layer has the same tensors, with the same dtypes and shapes, as its peers.

    ``layers`` is what :func:`surgery.apply.materialize.group_layer_tensors` returns: layer index -> list of
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
