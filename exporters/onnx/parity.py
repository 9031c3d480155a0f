"""Does the exported ONNX model compute what the PyTorch checkpoint computes?

Causal LMs: logits on a few prompts (max |ONNX Runtime - PyTorch|), and greedy generation of N tokens with the
KV cache, which must agree token for token (this exercises every cache input and output of the graph).
Encoders: the last hidden state (or the logits of a classification head). Prompts are real text when the
checkpoint has a tokenizer, otherwise fixed random token ids (seeded), which is what the tiny test models get.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROMPTS = (
    "The capital of France is",
    "Transformer layers can be skipped, repeated or run in parallel because",
    "def fibonacci(n):",
)


@dataclass
class ParityReport:
    """Measured agreement; ``passed`` compares it with the tolerance."""

    max_abs_diff: float
    max_abs_logit: float
    tolerance: float
    prompts: list[str]
    generation_checked: bool
    generated_tokens: int = 0
    generation_equal: bool = True
    first_mismatch: int | None = None
    passed: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prompt_ids(tokenizer, vocab_size: int) -> tuple[list[Any], list[str]]:
    """Token-id tensors (batch 1) for the parity prompts, and how they were made."""
    import torch

    if tokenizer is not None:
        return [tokenizer(text, return_tensors="pt").input_ids for text in PROMPTS], list(PROMPTS)
    generator = torch.Generator().manual_seed(0)
    lengths = (5, 12, 9)
    ids = [torch.randint(0, vocab_size, (1, n), generator=generator) for n in lengths]
    return ids, [f"random token ids (seed 0, length {n})" for n in lengths]


def _outputs(output: Any):
    if hasattr(output, "logits") and output.logits is not None:
        return output.logits
    return output.last_hidden_state


def check_parity(
    torch_model, ort_model, tokenizer, *, generative: bool, atol: float, rtol: float, new_tokens: int
) -> ParityReport:
    """Compare ``ort_model`` (an ``ORTModel*``) with ``torch_model`` on the same inputs; nothing is modified.

    The logits bound is ``max(atol, rtol * max |PyTorch logit|)``; greedy generation must agree exactly.
    """
    import torch

    vocab = int(getattr(torch_model.config, "vocab_size", 100))
    prompts, described = prompt_ids(tokenizer, vocab)
    device = next(torch_model.parameters()).device
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for ids in prompts:
            mask = torch.ones_like(ids)
            expected = _outputs(torch_model(input_ids=ids.to(device), attention_mask=mask.to(device))).float().cpu()
            got = _outputs(ort_model(input_ids=ids, attention_mask=mask)).float().cpu()
            worst = max(worst, (expected - got).abs().max().item())
            scale = max(scale, expected.abs().max().item())
    bound = max(atol, rtol * scale)
    report = ParityReport(worst, scale, bound, described, generation_checked=generative)
    if generative:
        ids = prompts[0]
        settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
        settings["pad_token_id"] = getattr(torch_model.generation_config, "eos_token_id", None) or 0
        if isinstance(settings["pad_token_id"], list):
            settings["pad_token_id"] = settings["pad_token_id"][0]
        with torch.no_grad():
            mask = torch.ones_like(ids)
            expected = torch_model.generate(ids.to(device), attention_mask=mask.to(device), **settings).cpu()
            got = ort_model.generate(ids, attention_mask=mask, **settings).cpu()
        report.generated_tokens = int(expected.shape[1] - ids.shape[1])
        report.generation_equal = expected.shape == got.shape and torch.equal(expected, got)
        if not report.generation_equal:
            length = min(expected.shape[1], got.shape[1])
            differ = (expected[0, :length] != got[0, :length]).nonzero()
            report.first_mismatch = int(differ[0].item()) - ids.shape[1] if len(differ) else length - ids.shape[1]
    report.passed = report.max_abs_diff <= bound and report.generation_equal
    return report
