"""``surgery demo``: apply a plan to the embedded SmolLM2-135M-Instruct GGUF and compare source vs output."""

from __future__ import annotations

from pathlib import Path

import click

from surgery.io.demo_models import demo_model_path

DEMO_MODEL = "smollm2-demo"
DEMO_PROMPT = "What is the capital of France?"


def _size(path: Path) -> str:
    from surgery.fileio import format_bytes

    return format_bytes(
        path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def _greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    import torch

    messages = [{"role": "user", "content": prompt}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def run_demo(plan: str, out_dir: Path, prompt: str, max_new_tokens: int) -> None:
    """Apply ``plan`` to SmolLM2, then print layer counts, sizes and a greedy generation from both models."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    from surgery.apply.materialize import ApplyOptions, apply_plan
    from surgery.architectures.loading import check_loadable

    logging.set_verbosity_error()
    gguf = demo_model_path(DEMO_MODEL)
    check_loadable(DEMO_MODEL)  # like every command: no code from the GGUF's folder (custom_generate/, ...)
    click.echo(f"$ surgery apply --overwrite --plan {plan} {DEMO_MODEL} {out_dir}")
    result = apply_plan(DEMO_MODEL, plan, out_dir, ApplyOptions(overwrite=True))
    source = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    trust = check_loadable(str(out_dir))[2]  # True only for surgery's own, hash-verified modeling files
    output = AutoModelForCausalLM.from_pretrained(out_dir, trust_remote_code=trust).eval()
    execution = result.execution
    click.echo("")
    click.echo(f"{'':18}{'source':>22}{'output':>22}")
    click.echo(f"{'layers executed':18}{execution.num_source_layers:>22}{len(execution.instances):>22}")
    click.echo(f"{'model class':18}{type(source).__name__:>22}{type(output).__name__:>22}")
    click.echo(f"{'size on disk':18}{_size(gguf) + ' (Q4_1)':>22}{_size(out_dir) + ' (fp32)':>22}")
    click.echo(f"executed sequence: {execution.describe()}")
    click.echo(f"\nprompt: {prompt}")
    click.echo(f"source: {_greedy(source, tokenizer, prompt, max_new_tokens)}")
    click.echo(f"output: {_greedy(output, tokenizer, prompt, max_new_tokens)}")
    click.echo(f"\nfiles in {out_dir}:")
    for path in sorted(out_dir.iterdir()):
        click.echo(f"  {path.name:32}{_size(path):>14}")
