"""Independent reference execution of layer plans, written for the tests.

Nothing here uses the production planner or model class: the expected executed sequences are written out
by hand for T = 8 layers (from the plan language's definition), and the forward pass calls the *source*
model's embedding, layers, final norm and head one by one, with an explicit additive causal (and sliding
window) mask. A tuple in a sequence is a parallel group: its members read the same input and the step's
output is their mean.
"""

from __future__ import annotations

import random

import torch

T = 8


def _shuffled(start: int, end: int, seed: int) -> list[int]:
    order = list(range(start, end + 1))
    random.Random(seed).shuffle(order)
    return order


# plan text -> executed sequence for a model with T = 8 layers
EXPECTED_SEQUENCES: dict[str, list] = {
    "identity": [0, 1, 2, 3, 4, 5, 6, 7],
    "skip:2-4": [0, 1, 5, 6, 7],
    "skip:0,skip:7": [1, 2, 3, 4, 5, 6],
    "reverse:2-5": [0, 1, 5, 4, 3, 2, 6, 7],
    "reverse:3-4": [0, 1, 2, 4, 3, 5, 6, 7],
    "shuffle:1-6@3": [0, *_shuffled(1, 6, 3), 7],
    "repeat:2-5@3": [0, 1, 3, 3, 3, 3, 6, 7],
    "repeat:2-5": [0, 1, 4, 4, 4, 4, 6, 7],  # default L = T // 2
    "loop:2-3x3": [0, 1, 2, 3, 2, 3, 2, 3, 4, 5, 6, 7],
    "parallel:2-5": [0, 1, (2, 3, 4, 5), 6, 7],
    "parallel:2-4x3": [0, 1, (2, 3, 4), (2, 3, 4), (2, 3, 4), 5, 6, 7],
    "reverse:1-2,parallel:4-5x2,skip:7": [0, 2, 1, 3, (4, 5), (4, 5), 6],
}

LLAMA_LIKE = ("llama", "llama-tied", "mistral", "qwen2", "qwen3")


def _members(step) -> tuple[int, ...]:
    return step if isinstance(step, tuple) else (step,)


def _hidden(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output[0]


def additive_mask(length: int, window: int | None, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, L, L) additive mask: query i sees key j iff j <= i (and i - j < window when windowed)."""
    query = torch.arange(length)[:, None]
    key = torch.arange(length)[None, :]
    allowed = key <= query
    if window is not None:
        allowed &= (query - key) < window
    mask = torch.zeros(length, length, dtype=dtype)
    mask[~allowed] = torch.finfo(dtype).min
    return mask[None, None]


def _layer_window(model, arch: str, layer: int) -> int | None:
    config = model.config
    if arch == "mistral":
        return config.sliding_window
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer] == "sliding_attention":
        return config.sliding_window
    return None


@torch.no_grad()
def reference_output(model, arch: str, input_ids: torch.Tensor, sequence: list, final: bool = True) -> torch.Tensor:
    """Logits (decoders) or last hidden state (BERT) of ``sequence`` run on the source ``model``.

    With ``final=False``: the residual stream after the last step, before any final norm / head.
    """
    length = input_ids.shape[1]
    positions = torch.arange(length)[None]
    if arch == "bert":
        hidden = model.embeddings(input_ids=input_ids)
        layers, run = model.encoder.layer, lambda layer, h, i: layer(h, attention_mask=None)
        finish = lambda h: h  # noqa: E731 - BERT has no final norm
    else:
        if arch in LLAMA_LIKE:
            base, embed, norm, head = model.model, model.model.embed_tokens, model.model.norm, model.lm_head
        elif arch == "gpt_neox":
            base, embed, norm, head = (
                model.gpt_neox,
                model.gpt_neox.embed_in,
                model.gpt_neox.final_layer_norm,
                model.embed_out,
            )
        else:
            raise ValueError(arch)
        hidden = embed(input_ids)
        rotary = base.rotary_emb(hidden, positions)
        layers = base.layers

        def run(layer, h, index):
            mask = additive_mask(length, _layer_window(model, arch, index), h.dtype)
            return layer(h, attention_mask=mask, position_ids=positions, position_embeddings=rotary)

        finish = lambda h: head(norm(h))  # noqa: E731
    for step in sequence:
        outputs = [_hidden(run(layers[i], hidden, i)) for i in _members(step)]
        hidden = sum(outputs) / len(outputs)
    return finish(hidden) if final else hidden
