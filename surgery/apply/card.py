"""Model card (README.md) of an output checkpoint, rendered from its provenance record (``surgery.json``).

The front matter holds the Hub's model card fields (``library_name``, ``base_model``, ``base_model_relation``,
``pipeline_tag``, ``tags``, ``model-index``) and is written exactly as ``huggingface_hub.ModelCardData.to_yaml``
writes it (``yaml.dump``, keys in this order; tests compare the two), without importing huggingface_hub:
that import (requests, chardet) would add about 0.2 s to every ``apply``. ``apply`` writes the first card
(:func:`write_model_card`); ``surgery card`` and ``surgery push`` re-render it with what was measured later
(:class:`CardExtras`, built by :mod:`surgery.publish.results` with ``ModelCardData`` / ``EvalResult``; those
commands also parse every card they write back through ``huggingface_hub.ModelCard``). Every fact on the card
comes from ``surgery.json``, the checkpoint's own files or a measurement file: nothing is claimed that was not
recorded or measured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from surgery import PROJECT_URL
from surgery.apply.provenance import PROVENANCE_FILE, Provenance, Stage
from surgery.fileio import atomic_write_text, format_bytes, sha256_file
from surgery.plan import ExecutionPlan

OP_MEANINGS = {
    "skip": "layers A..B are not run (paper §3.2)",
    "reverse": "layers A..B run in reverse order (§3.4)",
    "shuffle": "layers A..B run in the order random.Random(S).shuffle gives (§3.4)",
    "repeat": "every position A..B runs layer L instead (§3.3, 'middle repeat')",
    "loop": "the block A..B runs K times in sequence (Appendix A.6)",
    "parallel": (
        "layers A..B read the same input and their outputs are averaged; xK applies the block K times (§3.5, §3.7)"
    ),
}
REMOTE_CODE_FILES = ("configuration_surgery.py", "modeling_surgery.py", "fused_parallel.py")
HUB_ID = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")  # what the Hub accepts as base_model (fullmatch)
STAGES_DESCRIBED_ELSEWHERE = ("apply", "push", "finetune")
PAPER_URL = "https://arxiv.org/abs/2407.09298"
# What the card says about quality when nothing was measured on this checkpoint: the paper's finding, as its own.
PAPER_FINDING = (
    f"The paper (arXiv 2407.09298, {PAPER_URL}) finds that such changes lower benchmark scores, the more so the "
    "more layers they touch, and that tasks needing math and reasoning (such as GSM8K) suffer most; this checkpoint's "
    "quality was not measured here (`surgery eval`, then `surgery card --eval`, adds the measurement)."
)


# Characters that would let text from a file act as Markdown or HTML in a card: escaped as entities (which GFM
# tables split on before decoding, so `|` cannot end a cell). Line breaks and other control characters become
# spaces (no new line can start: no heading, list, `---` rule or front matter from data); bidi overrides go.
_MD_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "[": "&#91;", "]": "&#93;",
                              "`": "&#96;", "\\": "&#92;", "*": "&#42;"})  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_BIDI = re.compile(r"[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
MAX_FIELD = 300  # characters of one field from a file shown on a card


def plain_line(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` as one line of plain text: control characters as spaces, bidi overrides dropped, at most
    ``limit`` characters (``…`` when cut). For YAML metadata and code spans, which escape on their own."""
    text = _BIDI.sub("", _CONTROL.sub(" ", str(value))).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def meta_text(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` for the card's YAML metadata (``model-index`` names): one plain line, no HTML tag."""
    return plain_line(value, limit).replace("<", "&lt;").replace(">", "&gt;")


def md_text(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` (from a file: a task name, a note, a machine field) as inert Markdown: one line, no HTML, no
    link, no table cell break, no code span; it reads the same once rendered."""
    return plain_line(value, limit).translate(_MD_ENTITIES)


def md_code(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` as an inline code span, whatever backticks it holds (the fence is one longer than its longest
    run), on one line; as :func:`md_text` when it holds ``<``, ``>`` or ``|`` (no tag in the card even inside
    code, and a ``|`` would split a table cell even inside a code span)."""
    text = plain_line(value, limit)
    if re.search(r"[<>|]", text):
        return md_text(text, limit)
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def py_string(value: Any) -> str:
    """``value`` as a Python (and JSON) string literal for a code block: one line, no ``<`` or ``>``."""
    return json.dumps(plain_line(value)).replace("<", "\\u003c").replace(">", "\\u003e")


def md_fence(text: str) -> str:
    """The backtick fence a code block around ``text`` needs: longer than any backtick run inside it."""
    return "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)


@dataclass
class CardExtras:
    """What was measured after ``apply``: markdown sections, ``model-index`` results and extra tags."""

    sections: list[str] = field(default_factory=list)  # markdown, each starting with "## "
    metadata: dict[str, Any] = field(default_factory=dict)  # extra front matter, e.g. {"model-index": [...]}
    tags: list[str] = field(default_factory=list)
    measured_quality: str | None = None  # one sentence on this checkpoint's measured scores, when there are some


def _ops_in(canonical: str) -> list[str]:
    if canonical.startswith("sequence:"):
        return ["sequence"]
    if canonical == "identity":
        return []
    return sorted({op.split(":", 1)[0] for op in canonical.split(",")} & set(OP_MEANINGS))  # known names only


def _origin(source: dict) -> str:
    """The source model in words: its Hub id, or the GGUF file (name, sha256) / local directory it came from."""
    if source.get("repo_id"):
        return f"**{md_text(source['repo_id'])}**"
    if source.get("kind") == "gguf":
        named = f", whose metadata names {md_text(source['gguf_repo'])}" if source.get("gguf_repo") else ""
        file = md_text(Path(str(source.get("source"))).name)
        return f"the GGUF file **{file}** (sha256 {md_code(source.get('sha256'))}{named})"
    return f"the local checkpoint **{md_text(Path(str(source.get('source', source.get('given')))).name)}**"


def base_model_of(source: dict, given: str | None = None) -> str | None:
    """The Hub id the Hub's ``base_model`` can name: ``given`` (``--base-model``, kept in ``surgery.json``), else
    the source repo, else the one a GGUF file's metadata names (``general.source.huggingface.repository``...)."""
    candidate = given or source.get("repo_id") or source.get("gguf_repo")
    return candidate if isinstance(candidate, str) and HUB_ID.fullmatch(candidate) else None


def public_name(text: str) -> str:
    """A model or file reference fit for a public card: a Hub id as is, a local path reduced to its last part."""
    if text.startswith(("/", "~", ".")) or "\\" in text or text.count("/") > 1:
        return Path(text).name
    return text


def readable(value: Any) -> str:
    """A recorded value as plain card text (no JSON): ``key value`` pairs, lists joined with commas, local
    paths reduced to their last part (:func:`public_name`), numbers as they are; Markdown-escaped."""
    if isinstance(value, dict):
        return ", ".join(f"{md_text(key)} {readable(item)}" for key, item in value.items() if item is not None)
    if isinstance(value, (list, tuple)):
        return ", ".join(readable(item) for item in value) or "none"
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return md_text(f"{value:.6g}")
    return md_text(public_name(str(value)) if isinstance(value, str) else value)


def last_stage(record: Provenance, name: str) -> Stage | None:
    """The most recent stage called ``name`` in the record's history."""
    return next((stage for stage in reversed(record.history) if stage.stage == name), None)


def _why_custom(record: Provenance) -> str:
    if any(len(step) > 1 for step in record.plan.steps):
        return "the plan runs layers in parallel, which the source architecture cannot express"
    if record.output.get("tie_repeats"):
        return "each repeated layer is stored once (`--tie-repeats`), which the source architecture cannot express"
    return "it was written with `--surgery-class`"


def load_reference(name: str) -> tuple[str, str]:
    """What the card's load snippet passes to ``from_pretrained`` and the sentence before it: the Hub repo id
    when ``name`` is one (pushed, or given with ``--name owner/model``), else a ``path/to/NAME`` placeholder
    (a bare folder name only loads from the folder above it) and a sentence saying what to put there."""
    if HUB_ID.fullmatch(name) and not name.startswith("."):
        return name, f"From the Hub, as {md_code(name)}:"
    folder = plain_line(name, 100).strip("/") or "checkpoint"
    placeholder = f"path/to/{folder}"
    return placeholder, (
        f"This checkpoint is not on the Hub yet: replace {md_code(placeholder)} with the path of this folder "
        "(`surgery push` writes the card again with the repo id)."
    )


def _use_section(directory: Path, record: Provenance, name: str, custom_class: bool, generative: bool) -> str:
    auto = "AutoModelForCausalLM" if generative else "AutoModel"
    remote = ", trust_remote_code=True" if custom_class else ""
    where, sentence = load_reference(name)
    code = f"""{sentence}

```python
from transformers import {auto}, AutoTokenizer
model = {auto}.from_pretrained({py_string(where)}{remote})
tokenizer = AutoTokenizer.from_pretrained({py_string(where)})
```"""
    if not custom_class:
        return f"## Use\n\nA plain {md_code(record.output['architecture'])}; no custom code.\n\n{code}\n"
    config = _read_json(directory / "config.json")
    inner = ", ".join(map(str, config.get("source_architectures") or [])) or "the source architecture"
    from surgery import __version__
    from surgery.modeling import MODELING_FILES

    ours = {path.name: sha256_file(path) for path in MODELING_FILES}
    theirs = {file: sha256_file(directory / file) for file in REMOTE_CODE_FILES if (directory / file).is_file()}
    hashes = "\n".join(f"- `{file}`: sha256 `{digest}`" for file, digest in theirs.items())
    if theirs == ours:
        what = (
            f"They import only torch and transformers (not the surgery package) and download nothing: "
            f"`SurgeryConfig` is the source config plus the map from stored to executed layers, and "
            f"{md_code(record.output['architecture'])} builds transformers' own {md_code(inner)} with the stored "
            "layers and runs "
            f"them in the executed order (a parallel group's outputs are averaged). They are byte-identical to the "
            f"files surgery {__version__} writes (checked when this card was rendered); read them before trusting them."
        )
    else:
        what = f"They differ from the files surgery {__version__} writes: read them before trusting them."
    return f"""## Use

{code}

**What `trust_remote_code=True` runs.** This checkpoint uses the surgery model class because {_why_custom(record)}.
`trust_remote_code=True` lets transformers import the Python files shipped here, `configuration_surgery.py`,
`modeling_surgery.py` and `fused_parallel.py` (which the second imports), written by surgery
{md_text(record.surgery_version)}. {what}

{hashes}
"""


FINETUNE_LABELS = {
    "method": "method",
    "hyperparameters": "settings",
    "lora_target_modules": "LoRA target modules",
    "trainable_parameters": "trainable parameters",
    "total_parameters": "total parameters",
    "steps": "steps",
    "total_steps": "steps planned",
    "resumed_from_step": "resumed from step",
    "first_loss": "first loss",
    "final_loss": "final loss",
    "tokens": "tokens trained on",
    "train_seconds": "training time (s)",
    "tokens_per_s": "tokens/s",
    "tied_layers": "tied layers",
}


SETTINGS_SHOWN_ELSEWHERE = ("model", "data", "data_dir", "plan", "method")  # finetune's record of its options


def _data_text(data: Any) -> str:
    """The fine-tuning data in words: its name, where it came from (a Hub dataset, or a local file named by its
    file name, never its path) and the counts recorded."""
    if not isinstance(data, dict):
        return readable(data)
    location = str(data.get("location") or "")
    name = md_text(Path(str(data.get("name") or location or "unnamed")).name)
    if location.startswith("hub:"):  # finetune's record of a Hub dataset: hub:owner/name/config/split
        where = f" (Hub dataset {md_code(location.removeprefix('hub:'))})"
    elif location:
        digest = f", sha256 {md_code(data['sha256'])}" if data.get("sha256") else ""
        where = f" (local file {md_code(Path(location).name)}{digest})"
    else:
        where = ""
    examples, available = data.get("examples"), data.get("available")
    counts = [
        f"{readable(examples)} examples" + (f" of {readable(available)}" if available not in (None, examples) else "")
        if examples is not None
        else "",
        f"loss on {md_text(data['loss_on'])}" if data.get("loss_on") else "",
        f"{readable(data['tokens'])} tokens" if data.get("tokens") is not None else "",
        f"{readable(data['truncated'])} truncated" if data.get("truncated") else "",
        f"{readable(data['dropped'])} dropped" if data.get("dropped") else "",
    ]
    counted = "; ".join(part for part in counts if part)
    return f"{name}{where}" + (f": {counted}" if counted else "")


def _finetune_section(stage: Stage | None) -> str:
    """``## Fine-tuning``: the recorded data and settings as readable lines (never raw JSON or a local path)."""
    if stage is None:
        return ""
    details = dict(stage.details)
    lines = [f"- data: {_data_text(details.pop('data'))}"] if "data" in details else []
    settings = details.get("hyperparameters")
    if isinstance(settings, dict):  # what the model, data and plan were is said elsewhere, without their paths
        details["hyperparameters"] = {k: v for k, v in settings.items() if k not in SETTINGS_SHOWN_ELSEWHERE}
    for key, value in details.items():
        if value is None:
            continue
        label = FINETUNE_LABELS.get(key, key.replace("_", " "))
        lines.append(f"- {md_text(label)}: {readable(value)}")
    return (
        f"## Fine-tuning\n\nAfter the surgery the weights were fine-tuned with surgery "
        f"{md_text(stage.surgery_version)} ({md_text(stage.date)}):\n\n" + "\n".join(lines) + "\n"
    )


def _later_stages_section(record: Provenance) -> str:
    stages = [stage for stage in record.history if stage.stage not in STAGES_DESCRIBED_ELSEWHERE]
    if not stages:
        return ""
    rows = "\n".join(
        f"| {md_text(stage.stage)} | {md_text(stage.date)} | {md_text(stage.surgery_version)} | "
        f"{'; '.join(f'{md_text(k)} {readable(v)}' for k, v in stage.details.items())} |"
        for stage in stages
    )
    return f"## Later stages\n\n| stage | date (UTC) | surgery | details |\n|---|---|---|---|\n{rows}\n"


def _plan_section(record: Provenance) -> str:
    plan = record.plan
    given = plan.given.strip()
    if "\n" in given:
        given = "\n".join(_BIDI.sub("", line) for line in given.splitlines())
        given = given.replace("<", "&lt;").replace(">", "&gt;")  # shown as typed would be nicer; no tag is safer
        fence = md_fence(given)
        given_text = f"\n\n{fence}yaml\n{given}\n{fence}"
    else:
        given_text = f" {md_code(given, limit=2000)}"
    return f"""## Plan

- as given:{given_text}
- canonical: {md_code(plan.canonical, limit=2000)}
- executed (source layer indices, in order): {md_code(plan.executed, limit=2000)}
"""


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def render_model_card(
    directory: Path,
    record: Provenance,
    *,
    name: str,
    custom_class: bool,
    generative: bool,
    extras: CardExtras | None = None,
) -> str:
    """The README.md text of the checkpoint in ``directory``.

    ``name`` is the title and what the user loads: a Hub repo id (pushed, or ``--name owner/model``) goes into
    the load snippet as is; any other name (the folder's) becomes a ``path/to/NAME`` placeholder
    (:func:`load_reference`).
    """
    extras = extras or CardExtras()
    plan, source, output = record.plan, record.source, record.output
    ops = _ops_in(plan.canonical)
    finetune = last_stage(record, "finetune")
    base_model = base_model_of(source, record.base_model)
    tags = ["surgery", "layer-surgery", *ops, *(["custom_code"] if custom_class else []), *extras.tags]
    front: dict[str, Any] = {"library_name": "transformers"}
    if base_model:
        front["base_model"] = base_model
        front["base_model_relation"] = "finetune" if finetune else "merge"
    front["pipeline_tag"] = "text-generation" if generative else "feature-extraction"
    front["tags"] = list(dict.fromkeys(tags))
    front.update(extras.metadata)
    meanings = "\n".join(f"- `{op}`: {OP_MEANINGS[op]}" for op in ops if op in OP_MEANINGS)
    if "sequence" in ops:
        meanings += "\n- `sequence`: an explicit executed sequence of layers and parallel groups"
    layout = (
        "a `SurgeryConfig`/`surgery` wrapper around the source architecture (modeling files included here)"
        if custom_class
        else f"the source architecture ({md_code(output['architecture'])})"
    )
    revision = f" (revision {md_code(source['revision'])})" if source.get("revision") else ""
    if finetune:
        changed = "Layers were dropped, reordered, repeated or run in parallel, then the weights were fine-tuned."
    else:
        changed = (
            "No weights were trained or changed: layers were only dropped, reordered, repeated or run in parallel."
        )
    changed += " " + (extras.measured_quality or PAPER_FINDING)
    weights = md_text(", ".join(map(str, output.get("tensor_dtypes") or [])))
    if output.get("total_bytes"):
        weights += f" ({format_bytes(int(output['total_bytes']))})"
    measured = "\n".join(extras.sections) or "No benchmark or latency results are recorded for this checkpoint.\n"
    body = f"""
# {md_text(name)}

Layer surgery of {_origin(source)}{revision} with the plan {md_code(plan.canonical, limit=2000)}, made with
[surgery]({PROJECT_URL}) {md_text(record.surgery_version)}, after *Transformer Layers as Painters*
(Sun, Pickett, Nain, Jones, 2024). {changed}

| | |
|---|---|
| source layers | {md_text(source["num_layers"])} |
| executed layer instances | {md_text(output["executed_layers"])} |
| stored layers | {md_text(output["stored_layers"])} |
| executed sequence | {md_code(plan.executed, limit=2000)} |
| layout | {layout} |
| weights | {weights or "-"} |

{_plan_section(record)}
## What the plan does
{meanings or "- identity: every layer runs once, in order"}

Indices are 0-based over the source model's layers; `A-B` is inclusive. A bracketed group `[a b c]` in the
executed sequence is a parallel block (outputs averaged); `xK` repeats it K times.

{_use_section(directory, record, name, custom_class, generative)}
{_finetune_section(finetune)}
{measured}
{_later_stages_section(record)}
Provenance (plan as given and resolved, source, package version, every later stage) is in `{PROVENANCE_FILE}`.
"""
    body = re.sub(r"\n{3,}", "\n\n", body)
    return f"---\n{front_matter_yaml(front)}\n---\n{body}"


def front_matter_yaml(front: dict[str, Any]) -> str:
    """The YAML block between the ``---`` lines, as ``huggingface_hub.ModelCardData.to_yaml`` writes it."""
    return yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()  # plain types only, no tags


def write_model_card(
    out_dir: Path, record: Provenance, execution: ExecutionPlan, *, name: str, custom_class: bool, generative: bool
) -> None:
    """Write the first model card of a checkpoint (``apply``): what was done and how to load it.

    ``name`` is what the user will load: the final directory name (or, once pushed, the repo id), never the
    temporary directory the checkpoint is written in. ``execution`` is the plan ``record`` already describes
    (``record.plan.executed``); the parameter stays for callers that have it at hand.
    """
    text = render_model_card(Path(out_dir), record, name=name, custom_class=custom_class, generative=generative)
    atomic_write_text(Path(out_dir) / "README.md", text)
