"""The files of a sweep run directory: written here, read back here (one owner for their names).

``OUT/results.jsonl``
    One JSON object per (variant, task), appended (one ``write`` of a whole line, flushed and fsynced) as each
    finishes, so a killed sweep loses at most the job in progress. Each record has ``key`` (what makes it
    unique: model identity, plan, task, limit, evaluation settings, code version, and the recipe line with its
    parameters), ``eval_key`` (the same without the recipe line: variants with the same plan share it),
    ``variant``, ``label``, ``params``, ``derived``, ``plan`` (canonical text, ``"identity"`` for the full
    model), ``task``, ``metrics`` (lm-eval's keys such as ``"acc,none"``), ``n``, ``limit``, ``chance``,
    ``settings``, ``model``, ``provenance`` and the volatile :data:`VOLATILE_FIELDS` (``timing``, ``host``).
``OUT/sweep.json``
    The recipe, the model and the settings of the last run (what ``surgery plot`` reads).
``OUT/similarity/<key>/``
    For similarity recipes: the files of :mod:`surgery.analysis.report` per variant.
``OUT/plots/``, ``OUT/summary.md``
    Written by ``surgery plot``.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_json

RESULTS = "results.jsonl"
MANIFEST = "sweep.json"
LOCK = ".sweep.lock"
SIMILARITY_DIR = "similarity"
PLOTS_DIR = "plots"
SUMMARY = "summary.md"
# Fields that differ between two runs of the same sweep (when and where it ran); everything else is the result.
VOLATILE_FIELDS = ("timing", "host")


def read_records(out_dir: Path) -> list[dict[str, Any]]:
    """Every complete record of ``OUT/results.jsonl`` (a partial last line from a killed run is ignored)."""
    path = Path(out_dir) / RESULTS
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the unterminated tail a kill left behind
                continue
            raise SurgeryError(f"{path}:{number}: not a JSON record; the results file is damaged") from None
        if not isinstance(record, dict) or "key" not in record:
            raise SurgeryError(f"{path}:{number}: not a sweep record")
        records.append(record)
    return records


def stable_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without :data:`VOLATILE_FIELDS`: what two runs of one sweep must agree on exactly."""
    return {key: value for key, value in record.items() if key not in VOLATILE_FIELDS}


class ResultStore:
    """The append-only results file of one run directory, held under an exclusive lock while a sweep runs."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / RESULTS
        self._lock = None

    @contextmanager
    def locked(self) -> Iterator[ResultStore]:
        """Hold OUT's lock (a second sweep into OUT fails at once); repairs a torn last line first."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.out_dir / LOCK, "a")  # noqa: SIM115 - held for the whole sweep
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SurgeryError(f"another sweep is writing to {self.out_dir}") from None
        try:
            self._repair()
            yield self
        finally:
            (self.out_dir / LOCK).unlink(missing_ok=True)  # before unlocking: no one can be waiting (LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def _repair(self) -> None:
        """Cut an unterminated last line (a record being written when the sweep was killed)."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def done(self) -> dict[str, dict[str, Any]]:
        """Finished records by key."""
        return {record["key"]: record for record in read_records(self.out_dir)}

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as one line, flushed to disk before returning."""
        line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def write_artifact(self, key: str, result: Any, record: dict[str, Any]) -> str:
        """Write a similarity result beside the records (:mod:`surgery.analysis.report`); returns its folder."""
        from surgery.analysis.report import write_result

        relative = f"{SIMILARITY_DIR}/{key}"
        summary = {
            "sweep_record": {k: record[k] for k in ("key", "variant", "params", "plan") if k in record},
            "config": {"model": record.get("model", {}).get("given"), "plan_canonical": result.plan},
            "hidden_states": result.to_dict(),
        }
        write_result(self.out_dir / relative, result, summary)
        return relative


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """``OUT/sweep.json``, atomically."""
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """``OUT/sweep.json``; one error line when OUT is not a sweep run directory."""
    from surgery.fileio import path_is

    path = Path(out_dir) / MANIFEST
    if not path_is(Path.is_dir, str(out_dir)):  # a name too long to exist included
        raise SurgeryError(f"no such run directory: {str(out_dir)[:200]}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SurgeryError(
            f"{out_dir} is not a sweep run directory (no {MANIFEST}); run `surgery sweep` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise SurgeryError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or "recipe" not in manifest:
        raise SurgeryError(f"{path} is not a sweep manifest")
    return manifest
