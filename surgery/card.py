"""Model card (README.md) of an output checkpoint, rendered from its provenance record (``surgery.json``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from surgery import PROJECT_URL
from surgery.fileio import atomic_write_text
from surgery.plan import ExecutionPlan
from surgery.provenance import PROVENANCE_FILE, Provenance

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


def _ops_in(canonical: str) -> list[str]:
    if canonical.startswith("sequence:"):
        return ["sequence"]
    if canonical == "identity":
        return []
    return sorted({op.split(":", 1)[0] for op in canonical.split(",")})


def _origin(source: dict) -> str:
    """The source model in words: its Hub id, or the GGUF file (name, sha256) / local directory it came from."""
    if source.get("repo_id"):
        return f"**{source['repo_id']}**"
    if source.get("kind") == "gguf":
        named = f", whose metadata names {source['gguf_repo']}" if source.get("gguf_repo") else ""
        return f"the GGUF file **{Path(source['source']).name}** (sha256 `{source.get('sha256')}`{named})"
    return f"the local checkpoint **{Path(str(source.get('source', source.get('given')))).name}**"


def write_model_card(
    out_dir: Path, record: Provenance, execution: ExecutionPlan, *, name: str, custom_class: bool, generative: bool
) -> None:
    """Write a Hub model card: front matter (base_model, library_name, tags) + what was done and how to load.

    ``name`` is what the user will load: the final directory name (or, once pushed, the repo id), never the
    temporary directory the checkpoint is written in.
    """
    plan = record.plan.model_dump()
    source = record.source
    output = record.output
    ops = _ops_in(plan["canonical"])
    base_model = source.get("repo_id") or source.get("gguf_repo")
    front: dict = {"library_name": "transformers", "tags": ["surgery", "layer-surgery", *ops]}
    if base_model:
        front["base_model"] = base_model
    if custom_class:
        front["tags"].append("custom_code")
    auto = "AutoModelForCausalLM" if generative else "AutoModel"
    remote = ", trust_remote_code=True" if custom_class else ""
    meanings = "\n".join(f"- `{op}`: {OP_MEANINGS[op]}" for op in ops if op in OP_MEANINGS)
    if "sequence" in ops:
        meanings += "\n- `sequence`: an explicit executed sequence of layers and parallel groups"
    layout = (
        "a `SurgeryConfig`/`surgery` wrapper around the source architecture (modeling files included here)"
        if custom_class
        else f"the source architecture (`{output['architecture']}`)"
    )
    body = f"""
# {name}

Layer surgery of {_origin(source)} with the plan `{plan["canonical"]}`, made with
[surgery]({PROJECT_URL}) {record.surgery_version}, after *Transformer Layers as Painters*
(Sun, Pickett, Nain, Jones, 2024). No weights were trained or changed: layers were only dropped, reordered,
repeated or run in parallel. Expect lower quality than the source model, most of all on math and reasoning.

| | |
|---|---|
| source layers | {source["num_layers"]} |
| executed layer instances | {output["executed_layers"]} |
| stored layers | {output["stored_layers"]} |
| executed sequence | `{execution.describe()}` |
| layout | {layout} |

## What the plan does
{meanings or "- identity: every layer runs once, in order"}

Indices are 0-based over the source model's layers; `A-B` is inclusive. A bracketed group `[a b c]` in the
executed sequence is a parallel block (outputs averaged); `xK` repeats it K times.

## Use
```python
from transformers import {auto}, AutoTokenizer
model = {auto}.from_pretrained("{name}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{name}")
```

Provenance (plan as given and resolved, source, package version) is in `{PROVENANCE_FILE}`.
"""
    text = "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n" + body
    atomic_write_text(out_dir / "README.md", text)
