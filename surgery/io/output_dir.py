"""Writing a checkpoint directory safely: refuse dangerous targets, lock, build aside, install atomically.

Every command that writes a checkpoint (``apply``, later ``finetune`` and ``export``) goes through
:func:`staged_output`::

    with staged_output(out_dir, overwrite=..., protect=[source_path]) as tmp:
        ...write every file into tmp...
    # here out_dir holds the finished checkpoint; on any error (or Ctrl-C, SIGTERM) nothing was installed

Rules: OUT_DIR may not be, contain, or lie inside a protected path (the source model), so ``--overwrite``
can never delete the source; an exclusive ``flock`` on a lock file beside OUT_DIR makes concurrent runs to one
OUT_DIR fail clearly instead of overwriting each other (the kernel drops it when the process dies, even by
``kill -9``); emptiness is checked again at install time; a previous checkpoint replaced with ``--overwrite`` is
moved aside and restored if the final rename fails. What a ``kill -9`` leaves (a temporary directory, a moved-aside
checkpoint) is cleaned up or restored by the next run to the same OUT_DIR (:func:`recover_interrupted`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from surgery.errors import SurgeryError


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def check_creatable(out_dir: Path, what: str = "output directory", *, beside: bool = True) -> None:
    """``out_dir`` is a directory, or can be made as one: its nearest existing ancestor is a writable directory.

    ``Path.exists`` answers False for ``file/sub`` and raises for a name over NAME_MAX; both are refused here,
    before any work, instead of failing when the first file is written. A file is created and removed where
    the run will write (``beside`` OUT_DIR for a staged output, else inside it once it exists), which also
    catches /proc and read-only file systems. ``what`` names the option in the message (``--out``).
    """
    try:
        if out_dir.is_symlink() and not out_dir.exists():
            raise SurgeryError(f"{what} {out_dir} is a dangling symlink")
        if out_dir.exists() and not out_dir.is_dir():
            raise SurgeryError(f"{what} {out_dir} exists and is not a directory")
        existing = Path(os.path.abspath(out_dir))
        if beside or not existing.is_dir():
            existing = existing.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
    except OSError as exc:  # a name too long, a symlink loop, ...
        shown = str(out_dir) if len(str(out_dir)) <= 200 else str(out_dir)[:200] + "..."
        raise SurgeryError(f"cannot use {what} {shown}: {exc.strerror or exc}") from None
    if not existing.is_dir():
        raise SurgeryError(f"{what} {out_dir}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SurgeryError(f"{what} {out_dir}: cannot write in {existing}")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".surgery-probe-"))
    except OSError as exc:
        raise SurgeryError(f"{what} {out_dir}: cannot create files in {existing} ({exc.strerror})") from None


def check_output_dir(out_dir: Path, *, overwrite: bool, protect: Iterable[Path] = ()) -> Path:
    """Validate OUT_DIR before any work; returns it with symlinks resolved (where it will really be written)."""
    out_dir = Path(out_dir).expanduser()
    check_creatable(out_dir)  # the lock file and the temporary folder are made beside OUT_DIR
    real = _real(out_dir)
    if real == real.parent:
        raise SurgeryError(f"output directory {out_dir} is the file system root")
    if len(real.name.encode()) > 200:  # room for the temporary sibling's prefix and suffix within NAME_MAX (255)
        raise SurgeryError(f"output directory name is too long ({len(real.name.encode())} bytes; at most 200)")
    check_apart(out_dir, protect)
    if real.is_dir() and any(real.iterdir()) and not overwrite:
        raise SurgeryError(f"output directory {out_dir} exists and is not empty (pass --overwrite to replace it)")
    return real


def check_apart(
    path: Path,
    protect: Iterable[Path],
    *,
    what: str = "output directory",
    choose: str = "OUT_DIR",
    inputs: str = "the source model",
) -> Path:
    """Refuse a folder a run replaces or deletes (``path``) that is, contains or lies inside a protected input.

    The one check behind OUT_DIR (:func:`check_output_dir`) and every other folder a command may remove
    (finetune's resume state): symlinks are resolved on both sides. Returns ``path`` resolved.
    """
    real = _real(Path(path).expanduser())
    for item in protect:
        source = _real(Path(item).expanduser())
        if real == source:
            raise SurgeryError(f"{what} {path} is {inputs}; choose another {choose}")
        if source.is_relative_to(real):
            raise SurgeryError(f"{what} {path} contains {inputs} {item}; choose another {choose}")
        if real.is_relative_to(source):
            raise SurgeryError(f"{what} {path} is inside {inputs} {item}; choose another {choose}")
    return real


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    lock_path = out_dir.parent / f".{out_dir.name}.surgery-lock"
    handle = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SurgeryError(f"another surgery run is writing {out_dir} right now; wait for it to finish") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
    finally:
        handle.close()


def _install(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` into place; an old checkpoint is replaced only now, and restored on failure."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise SurgeryError(f"output directory {out_dir} was filled by another process during this run; not replaced")
    backup = None
    if out_dir.exists():
        backup = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out_dir, backup)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if backup is not None:
            os.rename(backup, out_dir)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def recover_interrupted(out_dir: Path) -> list[str]:
    """Clean up after a run killed with ``kill -9`` (no handler ran); call only while holding OUT_DIR's lock.

    Its temporary directory is removed; a previous checkpoint it had moved aside (``.NAME.old-*``) just before
    dying is moved back to OUT_DIR. Returns what was done, one line each (also printed to stderr).
    """
    done = []
    for stale in sorted(out_dir.parent.glob(f".{out_dir.name}.surgery-tmp-*")):
        shutil.rmtree(stale, ignore_errors=True)
        done.append(f"removed the temporary directory {stale.name} of an interrupted run")
    backups = sorted(out_dir.parent.glob(f".{out_dir.name}.old-*"))
    if backups and not out_dir.exists():
        os.rename(backups[-1], out_dir)
        done.append(f"restored the previous checkpoint {out_dir} that an interrupted run had moved aside")
        backups = backups[:-1]
    for backup in backups:  # superseded copies: OUT_DIR holds a complete checkpoint
        shutil.rmtree(backup, ignore_errors=True)
        done.append(f"removed {backup.name}, left by an interrupted run")
    for line in done:
        print(f"note: {line}", file=sys.stderr)
    return done


@contextmanager
def staged_output(out_dir: Path, *, overwrite: bool, protect: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of OUT_DIR to write into; install it as OUT_DIR when the block succeeds."""
    protect = list(protect)
    out_dir = check_output_dir(out_dir, overwrite=overwrite, protect=protect)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir):
        recover_interrupted(out_dir)
        check_output_dir(out_dir, overwrite=overwrite, protect=protect)  # again, now that we hold the lock
        tmp = out_dir.parent / f".{out_dir.name}.surgery-tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            _install(tmp, out_dir, overwrite)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
