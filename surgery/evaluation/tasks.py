"""The paper's Llama benchmarks: registry, data sources (Hub or local files) and generated task YAMLs.

Every benchmark is lm-eval's stock task of the same name. Without ``--data-dir`` it is used as is (the Hub
dataset lm-eval loads by default). With ``--data-dir`` the task comes from ``surgery/evaluation/tasks/*.yaml``:
a copy of the stock YAML whose only changes are the dataset keys, included from a generated YAML that
names the local files (converted to the Hub schema where needed, see :mod:`surgery.evaluation.data`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from surgery.errors import SurgeryError
from surgery.evaluation import data

TASKS_DIR = Path(__file__).parent / "tasks"
HELLASWAG_STANDIN_NOTE = (
    "STAND-IN: HellaSwag validation from a third-party derived text file (tags stripped, ctx_b not "
    "capitalised); not comparable to published lm-eval HellaSwag numbers"
)


@dataclass(frozen=True)
class LocalTask:
    """A benchmark bound to local files: the lm-eval task name, its shipped YAML and ``data_files``."""

    task: str  # lm-eval task name in the results ("hellaswag_standin" for the stand-in)
    yaml: str  # file name in surgery/evaluation/tasks/
    data_files: dict[str, Path]  # split -> jsonl in the Hub schema
    sources: list[Path]  # the files under --data-dir it was made from
    null_splits: tuple[str, ...] = ()  # optional splits absent locally (set to null in the generated YAML)
    standin: bool = False
    note: str | None = None


@dataclass(frozen=True)
class Benchmark:
    name: str  # lm-eval's stock task name
    hub_dataset: str  # what the stock task loads (for messages; the run records the loaded task's own)
    primary_metric: str  # lm-eval result key used for the normalized score
    chance: float  # random-guess level of primary_metric (table value)
    layout: str  # expected files under --data-dir, for error messages
    resolve_local: Callable[[Path, Path | None], LocalTask] = field(repr=False)


def _require(data_dir: Path, name: str, layout: str, *relative: str) -> list[Path]:
    paths = [data_dir / r for r in relative]
    missing = [str(p.relative_to(data_dir)) for p in paths if not p.is_file()]
    if missing:
        raise SurgeryError(
            f"task {name!r}: no local data in {data_dir} (missing {', '.join(missing)}); "
            f"expected {layout} under --data-dir"
        )
    return paths


def _lambada(data_dir: Path, cache_dir: Path | None) -> LocalTask:
    (test,) = _require(data_dir, "lambada_openai", LAYOUTS["lambada_openai"], "lambada/lambada_test.jsonl")
    return LocalTask("lambada_openai", "lambada_openai.yaml", {"test": test}, [test])


def _arc(subset: str) -> Callable[[Path, Path | None], LocalTask]:
    name = f"arc_{subset.lower()}"

    def resolve(data_dir: Path, cache_dir: Path | None) -> LocalTask:
        (test,) = _require(data_dir, name, LAYOUTS[name], f"arc/ARC-{subset}-Test.jsonl")
        files, sources, null = {"test": data.convert_arc(test, cache_dir)}, [test], []
        # train/validation are only the stock task's few-shot pool (it is zero-shot); use them when present.
        for split, stem in (("train", "Train"), ("validation", "Dev")):
            path = data_dir / "arc" / f"ARC-{subset}-{stem}.jsonl"
            if path.is_file():
                files[split] = data.convert_arc(path, cache_dir)
                sources.append(path)
            else:
                null.append(f"{split}_split" if split == "validation" else "training_split")
        return LocalTask(name, f"{name}.yaml", files, sources, tuple(null))

    return resolve


def _hellaswag(data_dir: Path, cache_dir: Path | None) -> LocalTask:
    original = data_dir / "hellaswag" / "hellaswag_val.jsonl"
    if original.is_file():
        return LocalTask("hellaswag", "hellaswag.yaml", {"validation": original}, [original])
    (derived,) = _require(
        data_dir, "hellaswag", LAYOUTS["hellaswag"], "hellaswag/third_party_derived/hellaswag_val_full.txt.bz2"
    )
    converted = data.convert_hellaswag_derived(derived, cache_dir)
    return LocalTask(
        "hellaswag_standin",
        "hellaswag_standin.yaml",
        {"validation": converted},
        [derived],
        standin=True,
        note=HELLASWAG_STANDIN_NOTE,
    )


def _winogrande(data_dir: Path, cache_dir: Path | None) -> LocalTask:
    records, labels = _require(
        data_dir, "winogrande", LAYOUTS["winogrande"], "winogrande/dev.jsonl", "winogrande/dev-labels.lst"
    )
    merged = data.convert_winogrande(records, labels, cache_dir)
    return LocalTask("winogrande", "winogrande.yaml", {"validation": merged}, [records, labels])


def _gsm8k(data_dir: Path, cache_dir: Path | None) -> LocalTask:
    train, test = _require(data_dir, "gsm8k", LAYOUTS["gsm8k"], "gsm8k/train.jsonl", "gsm8k/test.jsonl")
    return LocalTask("gsm8k", "gsm8k.yaml", {"train": train, "test": test}, [test, train])


LAYOUTS = {
    "lambada_openai": "lambada/lambada_test.jsonl",
    "arc_easy": "arc/ARC-Easy-Test.jsonl (and optionally ARC-Easy-Train.jsonl, ARC-Easy-Dev.jsonl)",
    "arc_challenge": "arc/ARC-Challenge-Test.jsonl (and optionally ARC-Challenge-Train.jsonl, ARC-Challenge-Dev.jsonl)",
    "hellaswag": "hellaswag/hellaswag_val.jsonl (original) or hellaswag/third_party_derived/hellaswag_val_full.txt.bz2",
    "winogrande": "winogrande/dev.jsonl and winogrande/dev-labels.lst",
    "gsm8k": "gsm8k/train.jsonl and gsm8k/test.jsonl",
}

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in [
        Benchmark("lambada_openai", "EleutherAI/lambada_openai", "acc,none", 0.0, LAYOUTS["lambada_openai"], _lambada),
        Benchmark("arc_easy", "allenai/ai2_arc", "acc_norm,none", 0.25, LAYOUTS["arc_easy"], _arc("Easy")),
        Benchmark(
            "arc_challenge", "allenai/ai2_arc", "acc_norm,none", 0.25, LAYOUTS["arc_challenge"], _arc("Challenge")
        ),
        Benchmark("hellaswag", "Rowan/hellaswag", "acc_norm,none", 0.25, LAYOUTS["hellaswag"], _hellaswag),
        Benchmark("winogrande", "allenai/winogrande", "acc,none", 0.5, LAYOUTS["winogrande"], _winogrande),
        Benchmark("gsm8k", "openai/gsm8k", "exact_match,strict-match", 0.0, LAYOUTS["gsm8k"], _gsm8k),
    ]
}
DEFAULT_TASKS = list(BENCHMARKS)
# lm-eval task name -> benchmark (the stand-in reports under its own name)
BENCHMARK_OF_TASK = {**{name: b for name, b in BENCHMARKS.items()}, "hellaswag_standin": BENCHMARKS["hellaswag"]}


def parse_tasks(text: str | list[str] | None) -> list[Benchmark]:
    """``"lambada_openai,arc_easy"`` (or a list, or ``"all"``/None for all six) -> benchmarks, in order."""
    if text is None:
        names = DEFAULT_TASKS
    else:
        parts = text.split(",") if isinstance(text, str) else list(text)
        names = [p.strip() for p in parts if p.strip()]
        if names == ["all"]:
            names = DEFAULT_TASKS
    if not names:
        raise SurgeryError("no tasks given")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SurgeryError(
            f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known tasks: {', '.join(BENCHMARKS)}"
        )
    return [BENCHMARKS[n] for n in dict.fromkeys(names)]


def resolve_local(benchmarks: list[Benchmark], data_dir: Path, cache_dir: Path | None = None) -> dict[str, LocalTask]:
    """Bind each benchmark to its files under ``data_dir`` (converting where needed); one clear error if absent."""
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise SurgeryError(f"--data-dir {data_dir} is not a directory")
    return {b.name: b.resolve_local(data_dir.resolve(), cache_dir) for b in benchmarks}


def write_task_yamls(local: dict[str, LocalTask], out_dir: Path) -> Path:
    """Write one YAML per task into ``out_dir`` (usable as lm-eval's ``--include_path``); returns ``out_dir``.

    Each includes the shipped YAML by absolute path and adds ``dataset_kwargs.data_files``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in local.values():
        config: dict = {
            "include": str((TASKS_DIR / item.yaml).resolve()),
            "dataset_kwargs": {"data_files": {split: str(path) for split, path in item.data_files.items()}},
        }
        config.update({key: None for key in item.null_splits})
        text = f"# generated by surgery eval for task {item.task}\n" + yaml.safe_dump(config, sort_keys=False)
        (out_dir / f"{item.task}.yaml").write_text(text, encoding="utf-8")
    return out_dir
