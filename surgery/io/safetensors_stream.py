"""Streaming safetensors I/O: read headers, write shards tensor by tensor.

Nothing here loads a whole checkpoint. Headers are parsed by hand (8-byte length + JSON) so the output
header can be computed before any tensor data is written; same-dtype tensors are copied file-to-file with
``os.copy_file_range`` (kernel side, no Python buffer), and only dtype conversion materializes a tensor.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from surgery.errors import SurgeryError

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


def read_header(path: Path) -> tuple[dict, int]:
    """Return (header dict, absolute offset of the data section) of a safetensors file."""
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise SurgeryError(f"not a safetensors file (too short): {path}")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise SurgeryError(f"not a safetensors file (header length {length}): {path}")
        try:
            header = json.loads(handle.read(length))
        except json.JSONDecodeError:
            raise SurgeryError(f"not a safetensors file (bad header): {path}") from None
    return header, 8 + length


def index_checkpoint(files: Iterable[Path]) -> dict[str, TensorRecord]:
    """Index every tensor of a (possibly sharded) safetensors checkpoint by name."""
    records: dict[str, TensorRecord] = {}
    for path in files:
        header, data_start = read_header(path)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            records[name] = TensorRecord(
                name, path, info["dtype"], tuple(info["shape"]), data_start + begin, end - begin
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
    """Parse a shard size such as ``5GB``, ``500MB``, ``2GiB`` or a byte count."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    stripped = text.strip().upper()
    number = stripped.rstrip("KMGIB")
    unit = stripped[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise SurgeryError(f"malformed size {text!r}; expected e.g. 5GB, 500MB or a byte count")
    return int(value * units[unit])


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


def _copy_bytes(source: TensorRecord, out: BinaryIO) -> None:
    out.flush()
    with open(source.file, "rb") as src:
        remaining, offset = source.nbytes, source.offset
        try:
            while remaining:
                copied = os.copy_file_range(src.fileno(), out.fileno(), min(remaining, _COPY_CHUNK), offset)
                if copied == 0:
                    raise OSError("copy_file_range copied nothing")
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
    """Load one tensor (a ``torch.Tensor``) from its record; used for dtype conversion and by tests."""
    import torch

    with open(source.file, "rb") as src:
        src.seek(source.offset)
        data = bytearray(src.read(source.nbytes))
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
