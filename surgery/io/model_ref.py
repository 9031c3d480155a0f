"""One parser for every MODEL argument: a Hub id, a local checkpoint directory or a ``.gguf`` file.

:meth:`ModelRef.parse` decides what MODEL names without touching the network; every command (``apply``,
``plan show``, ``similarity``, ``eval``, ``glue``, ...) goes through it, so the rules are the same everywhere:

* ends with ``.gguf``: a GGUF file, which must exist;
* an existing directory: a checkpoint, which must hold ``config.json``;
* ``smollm2-demo`` / ``minilm-demo``: the real models installed by ``make install`` (:mod:`~surgery.io.demo_models`);
* another existing path (a file): refused;
* looks like a path (starts with ``.``, ``/``, ``~``, or its first folder exists here: ``out/skpi``) or is not
  a valid Hub id: "model path not found", with "did you mean ...?" from its folder (:func:`did_you_mean`);
* otherwise a Hub id (``owner/name``), with ``--revision`` to pin a branch, tag or commit.

It also owns the consent rules for running code from a model folder (:func:`remote_code_policy`, implemented
in :mod:`surgery.io.model_code`) and for pickle weights (:meth:`ModelRef.check_pickle`), and refuses a model
folder holding a FIFO, device or socket (:func:`check_regular_files`), so no command can forget them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from surgery.errors import SurgeryError
from surgery.fileio import open_regular, special_file_kind
from surgery.io.hub import prepare_hub, tool_went_offline
from surgery.io.model_code import OUR_AUTO_MAP_VALUES, remote_code_policy, ships_our_code

__all__ = [
    "OUR_AUTO_MAP_VALUES",
    "ModelRef",
    "check_regular_files",
    "first_line",
    "num_layers_of",
    "read_json_object",
    "remote_code_policy",
    "ships_our_code",
]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
PICKLE_GLOBS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_JSON_BYTES = 64 << 20  # config-sized JSON files; a bigger one is refused rather than read into memory
# Files transformers reads next to a GGUF file (the tokenizer's and generation configs, an adapter, custom code).
GGUF_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "adapter_config.json",
    "custom_generate",
)


@dataclass(frozen=True)
class ModelRef:
    """What a MODEL argument names: ``kind`` is ``"directory"``, ``"gguf"`` or ``"hub"``."""

    given: str
    kind: str
    path: Path | None = None  # the directory or the .gguf file (local kinds)
    repo_id: str | None = None  # hub kind
    revision: str | None = None

    @classmethod
    def parse(cls, text: str, revision: str | None = None) -> ModelRef:
        """Classify ``text``; raises :class:`SurgeryError` for a missing path. No network access."""
        if not isinstance(text, str) or not text.strip():
            raise SurgeryError("MODEL is empty; give a Hub id, a model directory or a .gguf file")
        from surgery.io.demo_models import DEMO_MODELS, demo_model_path

        if text in DEMO_MODELS and not Path(text).exists():
            return replace(cls.parse(str(demo_model_path(text))), given=text)
        path = Path(text).expanduser()
        try:
            is_dir, exists = path.is_dir(), path.exists()
        except OSError as exc:  # a name too long, a symlink loop, ...
            raise SurgeryError(f"cannot use model path {text!r}: {exc.strerror or exc}") from None
        if text.endswith(".gguf"):
            if not path.is_file():
                if exists:
                    check_regular_files(path.parent, [path.name])
                raise SurgeryError(f"model path not found: {text}")
            check_regular_files(path.parent, GGUF_SIDE_FILES)  # transformers reads these next to the file
            return cls(text, "gguf", path=path)
        if is_dir:
            check_regular_files(path)
            if not (path / "config.json").is_file():
                raise SurgeryError(f"no config.json in model directory {path}")
            return cls(text, "directory", path=path)
        if exists:
            raise SurgeryError(f"not a model directory or .gguf file: {text}")
        if text.startswith((".", "/", "~")) or not HUB_ID.match(text) or _first_component_exists(text):
            raise SurgeryError(f"model path not found: {text}{did_you_mean(text)}")
        return cls(text, "hub", repo_id=text, revision=revision)

    @property
    def name(self) -> str:
        """A short display name: the directory's or file's name, or the Hub id."""
        if self.kind == "gguf":
            return self.path.stem
        if self.kind == "directory":
            return self.path.resolve().name
        return self.given

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict (GGUF: ``model_type`` and ``num_hidden_layers`` from its metadata).

        Reads no weights; a Hub id downloads ``config.json`` only.
        """
        if self.kind == "gguf":
            return _gguf_config(self.path)
        if self.kind == "directory":
            return read_json_object(self.path / "config.json", "config.json")
        return read_json_object(Path(self.hub_file("config.json")), f"config.json of {self.repo_id}")

    def hub_file(self, name: str) -> str:
        """Download one file of a Hub repository (the local cache path); a clear error when unreachable."""
        prepare_hub()
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download(self.repo_id, name, revision=self.revision)
        except Exception as exc:  # network / auth / missing repo or file: all mean "cannot use this MODEL"
            if tool_went_offline():
                raise SurgeryError(
                    f"model not found: {self.given!r} is not in the local cache and the Hugging Face Hub is not "
                    f"reachable from this machine{did_you_mean(self.given)}"
                ) from None
            raise SurgeryError(
                f"model not found: {self.given!r} ({first_line(exc)}){did_you_mean(self.given)}"
            ) from None

    def local_file(self, name: str) -> Path | None:
        """Path of file ``name`` of the checkpoint (downloaded for a Hub id), or None when it has none."""
        if self.kind == "directory":
            candidate = self.path / name
            return candidate if candidate.is_file() else None
        if self.kind == "hub":
            prepare_hub()
            from huggingface_hub import hf_hub_download

            try:
                return Path(hf_hub_download(self.repo_id, name, revision=self.revision))
            except Exception:  # noqa: BLE001 - absent file or unreachable Hub: treated as "no such file"
                return None
        return None

    def check_pickle(self, allow_pickle: bool) -> None:
        """Refuse a local checkpoint with only pickle weights unless ``allow_pickle``."""
        if self.kind != "directory" or allow_pickle:
            return
        if any(self.path.glob("*.safetensors")):
            return
        pickles = [p for pattern in PICKLE_GLOBS for p in sorted(self.path.glob(pattern))]
        if pickles:
            raise SurgeryError(
                f"{self.path} has only pickle weights ({pickles[0].name}); loading pickles can run arbitrary "
                "code. Pass --allow-pickle if you trust this model"
            )

    def pretrained_args(self, *, allow_pickle: bool = False) -> tuple[str, dict[str, Any]]:
        """``(location, kwargs)`` for transformers' ``from_pretrained`` (GGUF file, revision, safetensors only)."""
        if self.kind == "gguf":
            return str(self.path.parent), {"gguf_file": self.path.name}
        kwargs: dict[str, Any] = {} if allow_pickle else {"use_safetensors": True}
        if self.kind == "hub":
            return self.repo_id, {**kwargs, "revision": self.revision}
        return str(self.path), kwargs


def _first_component_exists(text: str) -> bool:
    """``out/skpi``: a name whose first folder exists here is a local path, not a Hub id (``owner/name``)."""
    first = text.split("/", 1)[0]
    return "/" in text and first not in ("", ".", "..") and Path(first).is_dir()


def did_you_mean(text: str) -> str:
    """``"; did you mean X?"`` for a MODEL close to a demo name or an entry of its parent folder, else ``""``."""
    import difflib

    from surgery.io.demo_models import DEMO_MODELS

    path = Path(text).expanduser()
    parent, prefix = (path.parent, text[: len(text) - len(path.name)]) if "/" in text else (Path("."), "")
    try:
        names = [entry.name for entry in os.scandir(parent) if not entry.name.startswith(".")][:10000]
    except OSError:
        names = []
    candidates = {prefix + name: name for name in names}
    candidates.update({name: name for name in DEMO_MODELS})
    close = difflib.get_close_matches(path.name, list(dict.fromkeys(candidates.values())), n=1, cutoff=0.7)
    if not close:
        return ""
    match = next(full for full, name in candidates.items() if name == close[0])
    return f"; did you mean {match}?"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_json_object(path: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; one clear error for unreadable, invalid or non-object JSON."""
    try:
        with open_regular(Path(path), max_bytes=MAX_JSON_BYTES) as handle:  # never a FIFO or /dev/zero
            data = json.loads(handle.read().decode("utf-8"))
    except OSError as exc:
        raise SurgeryError(f"cannot read {what} ({path}): {exc.strerror or first_line(exc)}") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise SurgeryError(f"cannot read {what} ({path}): {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise SurgeryError(f"{what} ({path}) is not a JSON object")
    return data


def _gguf_config(path: Path) -> dict[str, Any]:
    from surgery.io.gguf_header import read_gguf_metadata

    metadata = read_gguf_metadata(path)
    arch = metadata.get("general.architecture")
    blocks = metadata.get(f"{arch}.block_count")
    if not isinstance(arch, str) or isinstance(blocks, bool) or not isinstance(blocks, int):
        raise SurgeryError(f"cannot read GGUF file {path}: no general.architecture and <architecture>.block_count")
    return {"model_type": arch, "num_hidden_layers": blocks}


def num_layers_of(config: dict[str, Any], given: str) -> int:
    """The config's ``num_hidden_layers`` as a positive int (a clear error otherwise, e.g. for ``"2"``)."""
    value = config.get("num_hidden_layers")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SurgeryError(f"config of {given} has no positive integer num_hidden_layers (got {value!r})")
    return value


def check_regular_files(directory: Path, names: list[str] | tuple[str, ...] | None = None) -> None:
    """Refuse a model folder with a FIFO, device or socket among its entries (``names``, or all of them).

    Reading such a file (``model.safetensors`` as a FIFO, ``config.json -> /dev/zero``) would block forever or
    never end, in surgery or in transformers; ``stat`` tells without opening it. Symbolic links are followed
    (the Hub cache links to its blobs); a dangling one is left to the reader's own "not found" error.
    """
    entries = names if names is not None else sorted(entry.name for entry in os.scandir(directory))
    for name in entries:
        path = Path(directory) / name
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue  # absent or dangling: nothing to block on
        kind = special_file_kind(mode)
        if kind is not None and kind != "a directory":
            raise SurgeryError(f"{path} is {kind}, not a regular file; refusing to read it")
