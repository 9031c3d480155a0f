"""Small file and text helpers every stage shares: hashing, atomic writes, plain-text tables."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from surgery.errors import SurgeryError


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


def special_file_kind(mode: int) -> str | None:
    """What a file of ``st_mode`` is when it is not a regular file (``"a named pipe (FIFO)"``, ...), else None."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def open_regular(path: Path, *, follow_symlinks: bool = True, max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading only if it is a regular file (of at most ``max_bytes``).

    A FIFO, device, socket or directory (or, with ``follow_symlinks=False``, a symbolic link) raises
    :class:`OSError` naming what it is, without blocking and without reading from it: the type is checked
    before opening and again on the open descriptor (``O_NONBLOCK``, ``O_NOFOLLOW``), so a file swapped in
    between cannot hang the caller either.
    """

    def refuse(kind: str) -> OSError:
        return OSError(errno.EINVAL, f"not a regular file: it is {kind}", str(path))

    mode = (os.stat if follow_symlinks else os.lstat)(path).st_mode
    kind = special_file_kind(mode)
    if kind is not None:
        raise refuse(kind)
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | nonblock | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        kind = special_file_kind(info.st_mode)
        if kind is not None:
            raise refuse(kind)
        if max_bytes is not None and info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"file is {info.st_size} bytes, more than the {max_bytes} allowed", str(path))
        if nonblock:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def path_is(test: Callable[[Path], bool], text: str) -> bool:
    """``test(Path(text))`` (e.g. ``Path.is_file``), False where ``text`` cannot be a path at all.

    Python 3.11's ``Path.is_file``/``is_dir``/``exists`` raise for a name over the file-name limit (255 bytes,
    ``ENAMETOOLONG``) instead of answering False; ``--plan`` plan text longer than that is no file name, and a
    command-line path that long names nothing.
    """
    if not text.strip():
        return False
    try:
        return test(Path(text))
    except (OSError, ValueError):  # a name too long, a NUL byte, ...: not a file we could read
        return False


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and ``os.replace``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def check_writable_file(path: Path, option: str) -> None:
    """Fail early (before a long run) when ``path`` cannot be written: a directory, or an unwritable parent."""
    path = Path(path)
    try:
        if path.is_dir():
            raise SurgeryError(f"{option} {path} is a directory; give a file name")
        parent = path.parent if str(path.parent) else Path(".")
        existing = parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SurgeryError(f"{option} {path}: cannot write in {existing}")
        # the file is written through a temporary sibling (atomic_write_text): make one now and remove it, so
        # a name too long or a file system that refuses new files (/proc, read-only) is known before the run
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except (OSError, ValueError) as exc:  # ENAMETOOLONG, ELOOP, EROFS, a NUL byte, ...
        shown = str(path) if len(str(path)) <= 200 else str(path)[:200] + "..."
        raise SurgeryError(f"{option} {shown}: cannot write there ({getattr(exc, 'strerror', None) or exc})") from None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, rule: bool = True) -> str:
    """Left-aligned plain-text columns separated by two spaces, with a dashed rule under the headers."""
    widths = [max([len(header), *(len(row[i]) for row in rows)]) for i, header in enumerate(headers)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths))]
    if rule:
        lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_bytes(size: int) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as the Hub shows file sizes)."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"
