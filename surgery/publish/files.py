"""Reading a folder for upload without ever leaving it: listing, checking and opening each file once.

A push sends only files that live in the folder's own real directory. Listing never follows symlinks (a
symlink to a directory is an entry, not a folder to walk, so a loop cannot hang it); every entry selected for
upload is then opened by :func:`open_inside`, which refuses, with one line naming the entry, before anything
is sent:

* a symlink, at any depth (the entry itself or a directory on its way), whose target resolves outside the
  folder's real directory (``vocab.txt -> ~/.ssh/id_rsa``, ``sub -> /etc``); a symlink that stays inside is
  read as its target;
* anything that is not a regular file: FIFOs (opening one would hang), sockets, character and block devices,
  directories.

The checked open *is* the read: every path component is opened relative to the directory opened before it
with ``O_NOFOLLOW``, and the regular-file check is made on the open descriptor, so a file swapped for a symlink
or a FIFO between the check and the upload fails instead of being followed. The upload then reads that
descriptor (:func:`upload_source`), not the name.

**Hard links** are not refused: a hard link is the file itself under a second name, indistinguishable from a
copy (``cp -al`` copies of checkpoints are made of them), and making one needs write access to this folder and,
with Linux's ``fs.protected_hardlinks``, to the file linked, so it cannot reach a file the user could not
already copy here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from surgery.errors import SurgeryError
from surgery.fileio import special_file_kind

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_PROC_FD = Path("/proc/self/fd")


def list_entries(root: Path) -> list[str]:
    """Every entry under ``root`` that is not a plain directory (files, symlinks to anything, FIFOs, devices),
    relative and in ``/`` form, in ``sorted(Path.glob("**/*"))`` order; symlinks are never followed."""
    out: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(directory)
        out += [base / name for name in filenames]
        out += [base / name for name in dirnames if (base / name).is_symlink()]  # listed, not walked
    return [path.relative_to(root).as_posix() for path in sorted(out)]


def _refuse(what: str, relative: str, why: str) -> SurgeryError:
    return SurgeryError(f"{what}: {relative} {why}; refusing to read it for upload (nothing was uploaded)")


def open_inside(root: Path, relative: str, what: str) -> BinaryIO:
    """``root/relative`` opened for reading, if it is a regular file inside ``root``'s real directory.

    ``root`` must be resolved (no symlinks). ``what`` names the folder in errors (``checkpoint /x``).
    """
    target = Path(os.path.realpath(root / relative))
    if target != root and root not in target.parents:
        raise _refuse(what, relative, f"resolves through a symlink to {target}, outside {root}")
    parts = target.relative_to(root).parts
    if not parts:
        raise _refuse(what, relative, "resolves to the folder itself")
    if os.open not in os.supports_dir_fd or not _NOFOLLOW:  # no openat: check, then open the resolved path
        info = os.lstat(target)
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(what, relative, f"is {special_file_kind(info.st_mode)}, not a regular file")
        return open(target, "rb")  # noqa: SIM115 - returned open
    try:
        directory = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise _refuse(what, relative, f"cannot be read: the folder cannot be opened ({exc.strerror})") from None
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=directory)
            os.close(directory)
            directory = inner
        info = os.stat(parts[-1], dir_fd=directory, follow_symlinks=False)
        if not stat.S_ISREG(info.st_mode):  # refused before it is opened: opening a FIFO or a device can block
            raise _refuse(what, relative, f"is {special_file_kind(info.st_mode)}, not a regular file")
        handle = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=directory)
    except FileNotFoundError:
        raise _refuse(what, relative, "disappeared while being read") from None
    except OSError as exc:  # ELOOP / ENOTDIR: a component was swapped for a symlink or a file meanwhile
        raise _refuse(what, relative, f"cannot be opened inside the folder ({exc.strerror})") from None
    finally:
        os.close(directory)
    opened = os.fstat(handle)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
        os.close(handle)
        raise _refuse(what, relative, "changed while being checked")
    os.set_blocking(handle, True)
    return os.fdopen(handle, "rb")


def checked_sizes(root: Path, names: list[str], what: str) -> dict[str, int]:
    """Each name's size, every one opened and checked by :func:`open_inside` (a dry run reads nothing else)."""
    sizes = {}
    for name in names:
        with open_inside(root, name, what) as handle:
            sizes[name] = os.fstat(handle.fileno()).st_size
    return sizes


def upload_source(handle: BinaryIO) -> str | BinaryIO:
    """What ``CommitOperationAdd(path_or_fileobj=...)`` is given for a checked open file.

    On Linux ``/proc/self/fd/N``: a path (so huggingface_hub can hash and send it in threads, and use Xet
    storage) that reopens that very file, whatever its name points to by then. Elsewhere the open file itself
    (huggingface_hub then sends it over plain HTTP instead of Xet).
    """
    path = _PROC_FD / str(handle.fileno())
    return str(path) if _PROC_FD.is_dir() and path.exists() else handle
