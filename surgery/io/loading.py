"""Load a model + tokenizer for in-memory work (analysis, evaluation): Hub id, local directory or GGUF file.

Outputs of ``surgery apply`` are local directories; those using the surgery class need
``trust_remote_code=True``, which is passed for local directories only.
"""

from __future__ import annotations

import json
from pathlib import Path

from surgery.architectures import arch_for
from surgery.errors import SurgeryError


def load_model_and_tokenizer(model: str, *, dtype: str = "float32", revision: str | None = None):
    """Return ``(model, tokenizer)`` in eval mode. Generative sources load as causal LMs, encoders as base models."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype)
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise SurgeryError(f"model path not found: {model}")
        kwargs = {"gguf_file": path.name}
        location, generative = str(path.parent), True
    elif path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise SurgeryError(f"no config.json in model directory {path}")
        config = json.loads(config_path.read_text())
        model_type = config.get("source_model_type") or config.get("model_type")
        generative = arch_for(model_type).generative
        kwargs = {"trust_remote_code": True}
        location = str(path)
    else:
        if model.startswith((".", "/", "~")) or path.exists():
            raise SurgeryError(f"model path not found: {model}")
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(model, revision=revision)
        except OSError as exc:
            raise SurgeryError(f"model not found: {model!r} ({str(exc).splitlines()[0]})") from None
        generative = arch_for(config.model_type).generative
        kwargs = {"revision": revision}
        location = model
    auto = AutoModelForCausalLM if generative else AutoModel
    try:
        loaded = auto.from_pretrained(location, dtype=torch_dtype, **kwargs).eval()
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except OSError as exc:
        raise SurgeryError(f"cannot load {model}: {str(exc).splitlines()[0]}") from None
    return loaded, tokenizer
