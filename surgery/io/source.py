"""Locate a source model: a local directory, a ``.gguf`` file, or a Hugging Face Hub id.

Whatever the input, the result is a local directory holding ``config.json`` and safetensors weights, so
the materializer has one streaming path. GGUF files are dequantized through transformers' GGUF loader and
pickle-only checkpoints are converted (only with ``allow_pickle``) into a temporary safetensors copy.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.fileio import open_regular, sha256_file
from surgery.io.model_code import CODE_CONFIG_KEYS
from surgery.io.model_ref import MAX_JSON_BYTES, PICKLE_GLOBS, ModelRef, first_line
from surgery.io.safetensors_stream import read_index

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


@dataclass
class SourceModel:
    """A source model resolved to a local directory of config + safetensors weights."""

    given: str
    path: Path
    kind: str  # "directory", "gguf", "hub"
    weight_files: list[Path]
    provenance: dict = field(default_factory=dict)
    _tmp: tempfile.TemporaryDirectory | None = None

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def safetensors_files(directory: Path) -> list[Path]:
    """Weight files of a checkpoint directory, in index order when sharded (the index is validated)."""
    if (directory / "model.safetensors.index.json").is_file():
        return read_index(directory)
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    return sorted(directory.glob("*.safetensors"))


def _pickle_files(directory: Path) -> list[Path]:
    return [path for pattern in PICKLE_GLOBS for path in sorted(directory.glob(pattern))]


def _convert_pickle(directory: Path, files: list[Path], tmp: Path) -> list[Path]:
    """Convert pickle weights to safetensors (``torch.load(weights_only=True)``, one file at a time)."""
    import torch
    from safetensors.torch import save_file

    out = []
    for number, path in enumerate(files):
        state = torch.load(path, map_location="cpu", weights_only=True)
        seen: dict[int, str] = {}
        tensors = {}
        for name, tensor in state.items():
            key = tensor.untyped_storage().data_ptr()
            if key in seen:  # tied weights are stored once, as transformers does
                continue
            seen[key] = name
            tensors[name] = tensor.contiguous()
        target = tmp / f"converted-{number:05d}.safetensors"
        save_file(tensors, str(target), metadata={"format": "pt"})
        out.append(target)
        del state, tensors
    return out


def _from_directory(given: str, directory: Path, allow_pickle: bool) -> SourceModel:
    if not (directory / "config.json").is_file():
        raise SurgeryError(f"no config.json in model directory {directory}")
    files = safetensors_files(directory)
    provenance = {"source": str(directory.resolve()), "kind": "directory"}
    if files:
        return SourceModel(given, directory, "directory", files, provenance)
    pickles = _pickle_files(directory)
    if not pickles:
        raise SurgeryError(f"no weights (*.safetensors or pytorch_model*.bin) in {directory}")
    if not allow_pickle:
        raise SurgeryError(
            f"{directory} has only pickle weights ({pickles[0].name}); loading pickles can run arbitrary code. "
            "Pass --allow-pickle if you trust this model"
        )
    tmp = tempfile.TemporaryDirectory(prefix="surgery-pickle-")
    converted = _convert_pickle(directory, pickles, Path(tmp.name))
    provenance["converted_from_pickle"] = [p.name for p in pickles]
    return SourceModel(given, directory, "directory", converted, provenance, tmp)


def _drop_gguf_vocab_copy(directory: Path) -> None:
    """A tokenizer loaded from GGUF saves the GGUF file itself as ``tokenizer.model``; tokenizer.json suffices."""
    vocab = directory / "tokenizer.model"
    if vocab.is_file() and (directory / "tokenizer.json").is_file():
        with open(vocab, "rb") as handle:
            if handle.read(4) == b"GGUF":
                vocab.unlink()


def _gguf_tensors_to_safetensors(
    path: Path, config, out: Path, shard_bytes: int = 128 << 20, progress: bool = False
) -> None:
    """Dequantize GGUF tensors one at a time into safetensors shards (never the whole model in memory).

    Follows transformers' ``load_gguf_checkpoint`` tensor loop (name mapping, per-architecture processing
    such as the q/k permutation of Llama) but flushes a shard every ``shard_bytes``.
    """
    import numpy as np
    import torch
    from gguf import GGUFReader, dequantize
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
        load_gguf_checkpoint,
    )

    parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    mapping = get_gguf_hf_weights_map(skeleton)
    reader = GGUFReader(str(path))
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=parsed["config"])
    weight_map: dict[str, str] = {}
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_bytes
        name = f"gguf-{len(set(weight_map.values())):05d}.safetensors"
        save_file(pending, str(out / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(pending, name))
        pending, pending_bytes = {}, 0

    from tqdm.std import tqdm

    bar = tqdm(reader.tensors, desc="dequantizing GGUF", unit="tensor", file=sys.stderr, disable=not progress)
    for tensor in bar:
        result = processor.process(
            weights=dequantize(tensor.data, tensor.tensor_type),
            name=tensor.name,
            tensor_key_mapping=mapping,
            parsed_parameters=parsed,
        )
        if result.name not in mapping:
            continue
        pending[mapping[result.name]] = torch.from_numpy(np.array(result.weights, copy=True))
        pending_bytes += pending[mapping[result.name]].nbytes
        if pending_bytes >= shard_bytes:
            flush()
    if pending:
        flush()
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))


def _from_gguf(given: str, path: Path, progress: bool = False) -> SourceModel:
    """Dequantize a GGUF file into a temporary transformers checkpoint (weights, config, tokenizer)."""
    if progress:
        print(f"reading {path.name} ({path.stat().st_size / 1e6:,.0f} MB GGUF): loading transformers", file=sys.stderr)
    from transformers import AutoConfig, AutoTokenizer

    from surgery.quiet import quiet_transformers

    tmp = tempfile.TemporaryDirectory(prefix="surgery-gguf-")
    out = Path(tmp.name)
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        if not config.architectures:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
        _gguf_tensors_to_safetensors(path, config, out, progress=progress)
        config.dtype = "float32"
        config.save_pretrained(out)
        if progress:
            print("converting the GGUF tokenizer", file=sys.stderr)
        with quiet_transformers():  # the long "legacy tokenizer" notice is about transformers' own default
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer.save_pretrained(out)
        _drop_gguf_vocab_copy(out)
        _save_generation_config(path, config, out)
    except BaseException as exc:
        tmp.cleanup()
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM: clean up and go
            raise
        # transformers / gguf raise many types for unreadable GGUF files
        raise SurgeryError(f"cannot read GGUF file {path}: {first_line(exc)}") from exc
    provenance = {"source": str(path.resolve()), "kind": "gguf", "sha256": sha256_file(path), **_gguf_origin(path)}
    return SourceModel(given, out, "gguf", safetensors_files(out), provenance, tmp)


GGUF_REPO_KEYS = ("general.source.huggingface.repository", "general.base_model.0.repo_url", "general.source.url")


def _gguf_origin(path: Path) -> dict[str, str]:
    """What a GGUF file's metadata says about its origin: its name and, when recorded, the Hub repository."""
    from surgery.io.gguf_header import read_gguf_metadata

    fields = {key: value for key, value in read_gguf_metadata(path).items() if isinstance(value, str)}
    out = {}
    for key, name in (("general.name", "gguf_name"), ("general.organization", "gguf_organization")):
        if key in fields:
            out[name] = fields[key]
    for key in GGUF_REPO_KEYS:
        if key in fields:
            out["gguf_repo"] = fields[key].removeprefix("https://huggingface.co/")
            break
    return out


def _save_generation_config(path: Path, config, out: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(config).save_pretrained(out)


def _from_hub(given: str, revision: str | None, allow_pickle: bool) -> SourceModel:
    from surgery.io.hub import prepare_hub

    prepare_hub()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = _HUB_PATTERNS + (["*.bin"] if allow_pickle else [])
    try:
        local = snapshot_download(given, revision=revision, allow_patterns=patterns)
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise SurgeryError(
            f"model not found: {given!r} is not a local path and could not be fetched from the Hub "
            f"({str(exc).splitlines()[0]})"
        ) from None
    source = _from_directory(given, Path(local), allow_pickle)
    source.kind = "hub"
    source.provenance.update({"kind": "hub", "repo_id": given, "revision": revision or "main"})
    commit = Path(local).name
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        source.provenance["commit"] = commit
    return source


def resolve_source(
    model: str | ModelRef, *, revision: str | None = None, allow_pickle: bool = False, progress: bool = False
) -> SourceModel:
    """Resolve MODEL (directory, ``.gguf`` file, or Hub id) to a :class:`SourceModel`. Call ``cleanup()`` after."""
    ref = model if isinstance(model, ModelRef) else ModelRef.parse(model, revision)
    if ref.kind == "gguf":
        return _from_gguf(ref.given, ref.path, progress)
    if ref.kind == "directory":
        return _from_directory(ref.given, ref.path, allow_pickle)
    return _from_hub(ref.given, ref.revision, allow_pickle)


def copy_side_files(source: Path, out_dir: Path) -> list[str]:
    """Copy tokenizer files and the generation config; returns the names copied.

    No code comes along: ``.py`` files are never copied, so a JSON file's code references (``auto_map``, ...,
    :data:`~surgery.io.model_code.CODE_CONFIG_KEYS`) are dropped from the copy rather than left dangling.
    """
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (source / name).is_file():
            data = _json_with_code_keys(source / name) if name.endswith(".json") else None
            if data is None:
                shutil.copy2(source / name, out_dir / name)
            else:
                kept = {key: value for key, value in data.items() if key not in CODE_CONFIG_KEYS}
                (out_dir / name).write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            copied.append(name)
    return copied


def _json_with_code_keys(path: Path) -> dict | None:
    """The JSON object in ``path`` when it names code (an ``auto_map``, ...), else None (copied byte for byte)."""
    try:
        with open_regular(path, max_bytes=MAX_JSON_BYTES) as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and any(key in data for key in CODE_CONFIG_KEYS) else None
