"""Tiny random models of every supported architecture, built in the tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

NUM_LAYERS = 8
VOCAB = 96
_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=NUM_LAYERS,
    num_attention_heads=4,
    max_position_embeddings=128,
)

TINY = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=False)),
    "llama-tied": lambda: LlamaForCausalLM(LlamaConfig(**_COMMON, num_key_value_heads=2, tie_word_embeddings=True)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**_COMMON, num_key_value_heads=2, sliding_window=6)),
    "qwen2": lambda: Qwen2ForCausalLM(
        Qwen2Config(**_COMMON, num_key_value_heads=2, use_sliding_window=True, sliding_window=6, max_window_layers=6)
    ),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**_COMMON, num_key_value_heads=2, head_dim=8)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(**_COMMON, rotary_pct=0.5)),
    "bert": lambda: BertModel(BertConfig(**_COMMON)),
}
GENERATIVE = [name for name in TINY if name != "bert"]


def build_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of architecture ``name`` in eval mode, fp32, with non-trivial weights."""
    torch.manual_seed(seed)
    model = TINY[name]()
    with torch.no_grad():  # default init leaves norms at 1 and biases at 0; perturb so every tensor matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def save_tiny(name: str, directory: Path, seed: int = 0) -> Path:
    model = build_tiny(name, seed)
    model.save_pretrained(directory, safe_serialization=True)
    return directory
