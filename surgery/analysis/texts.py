"""Texts to run through a model for analyses: LAMBADA (local copy or the Hub) or a user file.

``--data lambada`` reads, in this order of preference:

1. ``DATA_DIR/lambada/lambada_test.jsonl`` when a data directory is given (``--data-dir`` or the
   ``SURGERY_DATA_DIR`` environment variable), laid out like the project's shared data folder;
2. otherwise the Hugging Face Hub dataset ``EleutherAI/lambada_openai`` (config ``default``, split ``test``),
   the same texts in the same order, through ``datasets``.

``--data PATH`` reads a user file: ``.jsonl`` (one JSON object per line with a ``text`` field, or a JSON
string per line) or ``.txt`` (one text per non-empty line).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.io.data_dir import DATA_DIR_ENV, resolve_data_dir

LAMBADA_FILE = Path("lambada") / "lambada_test.jsonl"
LAMBADA_HUB = ("EleutherAI/lambada_openai", "default", "test")
HOW_TO_SUPPLY = (
    f"pass --data-dir DIR (a folder containing {LAMBADA_FILE.as_posix()}), set {DATA_DIR_ENV}=DIR, "
    "or give your own texts with --data PATH.jsonl|PATH.txt"
)


@dataclass(frozen=True)
class Texts:
    """Selected texts and where they came from (recorded in ``similarity.json``)."""

    texts: list[str]
    source: str  # "lambada" or "file"
    location: str  # file path or Hub dataset id
    available: int  # texts in the source before --limit


def load_texts(data: str, *, data_dir: str | Path | None = None, limit: int | None = None, seed: int | None = None):
    """Load texts for ``--data`` (``lambada`` or a .jsonl/.txt path) and select ``limit`` of them.

    Selection: the first ``limit`` texts, or, with ``seed``, ``limit`` texts drawn by
    ``random.Random(seed).sample`` (kept in file order). Raises :class:`SurgeryError` when nothing is reachable.
    """
    if limit is not None and limit < 1:
        raise SurgeryError(f"limit must be >= 1 (got {limit})")
    if data.lower() == "lambada":
        texts, location = _lambada(data_dir)
        source = "lambada"
    else:
        path = Path(data).expanduser()
        if path.suffix.lower() not in (".jsonl", ".txt"):
            raise SurgeryError(f"unknown --data {data!r}: use 'lambada' or a .jsonl / .txt file")
        if not path.is_file():
            raise SurgeryError(f"data file not found: {path}")
        texts, location, source = _read_file(path), str(path), "file"
    if not texts:
        raise SurgeryError(f"no texts found in {location}")
    available = len(texts)
    if limit is not None and limit < available:
        if seed is None:
            texts = texts[:limit]
        else:
            chosen = sorted(random.Random(seed).sample(range(available), limit))
            texts = [texts[index] for index in chosen]
    return Texts(texts=texts, source=source, location=location, available=available)


def _lambada(data_dir: str | Path | None) -> tuple[list[str], str]:
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        path = directory / LAMBADA_FILE
        if not path.is_file():
            raise SurgeryError(f"LAMBADA not found: {path} does not exist; {HOW_TO_SUPPLY}")
        return _read_file(path), str(path)
    return _lambada_from_hub(), "hf://datasets/" + LAMBADA_HUB[0]


def _lambada_from_hub() -> list[str]:  # pragma: no cover - needs the network (or a warm datasets cache)
    from surgery.io.hub import dataset_in_cache, prepare_hub

    name, config, split = LAMBADA_HUB
    if prepare_hub() and not dataset_in_cache(name):
        raise SurgeryError(f"LAMBADA ({name}) is not in the local cache and the Hub is not reachable; {HOW_TO_SUPPLY}")
    try:
        import datasets

        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - offline, missing, auth, ...: all mean "supply the data yourself"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SurgeryError(
            f"cannot load LAMBADA from the Hugging Face Hub ({name}: {first}); {HOW_TO_SUPPLY}"
        ) from None
    return [str(text) for text in dataset["text"]]


def _read_file(path: Path) -> list[str]:
    try:
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SurgeryError(f"cannot read {path}: {exc}") from None
    if path.suffix.lower() == ".txt":
        return [line.strip() for line in content.splitlines() if line.strip()]
    texts = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SurgeryError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            text = record["text"]
        elif isinstance(record, str):
            text = record
        else:
            raise SurgeryError(f"{path}:{number}: expected an object with a string 'text' field, or a string")
        if text.strip():
            texts.append(text)
    return texts
