"""Consent for code that a model folder brings: every route by which transformers would import Python from it.

transformers imports code shipped with a model in more ways than ``auto_map`` in ``config.json``; the routes
checked here (transformers 4.57, and 5.x where noted):

* ``auto_map`` in ``config.json`` and in every other config file an Auto class reads (``tokenizer_config.json``,
  ``processor_config.json``, ``preprocessor_config.json``, ``video_preprocessor_config.json``,
  ``audio_tokenizer_config.json``, ``generation_config.json``), including ``repo--module.Class`` references
  to code in another Hub repository;
* ``custom_generate/generate.py``: 4.57's ``from_pretrained`` imports it from a *local* folder whatever
  ``trust_remote_code`` says (``load_custom_generate`` only asks for consent for Hub repositories); 5.x imports
  it whenever ``trust_remote_code=True``, which surgery passes for its own verified checkpoints;
* ``custom_pipelines`` in ``config.json`` (``pipeline()`` imports their ``impl``);
* ``attn_implementation`` naming a Hub kernel repository (``owner/name``), which 5.x downloads and runs.

A folder holding ``adapter_config.json`` is refused outright: with peft installed, ``from_pretrained`` loads
the base model that file names (any folder or Hub repository, unchecked, with this folder's consent) instead
of this folder's weights.

:func:`remote_code_policy` is the one decision every command makes (through
:func:`surgery.architectures.loading.check_loadable`): ``True`` with the user's ``--trust-remote-code`` or for a surgery
checkpoint whose only code is this package's modeling files (byte-identical, sha256), ``False`` when the
folder brings no code, and a one-line refusal naming the file and the flag otherwise.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surgery.errors import SurgeryError
from surgery.fileio import open_regular

if TYPE_CHECKING:
    from surgery.io.model_ref import ModelRef

OUR_AUTO_MAP_VALUES = {
    "configuration_surgery.SurgeryConfig",
    "modeling_surgery.SurgeryForCausalLM",
    "modeling_surgery.SurgeryModel",
}
# Config files whose ``auto_map`` an Auto class follows (transformers' CONFIG_NAME, TOKENIZER_CONFIG_FILE,
# PROCESSOR_NAME, FEATURE_EXTRACTOR_NAME / IMAGE_PROCESSOR_NAME, VIDEO_PROCESSOR_NAME, AUDIO_TOKENIZER_NAME, ...).
CODE_CONFIG_FILES = (
    "config.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "audio_tokenizer_config.json",
    "generation_config.json",
)
# config.json keys that make transformers import or download code: never carried into an output checkpoint.
CODE_CONFIG_KEYS = (
    "auto_map",
    "custom_pipelines",
    "attn_implementation",
    "_attn_implementation",
    "experts_implementation",
)
HUB_CODE_CONFIG_FILES = ("config.json", "tokenizer_config.json")  # what surgery's loaders read from the Hub
CUSTOM_GENERATE = "custom_generate"
ADAPTER_CONFIG = "adapter_config.json"
_HUB_KERNEL = re.compile(r"^[^/:|\s]+/[^/:|\s]+")  # transformers' is_kernel(): "owner/name[@rev][:kernel]"
_MAX_CONFIG_BYTES = 64 << 20


def _folder(ref: ModelRef) -> Path | None:
    """The local folder transformers reads besides the weights (a GGUF file's parent), None for a Hub id."""
    if ref.kind == "gguf":
        return ref.path.parent
    return ref.path if ref.kind == "directory" else None


def _side_file(ref: ModelRef, name: str) -> Path | None:
    """File ``name`` next to the model (downloaded for a Hub id), None when absent."""
    folder = _folder(ref)
    if folder is None:
        return ref.local_file(name)
    candidate = folder / name
    return candidate if candidate.is_file() else None


def _read_json(path: Path) -> object:
    try:
        with open_regular(path, max_bytes=_MAX_CONFIG_BYTES) as handle:
            return json.loads(handle.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None  # unreadable: transformers fails on it too, without running anything


def _class_refs(data: object) -> list[str]:
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    if not auto_map:
        return []
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    refs: list[str] = []
    for value in values:
        refs.extend(value if isinstance(value, (list, tuple)) else [value])
    return [str(entry) for entry in refs if entry is not None]


def auto_map_entries(ref: ModelRef, config: dict[str, Any]) -> dict[str, list[str]]:
    """``{file name: class references}`` of every ``auto_map`` transformers could follow for MODEL."""
    names = HUB_CODE_CONFIG_FILES if ref.kind == "hub" else CODE_CONFIG_FILES
    found: dict[str, list[str]] = {}
    for name in names:
        if name == "config.json":
            data: object = config  # for a GGUF file, its metadata: transformers does not read config.json
        else:
            path = _side_file(ref, name)
            data = _read_json(path) if path is not None else None
        refs = _class_refs(data)
        if refs:
            found[name] = refs
    return found


def _our_files_match(ref: ModelRef) -> bool:
    from surgery.fileio import sha256_file
    from surgery.modeling import MODELING_FILES

    for ours in MODELING_FILES:
        theirs = _side_file(ref, ours.name)
        try:
            if theirs is None or sha256_file(theirs) != sha256_file(ours):
                return False
        except OSError:
            return False
    return True


def _custom_generate(ref: ModelRef) -> str | None:
    """The ``custom_generate`` file or folder MODEL has, as it would be named in a message."""
    folder = _folder(ref)
    if folder is None:
        return f"{CUSTOM_GENERATE}/generate.py" if ref.local_file(f"{CUSTOM_GENERATE}/generate.py") else None
    entry = folder / CUSTOM_GENERATE
    if not entry.exists() and not entry.is_symlink():
        return None
    return f"{CUSTOM_GENERATE}/generate.py" if (entry / "generate.py").exists() else f"{CUSTOM_GENERATE}/"


def hub_kernels(config: dict[str, Any]) -> list[str]:
    """``attn_implementation`` / ``experts_implementation`` values naming a Hub kernel repository."""
    found = []
    for key in ("attn_implementation", "_attn_implementation", "experts_implementation"):
        value = config.get(key)
        values = value.values() if isinstance(value, dict) else [value]
        found += [f"{key}: {item}" for item in values if isinstance(item, str) and _HUB_KERNEL.match(item)]
    return found


def code_routes(ref: ModelRef, config: dict[str, Any]) -> tuple[list[str], bool]:
    """``(foreign, ours)``: each way MODEL would make transformers run code that is not surgery's own
    (one phrase naming the file), and whether it ships surgery's modeling files, verified byte for byte."""
    foreign: list[str] = []
    ours = False
    for name, refs in auto_map_entries(ref, config).items():
        named = f"auto_map in {name}: {', '.join(sorted(set(refs)))}"
        if name == "config.json" and set(refs) <= OUR_AUTO_MAP_VALUES:
            if _our_files_match(ref):
                ours = True
                continue
            named += ", whose files differ from surgery's own"
        foreign.append(named)
    custom = _custom_generate(ref)
    if custom is not None:
        foreign.append(f"{custom}, a replacement for generate()")
    pipelines = config.get("custom_pipelines")
    if pipelines:
        foreign.append(f"custom_pipelines in config.json: {', '.join(sorted(map(str, pipelines)))[:200]}")
    foreign += [f"{entry} in config.json (a Hub kernel, downloaded and run)" for entry in hub_kernels(config)]
    return foreign, ours


def check_no_adapter(ref: ModelRef) -> None:
    """Refuse MODEL when it holds ``adapter_config.json``: transformers would load another model in its place."""
    path = _side_file(ref, ADAPTER_CONFIG)
    if path is None:
        return
    data = _read_json(path)
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    where = ref.given if ref.kind != "gguf" else f"{ref.path.parent} (next to {ref.path.name})"
    raise SurgeryError(
        f"{where} holds {ADAPTER_CONFIG}: transformers would load the base model it names ({base!r}) with that "
        "adapter instead of these weights; merge the adapter into a full checkpoint (or remove the file) first"
    )


def ships_our_code(ref: ModelRef, config: dict[str, Any]) -> bool:
    """True when the only code MODEL ships is this package's modeling files, byte for byte (sha256).

    ``surgery.json`` is not evidence (anyone can write it): the files that ``auto_map`` makes transformers
    import are hashed and compared with the ones :mod:`surgery.modeling` writes into checkpoints, and any other
    code route (a ``custom_generate/`` folder, another config's ``auto_map``, ...) makes it False.
    """
    foreign, ours = code_routes(ref, config)
    return ours and not foreign


def remote_code_policy(ref: ModelRef, config: dict[str, Any], trust_remote_code: bool) -> bool:
    """The ``trust_remote_code`` value to pass to transformers for MODEL.

    ``True`` with the user's explicit ``--trust-remote-code``, or for a checkpoint whose only code is this
    package's own modeling files (verified by hash). A model that brings any other code (:func:`code_routes`)
    is refused with one line naming it; a model that brings none gets ``False``. A folder holding
    ``adapter_config.json`` is refused in every case (:func:`check_no_adapter`).
    """
    check_no_adapter(ref)
    if trust_remote_code:
        return True
    foreign, ours = code_routes(ref, config)
    if foreign:
        raise SurgeryError(
            f"{ref.given} ships its own Python code ({'; '.join(foreign)}) that transformers would import and run; "
            "pass --trust-remote-code if you have read it and trust it"
        )
    return ours
