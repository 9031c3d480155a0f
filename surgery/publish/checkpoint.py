"""A ``surgery apply`` output as something to publish: read and checked, its card rendered, its files listed.

Only ``surgery apply`` outputs are published (their ``surgery.json`` is what the card is made of); any other
folder is refused with a pointer to ``hf upload``. The files uploaded are chosen by allow/ignore patterns and
listed with the very function ``HfApi.upload_folder`` filters with, so ``--dry-run`` shows what a push sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.architectures import arch_for_config
from surgery.card import REMOTE_CODE_FILES, CardExtras, last_stage, render_model_card
from surgery.errors import SurgeryError
from surgery.io.model_ref import OUR_AUTO_MAP_VALUES, read_json_object
from surgery.io.source import TOKENIZER_FILES
from surgery.provenance import PROVENANCE_FILE, Provenance

# A checkpoint's own files, top level only (never temporary files, locks, caches or anything a user added).
CHECKPOINT_PATTERNS = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    *REMOTE_CODE_FILES,
    "README.md",
    PROVENANCE_FILE,
]
CHECKPOINT_IGNORE = ["*/*", ".*", "*.tmp"]
# An ONNX export folder is uploaded whole, except hidden files, Python caches and temporary files.
ONNX_IGNORE = [".*", "*/.*", "__pycache__/*", "*/__pycache__/*", "*.pyc", "*.tmp", "*.lock"]


@dataclass
class Checkpoint:
    """A checked ``surgery apply`` output directory."""

    path: Path
    record: Provenance
    custom_class: bool
    generative: bool

    def default_name(self) -> str:
        """What the card calls the model: the repo id of the last push, else the directory name."""
        pushed = last_stage(self.record, "push")
        return str(pushed.details["repo_id"]) if pushed and pushed.details.get("repo_id") else self.path.name

    def render_card(self, record: Provenance, *, name: str, extras: CardExtras) -> str:
        return render_model_card(
            self.path, record, name=name, custom_class=self.custom_class, generative=self.generative, extras=extras
        )


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and check a ``surgery apply`` output; one clear error for anything else."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SurgeryError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise SurgeryError(f"{path} is not a checkpoint directory")
    path = path.resolve()
    record = Provenance.read(path)
    if record is None:
        raise SurgeryError(
            f"{path} has no {PROVENANCE_FILE}: not a `surgery apply` output, so there is nothing to write its card "
            "from (upload other folders with `hf upload`)"
        )
    config = read_json_object(path / "config.json", "config.json")
    spec = arch_for_config(config)
    custom = config.get("model_type") == "surgery"
    if custom != (record.output.get("layout") == "surgery"):
        raise SurgeryError(f"{path}: config.json and {PROVENANCE_FILE} disagree on the layout (edited by hand?)")
    auto_map = config.get("auto_map") or {}
    foreign = sorted(str(value) for value in auto_map.values() if value not in OUR_AUTO_MAP_VALUES)
    if foreign or (auto_map and not custom):
        raise SurgeryError(f"{path}: config.json's auto_map names code that surgery did not write ({foreign})")
    missing = [name for name in REMOTE_CODE_FILES if custom and not (path / name).is_file()]
    if missing:
        raise SurgeryError(f"{path}: the surgery class needs {', '.join(missing)}, which is missing")
    return Checkpoint(path, record, custom, spec.generative)


def folder_files(folder: Path, allow: list[str] | None, ignore: list[str]) -> list[str]:
    """The files ``HfApi.upload_folder(folder, allow_patterns=allow, ignore_patterns=ignore)`` uploads, in its
    order: the same listing and the same filter (``filter_repo_objects`` plus the library's default ignores)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    relative = [p.relative_to(folder).as_posix() for p in sorted(Path(folder).glob("**/*")) if p.is_file()]
    return list(
        filter_repo_objects(relative, allow_patterns=allow, ignore_patterns=[*ignore, *DEFAULT_IGNORE_PATTERNS])
    )


def checkpoint_files(checkpoint: Checkpoint) -> list[str]:
    """What a push uploads from the checkpoint directory (weights must be among them)."""
    files = folder_files(checkpoint.path, CHECKPOINT_PATTERNS, CHECKPOINT_IGNORE)
    if not any(name.endswith(".safetensors") for name in files):
        raise SurgeryError(f"{checkpoint.path}: no *.safetensors weights to upload")
    return files


def read_onnx_export(directory: Path, checkpoint: Checkpoint):
    """The ONNX export in ``directory`` (``surgery export onnx`` output) if it was made from ``checkpoint``."""
    from surgery.publish.results import OnnxExport

    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise SurgeryError(f"--include-onnx {directory}: no such directory")
    files = folder_files(directory, None, ONNX_IGNORE)
    if not any(name.endswith(".onnx") for name in files):
        raise SurgeryError(f"--include-onnx {directory}: no .onnx file in it")
    exported = Provenance.read(directory)
    ours = checkpoint.record
    if exported is not None and (exported.plan.canonical, exported.source) != (ours.plan.canonical, ours.source):
        raise SurgeryError(
            f"--include-onnx {directory} was exported from another checkpoint (plan {exported.plan.canonical!r}, "
            f"this one {ours.plan.canonical!r})"
        )
    record = read_json_object(directory / "export.json", "export.json") if (directory / "export.json").is_file() else {}
    return OnnxExport(files=files, record=record)
