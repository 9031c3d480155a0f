"""Training data for ``surgery finetune``: ARC (Hub or local copies) or a jsonl file -> token ids and labels.

ARC questions are formatted exactly as ``surgery eval`` scores them (lm-eval's stock ``arc_easy`` /
``arc_challenge`` tasks): the prompt is ``"Question: {question}\\nAnswer:"``, tokenized with the tokenizer's
default special tokens as lm-eval does (SmolLM2 adds its BOS), and the target is ``" " + correct choice text``
without special tokens. The loss is on the answer tokens only (labels ``-100`` on the prompt).

A ``PATH.jsonl`` file holds one JSON object per line: ``{"text": ...}`` (loss on every token) or
``{"prompt": ..., "completion": ...}`` (loss on the completion only; the completion is appended as given).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.fileio import sha256_file

IGNORE = -100
ARC_SUBSETS = {"arc_challenge": "Challenge", "arc_easy": "Easy"}


@dataclass
class Example:
    """One training sequence: ``labels`` is ``input_ids`` with ``-100`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]

    @property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


@dataclass
class TrainData:
    """Tokenized examples and where they came from (recorded in ``surgery.json``)."""

    examples: list[Example]
    name: str  # arc_challenge / arc_easy / the file name
    location: str  # Hub dataset, local file
    loss_on: str  # "answer" / "completion" / "all tokens" / mixed
    available: int
    truncated: int = 0
    dropped: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        local = Path(self.location) if not self.location.startswith("hub:") else None
        return {
            "name": self.name,
            "location": self.location,
            # a local file's content, so a card can name it without its path (surgery.apply.card shows the file name)
            "sha256": sha256_file(local) if local is not None and local.is_file() else None,
            "loss_on": self.loss_on,
            "available": self.available,
            "examples": len(self.examples),
            "truncated": self.truncated,
            "dropped": self.dropped,
            "tokens": sum(len(example.input_ids) for example in self.examples),
            "target_tokens": sum(example.num_targets for example in self.examples),
        }


def arc_local_path(data: str, data_dir: Path) -> Path:
    """``DIR/arc/ARC-{Challenge,Easy}-Train.jsonl`` (the layout of ``surgery eval --data-dir``)."""
    return data_dir / "arc" / f"ARC-{ARC_SUBSETS[data]}-Train.jsonl"


def check_data(data: str, data_dir: Path | None) -> None:
    """Refuse what can be refused before torch loads: a missing file, a jsonl line without the fields."""
    if data in ARC_SUBSETS:
        if data_dir is not None:
            path = arc_local_path(data, data_dir)
            if not path.is_file():
                raise SurgeryError(f"--data {data}: {path} not found (--data-dir must hold arc/{path.name})")
        else:
            from surgery.io.hub import prepare_hub

            prepare_hub()
        return
    path = Path(data).expanduser()
    if path.suffix != ".jsonl":
        raise SurgeryError(f"--data must be arc_challenge, arc_easy or a .jsonl file (got {data!r})")
    if not path.is_file():
        raise SurgeryError(f"--data file not found: {path}")
    read_jsonl_records(path)


def read_jsonl_records(path: Path) -> list[dict[str, str]]:
    """Rows of a healing-data file, each ``{"text"}`` or ``{"prompt", "completion"}`` (strings)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SurgeryError(f"cannot read --data file {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SurgeryError(f"{path}, line {number}: not JSON ({exc})") from None
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            rows.append({"text": row["text"]})
        elif isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
            rows.append({"prompt": row["prompt"], "completion": row["completion"]})
        else:
            raise SurgeryError(
                f"{path}, line {number}: needs a string 'text' field, or string 'prompt' and 'completion' fields"
            )
    if not rows:
        raise SurgeryError(f"--data file {path} has no examples")
    return rows


def arc_prompt_completion(row: dict) -> dict[str, str]:
    """An ``allenai/ai2_arc`` row as lm-eval's ARC task presents it: prompt and the correct continuation."""
    choices = row["choices"]
    answer = choices["text"][list(choices["label"]).index(row["answerKey"])]
    return {"prompt": f"Question: {row['question']}\nAnswer:", "completion": " " + answer}


def load_rows(data: str, data_dir: Path | None) -> tuple[list[dict[str, str]], str]:
    """Rows (``text`` or ``prompt``/``completion``) and their location."""
    if data in ARC_SUBSETS:
        if data_dir is not None:
            from surgery.evaluation.data import arc_record, read_jsonl

            path = arc_local_path(data, data_dir)
            raw = [arc_record(record) for record in read_jsonl(path)]
            location = str(path)
        else:
            raw, location = _arc_from_hub(ARC_SUBSETS[data])
        return [arc_prompt_completion(row) for row in raw], location
    path = Path(data).expanduser()
    return read_jsonl_records(path), str(path)


def _arc_from_hub(subset: str) -> tuple[list[dict], str]:
    from surgery.io.hub import prepare_hub

    prepare_hub()
    try:
        from datasets import load_dataset

        dataset = load_dataset("allenai/ai2_arc", f"ARC-{subset}", split="train")
    except Exception as exc:  # noqa: BLE001 - datasets/hub errors come in many types
        raise SurgeryError(
            f"cannot load allenai/ai2_arc ARC-{subset} from the Hub ({str(exc).splitlines()[0] if str(exc) else exc})"
            "; pass --data-dir DIR with local copies (arc/ARC-*-Train.jsonl)"
        ) from None
    return [dict(row) for row in dataset], f"hub:allenai/ai2_arc/ARC-{subset}/train"


def tokenize_rows(rows: list[dict[str, str]], tokenizer, max_length: int) -> tuple[list[Example], int, int]:
    """Token ids and labels; a sequence longer than ``max_length`` keeps its end (the target). Returns
    ``(examples, truncated, dropped)``; an example left without any target token is dropped."""
    from surgery.text_limits import clip_text

    examples, truncated, dropped = [], 0, 0
    for row in rows:
        texts = [row["text"]] if "text" in row else [row["prompt"], row["completion"]]
        clipped = [clip_text(text, max_length, keep="end") for text in texts]  # never tokenize what is cut anyway
        if "text" in row:
            ids = list(tokenizer(clipped[0])["input_ids"])
            labels = list(ids)
        else:
            prompt = list(tokenizer(clipped[0])["input_ids"])
            target = list(tokenizer(clipped[1], add_special_tokens=False)["input_ids"])
            ids, labels = prompt + target, [IGNORE] * len(prompt) + target
        if len(ids) > max_length or clipped != texts:
            truncated += 1
            ids, labels = ids[-max_length:], labels[-max_length:]
        labels[0] = IGNORE  # the first token is never predicted
        example = Example(ids, labels)
        if example.num_targets == 0:
            dropped += 1
            continue
        examples.append(example)
    return examples, truncated, dropped


def load_train_data(
    data: str, data_dir: Path | None, tokenizer, *, max_length: int, limit: int | None = None, seed: int = 0
) -> TrainData:
    """Load, optionally subsample (``limit`` rows drawn with ``seed``), and tokenize the training data."""
    rows, location = load_rows(data, data_dir)
    available = len(rows)
    if limit is not None and limit < available:
        chosen = sorted(random.Random(seed).sample(range(available), limit))
        rows = [rows[index] for index in chosen]
    examples, truncated, dropped = tokenize_rows(rows, tokenizer, max_length)
    if not examples:
        raise SurgeryError(f"--data {data}: no example has a target token left (check --max-length)")
    kinds = {"text" if "text" in row else "prompt" for row in rows}
    loss_on = (
        "answer"
        if data in ARC_SUBSETS
        else ("all tokens" if kinds == {"text"} else "completion" if kinds == {"prompt"} else "mixed")
    )
    name = data if data in ARC_SUBSETS else Path(data).name
    return TrainData(examples, name, location, loss_on, available, truncated, dropped)
