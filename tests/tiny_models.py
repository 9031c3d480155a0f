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


# ------------------------------------------------------------------ the architecture matrix (every model_type)

MATRIX_LAYERS = 4
MATRIX_VOCAB = 64
# Small sizes, passed to a config class only where its __init__ takes the key.
_MATRIX_SIZES = dict(
    vocab_size=MATRIX_VOCAB,
    hidden_size=32,
    n_embd=32,
    d_model=32,
    embedding_size=32,
    intermediate_size=64,
    n_inner=64,
    ffn_dim=64,
    num_hidden_layers=MATRIX_LAYERS,
    n_layer=MATRIX_LAYERS,
    n_layers=MATRIX_LAYERS,
    dim=32,
    hidden_dim=64,
    n_heads=2,
    kv_lora_rank=16,
    q_lora_rank=16,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    num_layers=MATRIX_LAYERS,
    num_attention_heads=2,
    n_head=2,
    num_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
    n_positions=64,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=32,
    num_experts=3,
    num_local_experts=3,
    n_routed_experts=3,
    num_experts_per_tok=2,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    sliding_window=4,
    layer_types=None,
)
# Per model_type extras that make the tiny model exercise what the family is known for.
MATRIX_EXTRAS: dict[str, dict] = {
    "qwen2": {"use_sliding_window": True, "max_window_layers": 2},
    "qwen2_moe": {"decoder_sparse_step": 2, "mlp_only_layers": [0]},
    "qwen3_moe": {"decoder_sparse_step": 1, "mlp_only_layers": [0]},
    "deepseek_v3": {"first_k_dense_replace": 1, "num_key_value_heads": 2},
    "deepseek_v2": {"first_k_dense_replace": 1, "num_key_value_heads": 2},
    "dots1": {"first_k_dense_replace": 1},
    "gemma2": {"head_dim": 16, "query_pre_attn_scalar": 16},
    "gemma3_text": {"sliding_window_pattern": 2, "query_pre_attn_scalar": 16},
    "mixtral": {"num_local_experts": 3},
    # its defaults (mamba_d_ssm 1024, 128 heads, state 256) took over 15 GB on the tiny matrix model
    "falcon_h1": {"mamba_d_ssm": 32, "mamba_n_heads": 4, "mamba_d_head": 8, "mamba_d_state": 8, "mamba_chunk_size": 16},
}
# The common families: the default test tier runs these (the slow tier and docs/architectures.md: every one).
MATRIX_COMMON = (
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "olmo2",
    "granite",
    "cohere",
    "stablelm",
    "gpt2",
    "gpt_neox",
    "falcon",
    "starcoder2",
    "dots1",
    "bert",
    "roberta",
)


def matrix_model_types() -> list[str]:
    """Every decoder-only and encoder-only candidate transformers ships: causal-LM and masked-LM model types."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    return sorted({*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, *MODEL_FOR_MASKED_LM_MAPPING_NAMES})


def tiny_config(model_type: str):
    """A small config of ``model_type`` from its config class (no download)."""
    import inspect

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    params = inspect.signature(config_class.__init__).parameters
    values = {key: value for key, value in _MATRIX_SIZES.items() if key in params}
    values.update(MATRIX_EXTRAS.get(model_type, {}))
    return config_class(**values)


def tiny_from_config(config, generative: bool, seed: int = 0) -> torch.nn.Module:
    """A random fp32 model of ``config`` in eval mode with every tensor perturbed (so every tensor matters)."""
    from transformers import AutoModel, AutoModelForCausalLM

    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if generative else AutoModel
    model = auto.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()
