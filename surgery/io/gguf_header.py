"""The metadata of a GGUF file, read from its header alone (no tensor, no numpy).

``gguf.GGUFReader`` parses every metadata array into numpy views, the tokenizer's 49,152 tokens and merges
included: 3.5 s on the 98 MB SmolLM2 file before the first key can be read. A plan is checked against the layer
count (``<arch>.block_count``) and a card names the file's origin (``general.*``), so this reader walks the
key-value section once, keeps scalar and string values, and steps over arrays without building them
(milliseconds). Every length is checked against the file's size, so a truncated or forged header ends in one
:class:`~surgery.errors.SurgeryError` instead of a huge read or an endless loop.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

from surgery.errors import SurgeryError

MAGIC = b"GGUF"
MAX_KEY_BYTES = 1 << 16
MAX_STRING_BYTES = 1 << 20  # longer string values (a chat template...) are stepped over, not kept
MAX_ARRAY_DEPTH = 8
# value type -> struct format of one item (GGUF: 8 STRING, 9 ARRAY)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Header:
    """A bounded reader over a GGUF file's header (``order``: ``<`` or ``>``)."""

    def __init__(self, handle: BinaryIO, size: int, order: str) -> None:
        self.handle, self.size, self.order = handle, size, order

    def read(self, count: int) -> bytes:
        if count > self.size - self.handle.tell():
            raise SurgeryError("truncated header (a length points past the end of the file)")
        return self.handle.read(count)

    def skip(self, count: int) -> None:
        if count > self.size - self.handle.tell():
            raise SurgeryError("truncated header (a length points past the end of the file)")
        self.handle.seek(count, os.SEEK_CUR)

    def unpack(self, fmt: str) -> Any:
        fmt = self.order + fmt
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self, limit: int) -> str | None:
        """A length-prefixed UTF-8 string; None (stepped over) when longer than ``limit`` bytes."""
        length = self.unpack("Q")
        if length > limit:
            self.skip(length)
            return None
        return self.read(length).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0) -> Any:
        """One value of type ``kind``; arrays are stepped over (None)."""
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string(MAX_STRING_BYTES)
        if kind != _ARRAY or depth >= MAX_ARRAY_DEPTH:
            raise SurgeryError(f"unknown metadata value type {kind}")
        item, count = self.unpack("I"), self.unpack("Q")
        if item in _SCALARS:
            self.skip(count * struct.calcsize(_SCALARS[item]))
            return None
        if count > (self.size - self.handle.tell()) // 8:  # every string or array item takes at least 8 bytes
            raise SurgeryError("truncated header (an array is longer than the file)")
        for _ in range(count):
            if item == _STRING:
                self.skip(self.unpack("Q"))
            else:
                self.value(item, depth + 1)
        return None


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of GGUF file ``path`` (``general.architecture``, ``llama.block_count``, ...).

    Arrays (the tokenizer's vocabulary, ...) and strings over 1 MiB are left out. Reads the header only.
    Raises :class:`SurgeryError` ("cannot read GGUF file ...") for anything that is not a well-formed header.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if handle.read(4) != MAGIC:
                raise SurgeryError("not a GGUF file (no GGUF magic)")
            raw_version = handle.read(4)
            if len(raw_version) != 4:
                raise SurgeryError("truncated header")
            order = "<" if struct.unpack("<I", raw_version)[0] < 1 << 16 else ">"  # big-endian files exist
            header = _Header(handle, size, order)
            version = struct.unpack(order + "I", raw_version)[0]
            if version not in (2, 3):
                raise SurgeryError(f"unsupported GGUF version {version}")
            header.unpack("Q")  # tensor count
            count = header.unpack("Q")
            if count > (size - handle.tell()) // 12:  # a key-value pair takes at least 12 bytes
                raise SurgeryError(f"header claims {count} metadata keys, more than the file can hold")
            metadata: dict[str, Any] = {}
            for _ in range(count):
                key = header.string(MAX_KEY_BYTES)
                value = header.value(header.unpack("I"))
                if key is not None and value is not None:
                    metadata[key] = value
            return metadata
    except SurgeryError as exc:
        raise SurgeryError(f"cannot read GGUF file {path}: {exc}") from None
    except (OSError, struct.error) as exc:
        raise SurgeryError(f"cannot read GGUF file {path}: {getattr(exc, 'strerror', None) or exc}") from None
