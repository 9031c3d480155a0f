"""Average cosine similarity between the hidden states of every pair of layers (§3.1 Fig 3, A.3 Fig 14, A.4 Fig 15).

Hidden states
    Like ``transformers``' ``output_hidden_states``, over the *executed* sequence: a model (or plan) that
    executes T steps (a parallel block is one step) has T + 1 hidden-state entries:

    * entry 0: the embedding output, i.e. the input of the first step;
    * entry k (1 <= k < T): the residual stream after step k, raw (no normalization);
    * entry T: the output of the last step **with the model's final norm applied** (Llama, Mistral, Qwen:
      ``model.norm``; GPT-NeoX: ``final_layer_norm``), i.e. ``last_hidden_state``, what the LM head reads.
      BERT has no final norm (its blocks are post-LN), so there entry T is the last block's output.
      With ``final_norm=False`` entry T is the raw last step output too, so every entry is the residual stream.

    The entries are recorded at the step boundaries of the executed sequence (the same mechanism the
    surgery checkpoints use for ``output_hidden_states``), so a parallel block gives one entry (its mean),
    whatever the architecture. A model without a plan runs as the identity plan (bit-identical outputs).

Similarity
    For every real token t (attention mask 1; padding never counts) and every pair of entries (i, j),
    ``cos(h_i[t], h_j[t])``; ``matrix[i, j]`` is the mean over all real tokens of all texts (every token
    weighs the same, so longer texts weigh more). The diagonal is 1 (a zero vector would count 0).
    Optionally the tokens the tokenizer adds (BOS, CLS/SEP) are excluded as well.

Per-layer statistics (Fig 15's variance panel)
    ``variance[i]``: mean over tokens of the (population) variance of the D features of ``h_i[t]``;
    ``mean_norm[i]``: mean over tokens of the L2 norm ``||h_i[t]||``. Both are also given over the text tokens
    only (``*_text``: without BOS / CLS / SEP), because the BOS token of many decoders carries "massive
    activations" (norms hundreds of times the others) that dominate the all-token mean in the middle and late
    layers (SmolLM2: variance 1.3e4 with BOS vs 1e2-1e3 without); the cosine matrix is hardly affected.

All sums are accumulated in float64 across batches, so memory is O(n^2) plus one batch, and results do not
depend on the batch size beyond float32 forward-pass rounding. Texts are tokenized one by one (with the
tokenizer's special tokens, e.g. BOS), truncated to ``max_length``, sorted by length and right-padded: with
right padding the real tokens of a causal model see exactly what they would see unpadded.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from surgery.apply.inmemory import find_layer_list, planned
from surgery.architectures.specs import arch_for, arch_for_config
from surgery.errors import SurgeryError
from surgery.plan import ExecutionPlan, LayerPlan
from surgery.plan.resolve import Step

# float64 elements processed at once when accumulating (128 MiB); bounds memory for large models/batches
_CHUNK_ELEMENTS = 1 << 24
CLASS_NAMES = ("beginning", "middle", "end")
CLASS_RULE = (
    "contiguous kernel k-means: the hidden-state entries 0..T are split into {k} contiguous blocks maximizing "
    "sum over blocks of (sum of the block's similarities) / (block size); since matrix[i, j] is the inner product "
    "of the per-entry vectors of unit token states, this is exact k-means on those vectors with contiguous "
    "clusters, solved exactly by dynamic programming"
)


@dataclass
class LayerClasses:
    """A contiguous split of the hidden-state entries into classes (see :func:`suggest_layer_classes`)."""

    bounds: list[tuple[int, int]]  # inclusive (first, last) entry of each class
    names: list[str]
    within: list[float]  # mean similarity inside each class (diagonal included)
    rule: str

    def to_dict(self, labels: Sequence[str] | None = None) -> dict:
        classes = []
        for name, (first, last), within in zip(self.names, self.bounds, self.within):
            entry = {"name": name, "entries": [first, last], "mean_similarity": round(within, 6)}
            if labels is not None:
                entry["labels"] = list(labels[first : last + 1])
            classes.append(entry)
        return {"rule": self.rule, "classes": classes}

    def describe(self, labels: Sequence[str] | None = None) -> str:
        """One line in one numbering: hidden-state entries, or (with ``labels``) the layers after which they are.

        With labels: ``beginning: emb; middle: layers 0..22; end: layers 23..29`` (entry 0 is the embeddings).
        """
        parts = []
        for name, (first, last) in zip(self.names, self.bounds):
            if labels is None:
                parts.append(f"{name}: entries {first}" if first == last else f"{name}: entries {first}-{last}")
                continue
            shown = [labels[index] for index in range(first, last + 1)]
            layers = [label for label in shown if label != "emb"]
            text = "emb" if "emb" in shown else ""
            if layers:
                span = layers[0] if len(layers) == 1 else f"{layers[0]}..{layers[-1]}"  # in executed order
                text += (" + " if text else "") + f"layer{'s' if len(layers) > 1 else ''} {span}"
            parts.append(f"{name}: {text}")
        return "; ".join(parts)


@dataclass
class SimilarityResult:
    """Average cosine similarity matrix over hidden-state entries, plus per-entry statistics."""

    matrix: np.ndarray  # (n, n) float64, n = executed steps + 1
    variance: np.ndarray  # (n,) over the counted tokens
    mean_norm: np.ndarray  # (n,)
    variance_text: np.ndarray  # (n,) over the counted tokens that are not special tokens (BOS, CLS, SEP)
    mean_norm_text: np.ndarray  # (n,)
    steps: list[tuple[int, ...]]  # source layer(s) of each executed step
    num_texts: int
    num_tokens: int
    num_special_tokens: int  # counted tokens that are special tokens (0 with exclude_special_tokens)
    num_truncated: int
    max_length: int
    final_norm_applied: bool  # whether the last entry is after a final norm (False: BERT, or final_norm=False)
    exclude_special_tokens: bool = False
    plan: str | None = None  # canonical --plan, if any
    executed: str = ""  # compact executed sequence of the model as run

    @property
    def size(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def labels(self) -> list[str]:
        """Entry labels: ``emb``, then each step's source layer (``[a b]`` for a parallel block)."""
        return ["emb"] + [str(Step(step)) for step in self.steps]

    def to_dict(self) -> dict:
        return {
            "entries": self.size,
            "labels": self.labels,
            "steps": [list(step) for step in self.steps],
            "executed": self.executed,
            "convention": (
                "entry 0 = embedding output; entry k = hidden state after executed step k; "
                + (
                    "the last entry has the model's final norm applied (transformers' last_hidden_state)"
                    if self.final_norm_applied
                    else "no final norm is applied to any entry"
                )
            ),
            "final_norm_applied": self.final_norm_applied,
            "exclude_special_tokens": self.exclude_special_tokens,
            "texts": self.num_texts,
            "tokens": self.num_tokens,
            "special_tokens": self.num_special_tokens,
            "truncated_texts": self.num_truncated,
            "max_length": self.max_length,
            "variance": _floats(self.variance),
            "mean_norm": _floats(self.mean_norm),
            "variance_text_tokens": _floats(self.variance_text),
            "mean_norm_text_tokens": _floats(self.mean_norm_text),
        }


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(value) else float(value) for value in values]


class _Sums:
    """float64 running sums over tokens: cosine Gram matrix; norms and per-token feature variances (all
    counted tokens, and the text tokens among them)."""

    def __init__(self) -> None:
        self.cos: torch.Tensor | None = None
        self.stats: torch.Tensor | None = None  # rows: norm, variance, norm (text tokens), variance (text tokens)
        self.count = 0
        self.text_count = 0

    def add(self, states: Sequence[torch.Tensor], counted: torch.Tensor, special: torch.Tensor) -> None:
        hidden = torch.stack([state[counted] for state in states])  # (n, tokens, D): counted tokens only
        text = ~special[counted]  # (tokens,)
        n, tokens, width = hidden.shape
        if self.cos is None:
            self.cos = torch.zeros(n, n, dtype=torch.float64, device=hidden.device)
            self.stats = torch.zeros(4, n, dtype=torch.float64, device=hidden.device)
        chunk = max(1, _CHUNK_ELEMENTS // (n * width))
        for part, is_text in zip(hidden.split(chunk, dim=1), text.split(chunk)):
            x = part.to(torch.float64)
            norms = torch.linalg.vector_norm(x, dim=-1)  # (n, c)
            variances = x.var(dim=-1, unbiased=False)  # (n, c)
            self.stats[0] += norms.sum(dim=1)
            self.stats[1] += variances.sum(dim=1)
            self.stats[2] += norms[:, is_text].sum(dim=1)
            self.stats[3] += variances[:, is_text].sum(dim=1)
            unit = (x / norms.clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)).reshape(n, -1)
            self.cos += unit @ unit.T  # sum over tokens of cos(h_i[t], h_j[t])
        self.count += tokens
        self.text_count += int(text.sum())

    def mean(self, row: int, text: bool = False) -> np.ndarray:
        count = self.text_count if text else self.count
        return (self.stats[row] / count).cpu().numpy() if count else np.full(self.stats.shape[1], np.nan)


def _backbone(model: nn.Module) -> nn.Module:
    """The bare transformer (``LlamaModel``, ``BertModel``, ...) that returns ``last_hidden_state``; no LM head."""
    module = model
    while getattr(module, "base_model", module) is not module:  # surgery class: model.inner.model
        module = module.base_model
    return module


def _execution_list(model: nn.Module) -> nn.Module | None:
    """The block list of a surgery-class checkpoint (its class comes from the checkpoint: duck-typed)."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and hasattr(module, "recording") and hasattr(module, "steps"):
            return module
    return None


@contextmanager
def _executed(
    model: nn.Module, plan: str | LayerPlan | ExecutionPlan | None
) -> Iterator[tuple[nn.Module, list[tuple[int, ...]], ExecutionPlan | None]]:
    """Yield (block list that records step boundaries, source layers per step, resolved --plan)."""
    existing = _execution_list(model)
    if existing is not None:  # a surgery-class checkpoint: it already runs its own executed sequence
        if plan is not None:
            raise SurgeryError(
                "this model is a surgery checkpoint that already carries a plan; "
                "give the source model with --plan, or drop --plan"
            )
        config = model.config
        sources = list(getattr(config, "surgery_source_layers", None) or range(len(list(existing.children()))))
        yield existing, [tuple(sources[index] for index in step) for step in config.surgery_steps], None
        return
    num_layers = model.config.num_hidden_layers
    identity = ExecutionPlan(num_layers, tuple(Step((index,)) for index in range(num_layers)))
    with planned(model, identity if plan is None else plan) as execution:
        _, _, layers = find_layer_list(model, arch_for(model.config.model_type).layer_list)
        yield layers, [step.layers for step in execution.steps], (None if plan is None else execution)


def _tokenize(tokenizer, texts: Sequence[str], max_length: int, exclude_special: bool):
    """(token ids, special-token flags) per text, truncated to ``max_length``; and how many were truncated."""
    from surgery.text_limits import clip_text

    encoded, truncated = [], 0
    for text in texts:
        clipped = clip_text(text, max_length, keep="start")  # a huge text is never tokenized whole
        item = tokenizer(clipped, return_special_tokens_mask=True)
        if len(item["input_ids"]) > max_length or clipped is not text:
            truncated += 1
            text = clipped
            item = tokenizer(text, return_special_tokens_mask=True, truncation=True, max_length=max_length)
        ids = list(item["input_ids"])
        if not ids:
            continue
        special = item.get("special_tokens_mask")
        if exclude_special and special is None:
            raise SurgeryError("this tokenizer cannot report its special tokens; drop --exclude-special-tokens")
        encoded.append((ids, [bool(flag) for flag in (special or [0] * len(ids))]))
    return encoded, truncated


def _describe(steps: Sequence[Sequence[int]]) -> str:
    """Compact executed sequence (``0-12 20-29``), as ``surgery plan show`` prints it."""
    return ExecutionPlan(0, tuple(Step(tuple(step)) for step in steps)).describe()


@torch.no_grad()
def compute_similarity(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    plan: str | LayerPlan | ExecutionPlan | None = None,
    batch_size: int = 8,
    max_length: int = 512,
    final_norm: bool = True,
    exclude_special_tokens: bool = False,
    source_steps: Sequence[Sequence[int]] | None = None,
    progress: bool = False,
) -> SimilarityResult:
    """Average per-token cosine similarity between every pair of hidden-state entries (module docstring).

    ``plan`` (text, YAML path, :class:`LayerPlan` or :class:`ExecutionPlan`) is applied in memory; the
    matrix then covers the executed sequence (steps + 1 entries). ``source_steps`` only relabels the steps of
    a checkpoint written in the source layout (from its ``surgery.json``). ``progress`` shows a tqdm bar on
    stderr. Deterministic: same inputs, same result.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise SurgeryError(f"batch_size must be >= 1 (got {batch_size})")
    if max_length < 1:
        raise SurgeryError(f"max_length must be >= 1 (got {max_length})")
    if not texts:
        raise SurgeryError("no texts to analyse")
    limit = getattr(model.config, "max_position_embeddings", None)
    max_length = min(max_length, limit) if isinstance(limit, int) and limit > 0 else max_length
    encoded, truncated = _tokenize(tokenizer, texts, max_length, exclude_special_tokens)
    order = sorted(range(len(encoded)), key=lambda index: -len(encoded[index][0]))  # stable: deterministic
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # never attended nor counted
    device = next(model.parameters()).device
    backbone = _backbone(model)
    extra_kwargs = {"use_cache": False} if "use_cache" in inspect.signature(backbone.forward).parameters else {}
    sums = _Sums()
    normed = arch_for_config(model.config.to_dict()).final_norm is not None  # BERT (post-LN) has none
    with _executed(model, plan) as (layers, steps, execution):
        for batch in tqdm(batches, desc="similarity", unit="batch", file=sys.stderr, disable=not progress):
            width = len(encoded[batch[0]][0])
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            special = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, index in enumerate(batch):
                tokens, flags = encoded[index]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                attention[row, : len(tokens)] = 1
                special[row, : len(tokens)] = torch.tensor(flags)
            counted = attention.bool() & ~special if exclude_special_tokens else attention.bool()
            with layers.recording(True):
                out = backbone(input_ids=ids.to(device), attention_mask=attention.to(device), **extra_kwargs)
                states = list(layers.recorded)
            if len(states) != len(steps) + 1:
                raise RuntimeError(f"recorded {len(states)} hidden states for {len(steps)} steps")
            last = out[0] if isinstance(out, tuple) else out.last_hidden_state
            if final_norm:
                states[-1] = last
            sums.add(states, counted.to(device), special.to(device))
    if sums.count == 0:
        raise SurgeryError("no tokens to average over (every token was excluded)")
    matrix = (sums.cos / sums.count).cpu().numpy()
    matrix = (matrix + matrix.T) / 2  # exactly symmetric
    if execution is None and source_steps is not None and len(source_steps) == len(steps):
        steps = [tuple(step) for step in source_steps]
    return SimilarityResult(
        matrix=matrix,
        variance=sums.mean(1),
        mean_norm=sums.mean(0),
        variance_text=sums.mean(3, text=True),
        mean_norm_text=sums.mean(2, text=True),
        steps=[tuple(step) for step in steps],
        num_texts=len(encoded),
        num_tokens=sums.count,
        num_special_tokens=sums.count - sums.text_count,
        num_truncated=truncated,
        max_length=max_length,
        final_norm_applied=bool(final_norm and normed),
        exclude_special_tokens=exclude_special_tokens,
        plan=None if plan is None else _canonical(plan),
        executed=_describe(steps),
    )


def _canonical(plan: str | LayerPlan | ExecutionPlan) -> str:
    if isinstance(plan, LayerPlan):
        return plan.canonical
    if isinstance(plan, ExecutionPlan):
        return plan.describe()
    from surgery.plan import load_plan

    return load_plan(plan).canonical


def suggest_layer_classes(matrix: np.ndarray, num_classes: int = 3) -> LayerClasses:
    """Split the entries 0..n-1 into ``num_classes`` contiguous classes of mutually similar hidden states.

    Rule (contiguous kernel k-means): choose boundaries 0 = b_0 < b_1 < ... < b_k = n maximizing
    ``sum_c S(B_c) / |B_c|`` where ``S(B)`` is the sum of ``matrix`` over the block ``B x B`` (diagonal
    included). Because ``matrix[i, j]`` is the mean over tokens of <u_i(t), u_j(t)> (unit token vectors),
    it is the Gram matrix of the vectors phi_i = (u_i(t))_t / sqrt(N), and the objective equals
    ``sum_i |phi_i|^2 - (k-means within-class scatter)``: this is k-means on phi with contiguous clusters,
    solved exactly by dynamic programming in O(k n^2). Ties go to the earliest boundaries. With k = 3 the
    classes are named beginning / middle / end (paper §3.1).
    """
    m = np.asarray(matrix, dtype=np.float64)
    n = m.shape[0]
    if m.ndim != 2 or m.shape[1] != n:
        raise SurgeryError(f"similarity matrix must be square, got shape {m.shape}")
    if not 1 <= num_classes <= n:
        raise SurgeryError(f"cannot split {n} entries into {num_classes} classes")
    prefix = np.zeros((n + 1, n + 1))
    prefix[1:, 1:] = m.cumsum(axis=0).cumsum(axis=1)

    def block(a: int, b: int) -> float:  # sum of m[a:b, a:b]
        return prefix[b, b] - prefix[a, b] - prefix[b, a] + prefix[a, a]

    best = np.full((num_classes + 1, n + 1), -np.inf)
    best[0, 0] = 0.0
    back = np.zeros((num_classes + 1, n + 1), dtype=int)
    for k in range(1, num_classes + 1):
        for end in range(k, n + 1):
            for start in range(k - 1, end):
                if best[k - 1, start] == -np.inf:
                    continue
                value = best[k - 1, start] + block(start, end) / (end - start)
                if value > best[k, end] + 1e-12:
                    best[k, end], back[k, end] = value, start
    cuts = [n]
    for k in range(num_classes, 0, -1):
        cuts.append(back[k, cuts[-1]])
    cuts.reverse()
    bounds = [(int(cuts[index]), int(cuts[index + 1]) - 1) for index in range(num_classes)]
    within = [block(first, last + 1) / (last + 1 - first) ** 2 for first, last in bounds]
    names = list(CLASS_NAMES) if num_classes == 3 else [f"class {index + 1}" for index in range(num_classes)]
    return LayerClasses(
        bounds=bounds, names=names, within=[float(w) for w in within], rule=CLASS_RULE.format(k=num_classes)
    )
