"""Load a model + tokenizer for in-memory work (analysis, evaluation): Hub id, local directory or GGUF file.

MODEL is parsed by :class:`~surgery.io.model_ref.ModelRef`. Code shipped with a model (``auto_map`` in any
config, ``custom_generate/``, ...) runs only with ``trust_remote_code=True`` from the user, or for ``surgery
apply`` outputs whose modeling files are byte-identical to this package's (see
:func:`~surgery.io.model_code.remote_code_policy`); pickle weights load only with ``allow_pickle=True``; a
config whose layer count disagrees with the stored layer tensors is refused (:func:`check_stored_layers`, the
check ``surgery apply`` makes).
"""

from __future__ import annotations

from typing import Any

from surgery.architectures.specs import (
    ArchSpec,
    arch_for_config,
    check_model_type,
    layer_count,
    layer_count_key,
    source_config_values,
)
from surgery.errors import SurgeryError
from surgery.io.model_ref import ModelRef, first_line, remote_code_policy
from surgery.quiet import quiet_transformers


def source_model_type(config: dict[str, Any]) -> str | None:
    """The architecture of the stored layers: ``source_model_type`` for surgery checkpoints, else ``model_type``."""
    return config.get("source_model_type") or config.get("model_type")


def check_loadable(
    model: str | ModelRef, *, revision: str | None = None, trust_remote_code: bool = False, allow_pickle: bool = False
) -> tuple[ModelRef, dict[str, Any], bool]:
    """Everything about MODEL that can be refused before loading: path, config, architecture, code, pickles.

    Returns ``(ref, config, trust)`` where ``trust`` is the ``trust_remote_code`` value to pass to transformers.
    Commands call it first, so a refusal comes in well under a second, before torch is imported.
    """
    ref = model if isinstance(model, ModelRef) else ModelRef.parse(model, revision)
    config = ref.read_config()
    check_model_type(config)
    trust = remote_code_policy(ref, config, trust_remote_code)
    ref.check_pickle(allow_pickle)
    check_stored_layers(ref, config)
    return ref, config, trust


def check_stored_layers(ref: ModelRef, config: dict[str, Any], spec: ArchSpec | None = None) -> None:
    """The checks ``surgery apply`` makes on a source, for every command that reads a local checkpoint.

    The config's layer count (a surgery checkpoint: its ``surgery_stored_layers``) must be the number of layers
    stored in the safetensors weights (headers only, milliseconds), and ``vocab_size`` / hidden size must match
    the embeddings. With ``spec`` (after detection) the layers must also sit under the architecture's block
    list. Raises :class:`SurgeryError` naming the disagreement; a Hub id, GGUF file or pickle-only folder is
    checked by the loader itself.
    """
    if ref.kind != "directory":
        return
    from surgery.architectures.integrity import check_config_agrees, check_layer_numbering, group_layer_tensors
    from surgery.io.safetensors_stream import index_checkpoint
    from surgery.io.source import safetensors_files

    files = safetensors_files(ref.path)
    if not files:
        return
    records = index_checkpoint(files)
    values = source_config_values(config)
    key = layer_count_key(values)
    count = None
    if key in values:  # else the model's own key (trocr's decoder_layers): transformers' config knows it
        count = layer_count(values, ref.given)
        shown = "surgery_stored_layers" if config.get("model_type") == "surgery" else key
        check_layer_numbering(records, count, ref.given, shown)
    check_config_agrees(config, records)
    if spec is not None:
        if count is None:
            from surgery.architectures.specs import transformers_config

            count = transformers_config(config).num_hidden_layers
        group_layer_tensors(records, spec, count)


def check_has_tokenizer(ref: ModelRef) -> None:
    """Refuse a model folder without any tokenizer file (transformers fails inside with an ``AttributeError``)."""
    from surgery.io.source import TOKENIZER_FILES

    if ref.kind == "directory" and not any((ref.path / name).is_file() for name in TOKENIZER_FILES):
        raise SurgeryError(
            f"{ref.given} has no tokenizer files (none of tokenizer.json, tokenizer_config.json, vocab.txt, ...): "
            "copy the source model's tokenizer files into it"
        )


def load_model(
    model: str | ModelRef,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """The model alone, in eval mode (causal LM for generative sources, base model for encoders)."""
    return _load(model, dtype, revision, trust_remote_code, allow_pickle, with_tokenizer=False)[0]


def load_model_and_tokenizer(
    model: str | ModelRef,
    *,
    dtype: str = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """Return ``(model, tokenizer)`` in eval mode. Generative sources load as causal LMs, encoders as base models."""
    return _load(model, dtype, revision, trust_remote_code, allow_pickle, with_tokenizer=True)


def _load(model, dtype: str, revision, trust_remote_code: bool, allow_pickle: bool, *, with_tokenizer: bool):
    ref, config, trust = check_loadable(
        model, revision=revision, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle
    )
    spec = arch_for_config(config)
    check_stored_layers(ref, config, spec)
    if with_tokenizer:
        check_has_tokenizer(ref)
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    location, kwargs = ref.pretrained_args(allow_pickle=allow_pickle)
    auto = AutoModelForCausalLM if spec.generative else AutoModel
    tokenizer = None
    try:
        loaded = auto.from_pretrained(location, dtype=getattr(torch, dtype), trust_remote_code=trust, **kwargs).eval()
        kwargs.pop("use_safetensors", None)
        if with_tokenizer:
            with quiet_transformers(ref.kind == "gguf"):  # the GGUF "legacy tokenizer" notice, on every load
                tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust, **kwargs)
    except (OSError, ValueError) as exc:  # transformers' errors for an unusable model folder
        raise SurgeryError(f"cannot load {ref.given}: {first_line(exc)}") from exc
    return loaded, tokenizer
