"""A tiny Llama with a character-level tokenizer and tiny local benchmark data, for sweep tests (no downloads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

LAMBADA_TEXTS = [
    "the cat sat on the mat and the dog sat on the log",
    "one two three four five six seven eight nine ten",
    "red green blue red green blue red green blue red",
    "a b c d e f g h i j k l m n o p",
    "hello world said the small robot to the old man",
    "we went to the sea and we swam in the sea",
]

ARC_QUESTIONS = [
    ("What is two plus two?", ["four", "five", "six", "one"], "A"),
    ("Which is a color?", ["dog", "blue", "run", "ten"], "B"),
    ("What do cats say?", ["moo", "woof", "meow", "baa"], "C"),
    ("Which is a number?", ["cat", "sea", "red", "nine"], "D"),
]


def char_tokenizer():
    """A fast tokenizer with one token per printable ASCII character (96 ids: the tiny models' vocabulary)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{chr(code): code - 30 for code in range(32, 126)}}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def tiny_llama_with_tokenizer(source: Path, target: Path) -> Path:
    """A copy of the tiny Llama checkpoint ``source`` with the character tokenizer saved beside it."""
    shutil.copytree(source, target)
    char_tokenizer().save_pretrained(target)
    return target


def tiny_data(root: Path) -> Path:
    """``root`` laid out like shared/data with a 6-text LAMBADA and a 4-question ARC-Easy."""
    (root / "lambada").mkdir(parents=True)
    (root / "lambada" / "lambada_test.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA_TEXTS))
    (root / "arc").mkdir()
    lines = []
    for number, (stem, choices, answer) in enumerate(ARC_QUESTIONS):
        labelled = [{"text": text, "label": "ABCD"[i]} for i, text in enumerate(choices)]
        question = {"stem": stem, "choices": labelled}
        lines.append(json.dumps({"id": f"q{number}", "question": question, "answerKey": answer}))
    (root / "arc" / "ARC-Easy-Test.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_recipe(path: Path, body: str) -> Path:
    """A recipe file whose first line is its command."""
    path.write_text(f"# surgery sweep {path.name} --model MODEL --out OUT\n{body}")
    return path


SKIP_REVERSE = """version: 1
figure: "4"
title: tiny skip and reverse
finding: graceful
kind: eval
tasks: [lambada_openai]
x: N
variants:
  - {name: skip, plan: "skip:{lo}-{hi}", grid: {N: "1 .. (T-2)//2"}}
  - {name: reverse, plan: "reverse:{lo}-{hi}", grid: {N: [1, 3]}}
"""
