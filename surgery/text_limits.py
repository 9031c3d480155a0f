"""Bounding user text before it is tokenized: a tokenizer encodes a whole string before it truncates.

Every place that tokenizes user-supplied text with a length limit (``finetune --data``, ``similarity --data``,
GLUE files) cuts each text with :func:`clip_text` first, so a 100 MB single-line example costs a few hundred
kilobytes of tokenizer work instead of gigabytes of token ids that truncation then throws away.
"""

from __future__ import annotations

from typing import Literal

# A generous bound on the characters one token covers (runs of spaces or dashes are single tokens in some
# vocabularies; natural text averages about 4): text beyond max_tokens * this cannot survive truncation.
CHARS_PER_TOKEN = 64


def clip_text(text: str, max_tokens: int, *, keep: Literal["start", "end"]) -> str:
    """``text`` cut to at most ``max_tokens * CHARS_PER_TOKEN`` characters, keeping its start or its end.

    Texts within the bound come back unchanged (the same object), so short examples tokenize exactly as before.
    """
    limit = max(1, max_tokens) * CHARS_PER_TOKEN
    if len(text) <= limit:
        return text
    return text[:limit] if keep == "start" else text[-limit:]
