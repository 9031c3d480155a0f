"""GLUE task data: local ``.tsv`` files (GLUE's download layout) or the Hub's ``nyu-mll/glue``.

Local files are looked up as ``DIR/<Folder>/{train,dev}.tsv`` or ``DIR/glue/<Folder>/...`` where ``DIR`` is
``--data-dir`` or ``$SURGERY_DATA_DIR`` and ``<Folder>`` is GLUE's folder name (``CoLA``, ``MRPC``, ``QNLI``,
``RTE``, ``SST-2``, ``STS-B``, ``WNLI``). A task without local files is loaded from the Hub.

The files are read as GLUE's reference code reads them (``csv.reader(..., quotechar=None)``): plain lines split
on tabs, no quote handling (RTE train has a row opening with a ``"`` that is never closed), ``utf-8-sig``
(MRPC starts with a byte-order mark). CoLA has no header; the other files have one and their columns are
found by name. Labels use the Hub's ids (RTE/QNLI: ``entailment`` = 0, ``not_entailment`` = 1), so local and
Hub data train the same head.

Note: local MRPC (Microsoft's text) is untokenized while the Hub's ``glue/mrpc`` has SentEval's tokenized text
of the same pairs; scores on the two are close but not identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from surgery.errors import SurgeryError
from surgery.io.data_dir import DATA_DIR_ENV, resolve_data_dir

HUB_DATASET = "nyu-mll/glue"
SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}


@dataclass(frozen=True)
class Example:
    text_a: str
    text_b: str | None
    label: int | float


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task: where its text and label are, locally and on the Hub."""

    name: str  # canonical name, also the Hub config (``sst2``)
    folder: str  # GLUE's folder name (``SST-2``)
    columns: tuple[str | int, str | int | None, str | int]  # local (text_a, text_b, label): header name or index
    hub_columns: tuple[str, str | None]  # Hub (text_a, text_b); the label is ``label``
    num_labels: int  # 1: regression
    label_names: tuple[str, ...] | None = None  # local string labels, in id order
    header: bool = True

    @property
    def regression(self) -> bool:
        return self.num_labels == 1


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", "CoLA", (3, None, 1), ("sentence", None), 2, header=False),
        TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String", "Quality"), ("sentence1", "sentence2"), 2),
        TaskSpec(
            "qnli",
            "QNLI",
            ("question", "sentence", "label"),
            ("question", "sentence"),
            2,
            ("entailment", "not_entailment"),
        ),
        TaskSpec(
            "rte",
            "RTE",
            ("sentence1", "sentence2", "label"),
            ("sentence1", "sentence2"),
            2,
            ("entailment", "not_entailment"),
        ),
        TaskSpec("sst2", "SST-2", ("sentence", None, "label"), ("sentence", None), 2),
        TaskSpec("stsb", "STS-B", ("sentence1", "sentence2", "score"), ("sentence1", "sentence2"), 1),
        TaskSpec("wnli", "WNLI", ("sentence1", "sentence2", "label"), ("sentence1", "sentence2"), 2),
    )
}
# The GLUE tasks of the paper's BERT experiments (A.8), in its order.
PAPER_TASKS: tuple[str, ...] = ("cola", "mrpc", "qnli", "rte", "sst2", "stsb", "wnli")
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "sst": "sst2", "sts": "stsb"}


def resolve_tasks(text: str) -> list[str]:
    """Comma-separated task names (any case, ``sst-2``/``sts-b`` accepted; ``all`` = the paper's seven)."""
    names: list[str] = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        expanded = list(PAPER_TASKS) if key in ("all", "paper") else [_ALIASES.get(key, key)]
        for name in expanded:
            if name not in TASKS:
                raise SurgeryError(f"unknown GLUE task {raw.strip()!r}; choose from {', '.join(PAPER_TASKS)} or 'all'")
            if name not in names:
                names.append(name)
    if not names:
        raise SurgeryError("no GLUE task given (e.g. --tasks rte,mrpc)")
    return names


def read_tsv(path: Path) -> list[list[str]]:
    """Rows of a GLUE ``.tsv``: plain tab split, no quote handling, BOM dropped, last newline optional."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        text = handle.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1].split("\t") if line.endswith("\r") else line.split("\t") for line in lines]


def parse_rows(spec: TaskSpec, rows: list[list[str]], path: Path | str = "<rows>") -> list[Example]:
    """Turn a task file's rows (header included where it has one) into examples."""
    if spec.header:
        if not rows:
            raise SurgeryError(f"{path}: empty file (expected a header)")
        header, body, first_line = rows[0], rows[1:], 2
        try:
            indices = [header.index(col) if isinstance(col, str) else col for col in spec.columns if col is not None]
        except ValueError:
            raise SurgeryError(
                f"{path}: header {header} lacks the {spec.folder} columns {[c for c in spec.columns if c]}"
            ) from None
        width = len(header)
    else:
        body, first_line = rows, 1
        indices = [col for col in spec.columns if col is not None]
        width = None
    a_index, *rest = indices
    b_index = rest[0] if spec.columns[1] is not None else None
    label_index = rest[-1]
    examples = []
    for number, row in enumerate(body, start=first_line):
        if (width is not None and len(row) != width) or len(row) <= max(indices):
            raise SurgeryError(
                f"{path}:{number}: expected {width or max(indices) + 1} tab-separated fields, got {len(row)}"
            )
        raw_label = row[label_index]
        try:
            if spec.regression:
                label: int | float = float(raw_label)
            elif spec.label_names is not None:
                label = spec.label_names.index(raw_label)
            else:
                label = int(raw_label)
                if not 0 <= label < spec.num_labels:
                    raise ValueError
        except ValueError:
            raise SurgeryError(f"{path}:{number}: bad {spec.name} label {raw_label!r}") from None
        examples.append(Example(row[a_index], row[b_index] if b_index is not None else None, label))
    return examples


def read_local(spec: TaskSpec, folder: Path, split: str) -> list[Example]:
    path = folder / SPLIT_FILES[split]
    return parse_rows(spec, read_tsv(path), path)


def find_local(spec: TaskSpec, data_dir: Path) -> Path | None:
    """The folder holding ``train.tsv`` and ``dev.tsv`` of ``spec`` under ``data_dir``, if any."""
    for base in (data_dir, data_dir / "glue"):
        for name in (spec.folder, spec.name):
            folder = base / name
            if all((folder / file).is_file() for file in SPLIT_FILES.values()):
                return folder
    return None


def tasks_with_local_data(tasks: list[str], data_dir: str | Path | None) -> list[str]:
    """For ``--tasks all`` with a data folder: the tasks found there, and a note naming the ones left out.

    Without a data folder every task comes from the Hub, so all are kept.
    """
    import sys

    root = resolve_data_dir(data_dir)
    if root is None:
        return tasks
    present = [task for task in tasks if find_local(TASKS[task], root) is not None]
    if not present:
        return tasks  # nothing local: let every task try the Hub (and say so if it cannot)
    left_out = [task for task in tasks if task not in present]
    if left_out:
        print(
            f"note: no local data for {', '.join(left_out)} under {root}: left out "
            "(name them with --tasks to load them from the Hub)",
            file=sys.stderr,
        )
    return present


def load_hub(spec: TaskSpec, split: str) -> list[Example]:
    """The task's split from the Hub's ``nyu-mll/glue`` (needs network access or a filled ``datasets`` cache)."""
    from surgery.io.hub import prepare_hub

    prepare_hub()
    from datasets import load_dataset

    dataset = load_dataset(HUB_DATASET, spec.name, split=split)
    a_col, b_col = spec.hub_columns
    cast = float if spec.regression else int
    return [Example(row[a_col], row[b_col] if b_col else None, cast(row["label"])) for row in dataset]


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    validation: list[Example]
    source: str  # the local folder, or ``hub:nyu-mll/glue/<task>``


def load_task(name: str, data_dir: str | Path | None = None) -> TaskData:
    """Train and validation examples of GLUE task ``name``: local files first, else the Hub."""
    spec = TASKS[name]
    root = resolve_data_dir(data_dir)
    folder = find_local(spec, root) if root is not None else None
    if folder is not None:
        return TaskData(spec, read_local(spec, folder, "train"), read_local(spec, folder, "validation"), str(folder))
    try:
        train, validation = load_hub(spec, "train"), load_hub(spec, "validation")
    except Exception as exc:  # noqa: BLE001 - offline, missing cache, Hub errors: all mean "no data"
        where = f"no {spec.folder}/train.tsv and dev.tsv under {root}" if root else "no --data-dir given"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SurgeryError(
            f"no data for GLUE task {name}: {where}, and loading {HUB_DATASET} ({name}) from the Hub failed "
            f"({detail}); pass --data-dir DIR (or set ${DATA_DIR_ENV}) with DIR/{spec.folder}/train.tsv and "
            f"dev.tsv as GLUE's download_glue_data.py writes them, or go online"
        ) from None
    return TaskData(spec, train, validation, f"hub:{HUB_DATASET}/{name}")
