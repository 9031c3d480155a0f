"""Streaming safetensors I/O: read headers, write shards tensor by tensor.

Nothing here loads a whole checkpoint. Headers are parsed by hand (8-byte length + JSON) so the output
header can be computed before any tensor data is written; same-dtype tensors are copied file-to-file with
``os.copy_file_range`` (kernel side, no Python buffer), and only dtype conversion materializes a tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from surgery.errors import SurgeryError
from surgery.fileio import open_regular

# Bytes per element of each safetensors dtype; torch is imported only to convert dtypes.
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}  # fmt: skip
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_COPY_CHUNK = 64 << 20
_PAGE = 4096


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor's bytes live in a safetensors file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in ``file``
    nbytes: int


_MAX_HEADER = 100_000_000
INDEX_NAME = "model.safetensors.index.json"


def _show(text: str) -> str:
    """``text`` as is when printable, else its repr: error messages stay on one line."""
    return text if text.isprintable() else repr(text)


def _is_int(value: object) -> bool:
    return type(value) is int  # not bool


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {_show(duplicate)}")
    return dict(pairs)


def _load_json(raw: bytes | str) -> object:
    """Parse JSON, rejecting duplicate keys; raises ``ValueError`` (also for too-deep nesting)."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _tensor_problem(name: str, info: object) -> str | None:
    """What is wrong with one header entry (one phrase), or None when it is valid."""
    if not isinstance(info, dict):
        return f"entry for tensor {name} is not an object"
    for key in ("dtype", "shape", "data_offsets"):
        if key not in info:
            return f"tensor {name} lacks {key!r}"
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        shown = _show(dtype) if isinstance(dtype, str) else repr(dtype)
        return f"tensor {name} has unsupported dtype {shown} (supported: {', '.join(ITEMSIZE)})"
    if not isinstance(shape, list) or not all(_is_int(dim) and dim >= 0 for dim in shape):
        return f"tensor {name} has invalid shape {json.dumps(shape)[:80]} (expected a list of non-negative integers)"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        return f"tensor {name} has invalid data_offsets {json.dumps(offsets)[:80]} (expected [begin, end])"
    begin, end = offsets
    if not 0 <= begin <= end:
        return f"tensor {name} has invalid data_offsets [{begin}, {end}] (need 0 <= begin <= end)"
    expected = math.prod(shape) * ITEMSIZE[dtype]
    if end - begin != expected:
        return (
            f"tensor {name} spans {end - begin} bytes but its shape {shape} of {dtype} needs {expected} "
            f"(data_offsets [{begin}, {end}])"
        )
    return None


def read_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, absolute offset of the data section) of a safetensors file, validated.

    Raises :class:`SurgeryError` naming ``path`` unless the header is a JSON object whose entries (other than a
    ``__metadata__`` dict of strings) each have a known ``dtype``, a ``shape`` of non-negative ints and
    ``data_offsets`` ``[begin, end]`` spanning exactly ``prod(shape) * itemsize`` bytes, the tensors do not
    overlap, and all of them lie inside the file. Afterwards every record can be read in full.
    """
    path = Path(path)

    def bad(problem: str) -> SurgeryError:
        return SurgeryError(f"corrupt safetensors file {path}: {problem}")

    try:
        with open_regular(path) as handle:  # a FIFO or device named *.safetensors is refused, never read
            size = os.fstat(handle.fileno()).st_size
            raw = handle.read(8)
            if len(raw) != 8:
                raise SurgeryError(f"not a safetensors file (too short: {size} bytes): {path}")
            (length,) = struct.unpack("<Q", raw)
            if length > _MAX_HEADER or length > size - 8:
                limit = min(_MAX_HEADER, size - 8)
                raise SurgeryError(
                    f"not a safetensors file (header length {length} exceeds {limit}, file is {size} bytes): {path}"
                )
            text = handle.read(length)
    except OSError as exc:
        raise SurgeryError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(text) != length:
        raise bad(f"header cut short ({len(text)} of {length} bytes; file changed while reading?)")
    try:
        header = _load_json(text)
    except ValueError as exc:
        raise SurgeryError(f"not a safetensors file (bad header: {str(exc).splitlines()[0][:120]}): {path}") from None
    if not isinstance(header, dict):
        raise bad(f"header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - length
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ is not an object of strings")
            continue
        problem = _tensor_problem(_show(name), info)
        if problem:
            raise bad(problem)
        begin, end = info["data_offsets"]
        spans.append((begin, end, name))
    spans.sort()
    previous_end, previous_name = 0, None
    for begin, end, name in spans:
        if begin < previous_end:
            raise bad(f"tensors {_show(previous_name)} and {_show(name)} overlap (byte {begin} < {previous_end})")
        previous_end, previous_name = end, name
    if previous_end > data_size:
        raise bad(
            f"tensor {_show(previous_name)} ends at data byte {previous_end} but the data section has only "
            f"{data_size} bytes (truncated file?)"
        )
    return header, 8 + length


def read_weight_map(directory: Path) -> dict[str, str]:
    """The validated ``weight_map`` (tensor name -> shard file name) of ``directory``'s safetensors index.

    Raises :class:`SurgeryError` unless the index is a JSON object with a non-empty ``weight_map`` object of
    strings, and every shard it names is a plain relative file name (no ``..``, no absolute path) of an existing
    file in ``directory``.
    """
    index = Path(directory) / INDEX_NAME
    try:
        with open_regular(index, max_bytes=_MAX_HEADER) as handle:
            data = _load_json(handle.read())
    except OSError as exc:
        raise SurgeryError(f"cannot read {index}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SurgeryError(f"malformed {index}: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(data, dict):
        raise SurgeryError(f"malformed {index}: a JSON {type(data).__name__}, not an object")
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict):
        raise SurgeryError(f"malformed {index}: no 'weight_map' object")
    if not weight_map:
        raise SurgeryError(f"malformed {index}: 'weight_map' is empty")
    checked: set[str] = set()
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise SurgeryError(f"malformed {index}: shard of tensor {_show(name)} is not a string")
        if shard in checked:
            continue
        parts = PurePosixPath(shard).parts
        if not parts or shard.startswith(("/", "\\")) or ".." in parts or "\\" in shard or ":" in parts[0]:
            raise SurgeryError(f"{index} names shard {_show(shard)}, which is not a file name inside {directory}")
        if not (Path(directory) / shard).is_file():
            raise SurgeryError(f"{index} names shard {_show(shard)}, which does not exist in {directory}")
        checked.add(shard)
    return weight_map


def read_index(directory: Path) -> list[Path]:
    """The shard files of a sharded checkpoint in ``directory``, in index order, from a validated index."""
    return [Path(directory) / shard for shard in dict.fromkeys(read_weight_map(directory).values())]


def index_checkpoint(files: Iterable[Path]) -> dict[str, TensorRecord]:
    """Index every tensor of a (possibly sharded) safetensors checkpoint by name; headers are validated.

    Raises :class:`SurgeryError` when a header is invalid (see :func:`read_header`) or a tensor name appears in
    two files.
    """
    records: dict[str, TensorRecord] = {}
    for path in files:
        header, data_start = read_header(path)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in records:
                raise SurgeryError(f"tensor {_show(name)} appears in both {records[name].file} and {path}")
            begin, end = info["data_offsets"]
            records[name] = TensorRecord(
                name, Path(path), info["dtype"], tuple(info["shape"]), data_start + begin, end - begin
            )
    return records


@dataclass(frozen=True)
class OutputTensor:
    """A tensor to write: its output name, the source record, and the dtype to store it in."""

    name: str
    source: TensorRecord
    dtype: str

    @property
    def nbytes(self) -> int:
        if self.dtype == self.source.dtype:
            return self.source.nbytes
        return self.source.nbytes // ITEMSIZE[self.source.dtype] * ITEMSIZE[self.dtype]


def parse_size(text: str | int) -> int:
    """Parse a shard size such as ``5GB``, ``500MB``, ``2GiB`` or a byte count.

    Our own parser: huggingface_hub's is private and takes neither byte counts nor GiB, and transformers' would
    import transformers into the copy-only ``apply`` path.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGIB")
    unit = stripped[len(number) :]
    try:
        value = float(number) if number.isascii() else -1.0
    except ValueError:
        value = -1.0
    if unit not in units or not math.isfinite(value) or value <= 0:
        raise SurgeryError(f"malformed size {text!r}; expected e.g. 5GB, 500MB or a byte count")
    return max(1, int(value * units[unit]))


def plan_shards(
    tensors: list[OutputTensor], max_shard_bytes: int, split_at_source_files: bool = False
) -> list[list[OutputTensor]]:
    """Split tensors, in order, into shards of at most ``max_shard_bytes`` (a bigger tensor gets its own).

    With ``split_at_source_files`` a shard also ends where the source file changes, so every output shard
    can be page-aligned with its one source file (see :func:`_header_bytes`).
    """
    shards: list[list[OutputTensor]] = [[]]
    size = 0
    for tensor in tensors:
        new_file = split_at_source_files and shards[-1] and shards[-1][-1].source.file != tensor.source.file
        if shards[-1] and (size + tensor.nbytes > max_shard_bytes or new_file):
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return [shard for shard in shards if shard]


def _header_bytes(shard: list[OutputTensor]) -> bytes:
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in shard:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.source.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    first = shard[0]
    if first.dtype == first.source.dtype and first.source.offset % 8 == 0:
        # Pad with spaces so the data starts at the same offset within a page as the source's bytes:
        # aligned ranges make copy_file_range as fast as a plain cp (misaligned ones cost ~1.4x).
        pad = (first.source.offset - 8 - len(encoded)) % _PAGE
    else:
        pad = -len(encoded) % 8
    encoded += b" " * pad
    return struct.pack("<Q", len(encoded)) + encoded


def _short_read(source: TensorRecord, done: int) -> SurgeryError:
    return SurgeryError(
        f"{source.file} is truncated: tensor {_show(source.name)} needs {source.nbytes} bytes at offset "
        f"{source.offset} but only {done} could be read (file changed since its header was checked?)"
    )


def _copy_bytes(source: TensorRecord, out: BinaryIO) -> None:
    """Append ``source``'s bytes to ``out``; a source that ends early raises :class:`SurgeryError`.

    Every loop iteration either makes progress or raises, so this always terminates.
    """
    out.flush()
    with open_regular(source.file) as src:
        remaining, offset = source.nbytes, source.offset
        try:
            while remaining:
                copied = os.copy_file_range(src.fileno(), out.fileno(), min(remaining, _COPY_CHUNK), offset)
                if copied <= 0:  # end of the source file
                    raise _short_read(source, source.nbytes - remaining)
                remaining -= copied
                offset += copied
            out.seek(0, os.SEEK_END)
            return
        except (OSError, AttributeError):
            pass  # fall back to a buffered copy from where we are
        out.seek(0, os.SEEK_END)
        src.seek(offset)
        while remaining:
            chunk = src.read(min(remaining, _COPY_CHUNK))
            if not chunk:
                raise _short_read(source, source.nbytes - remaining)
            out.write(chunk)
            remaining -= len(chunk)


def torch_dtype(name: str):
    """The torch dtype of a safetensors dtype name."""
    import torch

    return {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }[name]  # fmt: skip


def read_tensor(source: TensorRecord):
    """Load one tensor (a ``torch.Tensor``) from its record; used for dtype conversion and by tests.

    Raises :class:`SurgeryError` when the file holds fewer than ``source.nbytes`` bytes at ``source.offset``.
    """
    import torch

    with open_regular(source.file) as src:
        src.seek(source.offset)
        data = bytearray(src.read(source.nbytes))
    if len(data) != source.nbytes:
        raise _short_read(source, len(data))
    if not data:
        return torch.empty(source.shape, dtype=torch_dtype(source.dtype))
    return torch.frombuffer(data, dtype=torch_dtype(source.dtype)).reshape(source.shape)


def _write_tensor(tensor: OutputTensor, out: BinaryIO) -> None:
    if tensor.dtype == tensor.source.dtype:
        _copy_bytes(tensor.source, out)
        return
    import torch

    converted = read_tensor(tensor.source).to(torch_dtype(tensor.dtype)).contiguous()
    out.write(converted.view(torch.uint8).numpy().tobytes() if converted.numel() else b"")


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_checkpoint_weights(
    out_dir: Path,
    tensors: list[OutputTensor],
    max_shard_bytes: int,
    progress: Callable[[int], None] | None = None,
    split_at_source_files: bool = False,
) -> list[Path]:
    """Write ``tensors`` as safetensors shards (+ index when sharded) into ``out_dir``; returns shard paths."""
    shards = plan_shards(tensors, max_shard_bytes, split_at_source_files)
    names = shard_file_names(len(shards))
    paths = []
    for shard, name in zip(shards, names):
        path = out_dir / name
        with open(path, "wb") as out:
            out.write(_header_bytes(shard))
            for tensor in shard:
                _write_tensor(tensor, out)
                if progress:
                    progress(tensor.nbytes)
        paths.append(path)
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: name for shard, name in zip(shards, names) for t in shard},
        }
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths
