"""Local benchmark files -> the Hub dataset schema lm-eval's stock tasks expect.

``surgery eval --data-dir DIR`` reads local copies laid out like ``shared/data``::

    DIR/lambada/lambada_test.jsonl                        {"text"}                      (as on the Hub)
    DIR/arc/ARC-{Easy,Challenge}-{Train,Dev,Test}.jsonl   AI2 release format            (converted)
    DIR/hellaswag/hellaswag_val.jsonl                     original jsonl, if you have it (as on the Hub)
    DIR/hellaswag/third_party_derived/hellaswag_val_full.txt.bz2
                                                          llama.cpp text format         (converted; STAND-IN)
    DIR/winogrande/dev.jsonl + dev-labels.lst             AI2 release format            (labels joined)
    DIR/gsm8k/{train,test}.jsonl                          OpenAI release format         (as on the Hub)

Converted files carry exactly the fields of the Hub datasets (``allenai/ai2_arc``, ``allenai/winogrande``,
``Rowan/hellaswag``), so the task YAMLs can use lm-eval's stock ``doc_to_text``/``doc_to_target``/
``doc_to_choice``/``process_docs`` unchanged. They are written once into a cache directory, named by the
sha256 of their source files, so the ``datasets`` cache is reused across runs.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.fileio import atomic_write_text

ENV_CACHE = "SURGERY_CACHE_DIR"


def cache_root() -> Path:
    """Where converted data files live: ``$SURGERY_CACHE_DIR`` or ``~/.cache/surgery``, subfolder ``eval-data``."""
    base = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "surgery")
    return Path(base) / "eval-data"


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# ---------------------------------------------------------------------------------------------- converters


def arc_record(record: dict) -> dict:
    """AI2 ARC release record -> ``allenai/ai2_arc`` row (``choices`` as ``{"text": [...], "label": [...]}``).

    The labels are kept as they are (``A``-``E`` or ``1``-``4``); lm-eval maps the answer through
    ``choices.label.index(answerKey)``, so items with 3 or 5 choices and numeric labels work unchanged.
    """
    question = record["question"]
    choices = question["choices"]
    labels = [str(choice["label"]) for choice in choices]
    answer = str(record["answerKey"])
    if answer not in labels:
        raise SurgeryError(f"ARC item {record.get('id')!r}: answerKey {answer!r} is not one of its labels {labels}")
    return {
        "id": record["id"],
        "question": question["stem"],
        "choices": {"text": [choice["text"] for choice in choices], "label": labels},
        "answerKey": answer,
    }


def winogrande_records(records: list[dict], labels: list[str]) -> list[dict]:
    """Join ``dev.jsonl`` with ``dev-labels.lst`` -> ``allenai/winogrande`` rows (``answer`` is ``"1"``/``"2"``)."""
    if len(records) != len(labels):
        raise SurgeryError(f"WinoGrande: {len(records)} records but {len(labels)} labels")
    rows = []
    for index, (record, label) in enumerate(zip(records, labels)):
        if label not in ("1", "2"):
            raise SurgeryError(f"WinoGrande label {index + 1} is {label!r}, expected '1' or '2'")
        if record.get("answer") not in (None, "", label):
            raise SurgeryError(
                f"WinoGrande record {index + 1} ({record.get('qID')}): answer {record['answer']!r} "
                f"disagrees with dev-labels.lst ({label!r})"
            )
        rows.append(
            {
                "sentence": record["sentence"],
                "option1": record["option1"],
                "option2": record["option2"],
                "answer": label,
            }
        )
    return rows


def hellaswag_derived_records(lines: Iterable[str]) -> list[dict]:
    """llama.cpp ``--hellaswag`` text (6 lines per item) -> ``Rowan/hellaswag``-shaped rows.

    Each item is ``<activity_label>: <ctx>`` / gold index / four endings. The derived file has no
    ``ctx_a``/``ctx_b`` split, so ``ctx_a`` holds the whole context and ``ctx_b`` is empty; lm-eval's
    ``process_docs`` then builds ``preprocess(activity_label + ": " + ctx)``, which differs from the
    original only where the original capitalises ``ctx_b`` (and in the bracket tags the deriving program
    already removed). Scores on it are a STAND-IN for HellaSwag, not comparable to published numbers.
    """
    lines = [line.rstrip("\n").rstrip("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) % 6:
        raise SurgeryError(f"HellaSwag derived file: {len(lines)} lines is not a multiple of 6")
    rows = []
    for index in range(0, len(lines), 6):
        head, gold, *endings = lines[index : index + 6]
        activity_label, sep, ctx = head.partition(": ")
        if not sep:
            activity_label, ctx = "", head
        if gold.strip() not in ("0", "1", "2", "3"):
            raise SurgeryError(f"HellaSwag derived file, item {index // 6 + 1}: gold label {gold!r} is not 0-3")
        rows.append(
            {
                "ind": index // 6,
                "activity_label": activity_label,
                "ctx_a": ctx,
                "ctx_b": "",
                "ctx": ctx,
                "endings": endings,
                "source_id": "",
                "split": "val",
                "split_type": "",
                "label": gold.strip(),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------- caching


def _digest(paths: Iterable[Path]) -> str:
    sha = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        sha.update(b"\0")
    return sha.hexdigest()[:16]


def write_jsonl_atomic(rows: Iterable[dict], path: Path) -> None:
    """Rows as JSON lines, written atomically (a cache file is never seen half-written)."""
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def converted(name: str, sources: list[Path], convert: Callable[[], list[dict]], cache_dir: Path | None = None) -> Path:
    """Path of ``convert()``'s rows as jsonl, written once per content of ``sources`` (named by their sha256)."""
    root = cache_dir if cache_dir is not None else cache_root()
    path = root / f"{name}-{_digest(sources)}.jsonl"
    if not path.is_file():
        write_jsonl_atomic(convert(), path)
    return path


def convert_arc(source: Path, cache_dir: Path | None = None) -> Path:
    return converted(f"arc-{source.stem}", [source], lambda: [arc_record(r) for r in read_jsonl(source)], cache_dir)


def convert_winogrande(records: Path, labels: Path, cache_dir: Path | None = None) -> Path:
    def rows() -> list[dict]:
        label_lines = [line.strip() for line in labels.read_text(encoding="utf-8").splitlines() if line.strip()]
        return winogrande_records(read_jsonl(records), label_lines)

    return converted(f"winogrande-{records.stem}", [records, labels], rows, cache_dir)


def convert_hellaswag_derived(source: Path, cache_dir: Path | None = None) -> Path:
    def rows() -> list[dict]:
        opener = bz2.open if source.suffix == ".bz2" else open
        with opener(source, "rt", encoding="utf-8") as handle:
            return hellaswag_derived_records(handle)

    return converted("hellaswag-standin", [source], rows, cache_dir)
