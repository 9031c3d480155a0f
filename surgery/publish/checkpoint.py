"""A ``surgery apply`` output as something to publish: read and checked, its card rendered, its files listed.

Only ``surgery apply`` outputs are published (their ``surgery.json`` is what the card is made of); any other
folder is refused with a pointer to ``hf upload``. The files uploaded are chosen by allow/ignore patterns with
the very function ``HfApi.upload_folder`` filters with, so ``--dry-run`` shows what a push sends, and each one is
checked and opened by :mod:`surgery.publish.files` (nothing outside the folder's real directory, no FIFO or
device). An ONNX export is accepted only when its records show it was made from this checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.apply.card import REMOTE_CODE_FILES, CardExtras, last_stage, render_model_card
from surgery.apply.provenance import PROVENANCE_FILE, Provenance
from surgery.architectures.specs import arch_for_config
from surgery.errors import SurgeryError
from surgery.io.model_ref import OUR_AUTO_MAP_VALUES, read_json_object
from surgery.io.source import TOKENIZER_FILES
from surgery.publish.files import checked_sizes, list_entries

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


def checkpoint_dir(path: Path) -> Path:
    """The real (resolved) directory of a checkpoint given on the command line; one error line otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SurgeryError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise SurgeryError(f"{path} is not a checkpoint directory")
    return path.resolve()


def read_checkpoint(path: Path) -> Checkpoint:
    """Read and check a ``surgery apply`` output; one clear error for anything else."""
    path = checkpoint_dir(path)
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
    """The entries of ``folder`` a push selects, by ``HfApi.upload_folder``'s filter (``filter_repo_objects`` plus
    the library's default ignores) over a listing that follows no symlink and keeps special files, so that they
    are refused by :func:`surgery.publish.files.open_inside` rather than skipped or followed."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    return list(
        filter_repo_objects(
            list_entries(Path(folder)), allow_patterns=allow, ignore_patterns=[*ignore, *DEFAULT_IGNORE_PATTERNS]
        )
    )


def checkpoint_files(root: Path) -> dict[str, int]:
    """What a push uploads from the checkpoint's real directory ``root``, with sizes: every file checked (no
    symlink out of it, no FIFO or device) before anything in it is read."""
    return checked_sizes(root, folder_files(root, CHECKPOINT_PATTERNS, CHECKPOINT_IGNORE), f"checkpoint {root}")


def read_onnx_export(directory: Path, checkpoint: Checkpoint):
    """The ONNX export in ``directory`` (``surgery export onnx`` output) if it was made from ``checkpoint``."""
    from surgery.exporters.onnx.record import EXPORT_FILE, read_export_record
    from surgery.publish.results import load_onnx_export

    given = Path(directory).expanduser()
    if not given.is_dir():
        raise SurgeryError(f"--include-onnx {given}: no such directory")
    root = given.resolve()
    files = checked_sizes(root, folder_files(root, None, ONNX_IGNORE), f"--include-onnx {root}")
    if not any(name.endswith(".onnx") for name in files):
        raise SurgeryError(f"--include-onnx {given}: no .onnx file in it")
    record = read_export_record(root) if EXPORT_FILE in files else {}
    verified_by = check_exported_from(root, checkpoint, record)
    return load_onnx_export(root, files, record, verified_by)


# Stages that leave the weights as they were: an export made before them is still an export of this checkpoint.
STAGES_KEEPING_WEIGHTS = ("push", "export")
# config.json keys that fix the shapes of the graph: an export whose config differs in one is of another model.
SHAPE_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_hidden_layers",
    "max_position_embeddings",
)


def _weight_history(record: Provenance) -> list[dict]:
    return [stage.model_dump() for stage in record.history if stage.stage not in STAGES_KEEPING_WEIGHTS]


def weights_identity(checkpoint: Checkpoint) -> str:
    """The fingerprint ``surgery export onnx`` records of its source (:func:`surgery.sweep.run.model_identity`),
    computed for ``checkpoint`` once every weight file it reads is checked to be a regular file inside it."""
    from surgery.io.model_ref import ModelRef
    from surgery.sweep.run import model_identity

    names = [p.name for p in [*checkpoint.path.glob("*.safetensors"), *checkpoint.path.glob("*.bin")]]
    checked_sizes(checkpoint.path, names, f"checkpoint {checkpoint.path}")
    ref = ModelRef.parse(str(checkpoint.path))
    return model_identity(ref, ref.read_config())


def check_exported_from(root: Path, checkpoint: Checkpoint, record: dict) -> str:
    """Refuse an ONNX export of another model; returns how it was found to be of this one (for the card).

    ``export.json``'s ``source_checkpoint.identity`` (a fingerprint of the source's config and weight files,
    recorded by ``surgery export onnx`` since this check exists) must equal this checkpoint's. An older export has
    none; then its copy of ``surgery.json`` must name the same source, plan and output and the same
    weight-changing history (``apply``, ``finetune``... with their dates: a checkpoint made again with the same
    plan differs in them; ``push`` and ``export`` stages are left out). Either way its ``config.json`` must agree
    on every shape.
    """
    where = f"--include-onnx {root}"
    config = (
        read_json_object(root / "config.json", "the export's config.json") if (root / "config.json").is_file() else {}
    )
    own = read_json_object(checkpoint.path / "config.json", "config.json")
    differs = [key for key in SHAPE_KEYS if key in config and key in own and config[key] != own[key]]
    if differs:
        raise SurgeryError(
            f"{where} was exported from another model: its config.json differs from this checkpoint's in "
            + ", ".join(f"{key} ({config[key]!r} vs {own[key]!r})" for key in differs)
        )
    source = record.get("source_checkpoint")
    if source is not None:
        if "path" not in source:
            raise SurgeryError(
                f"{where} was exported from the Hub model {source.get('hub')!r}, not from this checkpoint"
            )
        if source["identity"] != weights_identity(checkpoint):
            raise SurgeryError(
                f"{where} was exported from another checkpoint: the fingerprint of the weights and config it was "
                f"made from (export.json) differs from {checkpoint.path}'s; export this one again"
            )
        return "the fingerprint of config and weights it recorded matches"
    exported = Provenance.read(root)
    if exported is None:
        raise SurgeryError(
            f"{where} has no fingerprint of its source in export.json and no {PROVENANCE_FILE}: nothing shows it "
            "was exported from this checkpoint; export this one again"
        )
    ours = checkpoint.record
    for part in ("plan", "source", "output"):
        if getattr(exported, part) != getattr(ours, part):
            raise SurgeryError(
                f"{where} was exported from another checkpoint (its {PROVENANCE_FILE} differs in {part}: plan "
                f"{exported.plan.canonical!r}, this one {ours.plan.canonical!r})"
            )
    if _weight_history(exported) != _weight_history(ours):
        raise SurgeryError(
            f"{where} was exported from another checkpoint: the stages that made its weights (apply, finetune, "
            f"with their dates) differ from this one's ({checkpoint.path / PROVENANCE_FILE}); export this one again"
        )
    return "its surgery.json and config.json match"
