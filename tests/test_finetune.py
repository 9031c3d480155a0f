"""`surgery finetune`: data formatting, the training loop, LoRA merging, output kinds, resume, errors.

Unit tests use tiny random models with a character-level tokenizer built here and a synthetic ARC file; the
real SmolLM2 + real ARC tests are marked ``integration``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from resources import data_path
from safetensors.torch import load_file
from tiny_models import save_tiny

from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.apply.provenance import Provenance
from surgery.cli.main import main as cli
from surgery.errors import SurgeryError
from surgery.finetune.config import FinetuneConfig
from surgery.finetune.data import IGNORE, load_train_data, tokenize_rows
from surgery.finetune.run import run_finetune, state_dir_for
from surgery.io.model_ref import ModelRef, ships_our_code

CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,?:\n"
WORDS = ["apple", "river", "stone", "cloud", "plant", "light"]


def save_char_tokenizer(directory: Path) -> None:
    """A character-level fast tokenizer (ids < 96, the tiny models' vocab) that adds <s> like SmolLM2."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(["<pad>", "<unk>", "<s>", "</s>", *CHARS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)


def write_arc(data_dir: Path, n: int = 16) -> Path:
    """A synthetic ARC-Challenge train file in the AI2 release format: answer = the word named in the question."""
    path = data_dir / "arc" / "ARC-Challenge-Train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n):
        answer = WORDS[index % len(WORDS)]
        choices = [{"label": label, "text": WORDS[(index + k) % len(WORDS)]} for k, label in enumerate("ABCD")]
        rows.append({"id": f"q{index}", "question": {"stem": f"which word is {answer}?", "choices": choices},
                     "answerKey": "A"})  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_arc(tmp_path_factory.mktemp("arc-data"))


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints with a tokenizer: plain llama, plain tied-embedding llama, and a tied-repeats surgery one."""
    root = tmp_path_factory.mktemp("finetune-sources")
    out = {}
    for name in ("llama", "llama-tied"):
        out[name] = save_tiny(name, root / name)
        save_char_tokenizer(out[name])
    out["tied"] = root / "tied"
    apply_plan(str(out["llama"]), "loop:2-4x2", out["tied"], ApplyOptions(tie_repeats=True))
    return out


def settings(model: Path, out: Path, data_dir: Path, **overrides) -> FinetuneConfig:
    values = dict(model=str(model), out_dir=out, method="full", data_dir=data_dir, batch_size=8,
                  micro_batch_size=4, lr=1e-3, max_length=64, warmup_ratio=0.0, save_every=1)  # fmt: skip
    return FinetuneConfig.validated(**{**values, **overrides})


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# ------------------------------------------------------------------------------------------------------- data


def test_arc_is_formatted_as_surgery_eval_scores_it(sources, data_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sources["llama"])
    data = load_train_data("arc_challenge", data_dir, tokenizer, max_length=64)
    assert data.loss_on == "answer" and len(data.examples) == 16
    example = data.examples[0]
    prompt = tokenizer("Question: which word is apple?\nAnswer:")["input_ids"]
    assert prompt[0] == tokenizer.bos_token_id  # default special tokens on the prompt, as lm-eval
    assert example.input_ids == prompt + tokenizer(" apple", add_special_tokens=False)["input_ids"]
    assert example.labels == [IGNORE] * len(prompt) + example.input_ids[len(prompt) :]


def test_jsonl_text_and_prompt_completion(sources, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sources["llama"])
    examples, truncated, _ = tokenize_rows([{"text": "abc"}, {"prompt": "ab", "completion": "cdefgh"}], tokenizer, 6)
    assert examples[0].labels == [IGNORE, *examples[0].input_ids[1:]]  # loss on every token but the first
    assert truncated == 1 and len(examples[1].input_ids) == 6 and examples[1].labels[-1] != IGNORE


# ----------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-size", "10", "--micro-batch-size", "4"], "--micro-batch-size: batch size 10 is not divisible"),
        (["--save-adapter"], "--save-adapter: needs --method lora"),
        (["--plan", "skip:6-12"], "skip:6-12"),
        (["--data", "{bad}"], "needs a string 'text' field"),
        (["--data", "{tmp}/missing.jsonl"], "--data file not found"),
        (["--method", "lora", "--lora-targets", "q_proj,nope"], "unknown LoRA target module(s) nope; valid names"),
    ],
)
def test_bad_inputs_are_one_line(args, fragment, sources, data_dir, tmp_path, one_thread):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "only a prompt"}\n')
    args = [a.format(bad=bad, tmp=tmp_path) for a in args]
    method = [] if "--method" in args else ["--method", "full"]
    base = ["finetune", str(sources["llama"]), str(tmp_path / "out"), "--data-dir", str(data_dir), *method]
    result = CliRunner().invoke(cli, [*base, *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.stderr
    assert not (tmp_path / "out").exists()


def test_no_trainable_parameters_is_refused(sources, data_dir, tmp_path, monkeypatch, one_thread):
    import surgery.finetune.run as run

    def freeze(model):
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    monkeypatch.setattr("surgery.finetune.full.prepare_full", freeze)
    with pytest.raises(SurgeryError, match="no trainable parameters"):
        run.run_finetune(settings(sources["llama"], tmp_path / "out", data_dir, max_steps=1), progress=False)


# --------------------------------------------------------------------------------------------- training


def test_full_training_lowers_loss_and_writes_plain_checkpoint(sources, data_dir, tmp_path, one_thread):
    out = tmp_path / "out"
    details = run_finetune(settings(sources["llama-tied"], out, data_dir, epochs=4), progress=False)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 8 and details["final_loss"] < details["first_loss"]
    assert (out / "loss.png").stat().st_size > 5_000
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config  # plain stays plain
    assert "lm_head.weight" not in weights(out)  # tied embeddings stay tied
    record = Provenance.read(out)
    assert [stage.stage for stage in record.history] == ["finetune"]
    stage = record.history[-1].details
    assert stage["method"] == "full" and stage["hyperparameters"]["lr"] == 1e-3 and stage["tokens_per_s"] > 0
    assert not state_dir_for(out).exists()


def test_lora_merge_equals_peft_logits_and_loads_without_surgery(sources, data_dir, tmp_path, monkeypatch):
    import surgery.finetune.lora as lora

    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15]])
    captured = {}
    original = lora.merge_lora

    def capture(peft_model):
        with torch.no_grad():
            captured["logits"] = peft_model(input_ids=ids).logits
        return original(peft_model)

    monkeypatch.setattr(lora, "merge_lora", capture)
    out = tmp_path / "out"
    config = settings(sources["llama"], out, data_dir, method="lora", lr=1e-2, epochs=2, save_adapter=True)
    details = run_finetune(config, progress=False)
    assert details["final_loss"] < details["first_loss"]
    assert details["trainable_parameters"] < details["total_parameters"] / 5
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert set(weights(out)) == set(weights(sources["llama"]))  # no lora_A / lora_B left
    script = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"logits = model(input_ids=torch.tensor({ids.tolist()})).logits\n"
        f"torch.save(logits, {str(tmp_path / 'logits.pt')!r})\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'surgery'], 'surgery was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    fresh = torch.load(tmp_path / "logits.pt")
    assert torch.allclose(fresh, captured["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_tied_surgery_class_stays_tied(method, sources, data_dir, tmp_path, one_thread):
    from surgery.architectures.loading import load_model

    out = tmp_path / "out"
    run_finetune(settings(sources["tied"], out, data_dir, method=method, max_steps=2), progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "surgery" and ships_our_code(ModelRef.parse(str(out)), config)
    before, after = weights(sources["tied"]), weights(out)
    assert set(after) == set(before)  # layer 2-4 stored once: nothing grew
    assert (out / "model.safetensors").stat().st_size <= (sources["tied"] / "model.safetensors").stat().st_size + 4096
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed and all(("mlp" in name) for name in changed) == (method == "lora")
    record = Provenance.read(out)
    assert [stage.stage for stage in record.history] == ["apply", "finetune"]
    assert type(load_model(str(out))).__name__ == "SurgeryForCausalLM"


def test_plan_trains_the_variant_and_writes_it_like_apply(sources, data_dir, tmp_path, one_thread):
    out = tmp_path / "out"
    run_finetune(settings(sources["llama"], out, data_dir, plan="skip:3-5", max_steps=2), progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 5
    record = Provenance.read(out)
    assert record.plan.canonical == "skip:3-5" and record.source["given"] == str(sources["llama"])
    assert [stage.stage for stage in record.history] == ["apply", "finetune"]
    card = (out / "README.md").read_text()
    assert "# out\n" in card and "then the weights were fine-tuned" in card and "## Fine-tuning" in card
    source, after = weights(sources["llama"]), weights(out)
    assert not torch.equal(source["model.layers.5.mlp.up_proj.weight"], after["model.layers.2.mlp.up_proj.weight"])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_bf16_autocast_and_gradient_checkpointing(method, sources, data_dir, tmp_path, one_thread):
    out = tmp_path / "out"
    overrides = dict(method=method, dtype="bfloat16", gradient_checkpointing=True, max_steps=2)
    details = run_finetune(settings(sources["llama"], out, data_dir, **overrides), progress=False)
    assert details["steps"] == 2 and details["final_loss"] > 0
    assert {tensor.dtype for tensor in weights(out).values()} == {torch.float32}  # fp32 weights, bf16 compute


@pytest.mark.parametrize(("method", "hard"), [("full", False), ("lora", False), ("full", True)])
def test_resume_after_kill_gives_the_same_weights(method, hard, sources, data_dir, tmp_path, monkeypatch, one_thread):
    """Killed after step 5: Ctrl-C saves step 5; a hard kill (no handler runs) leaves the periodic save of step 3."""
    import surgery.finetune.loop as loop

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    overrides = dict(method=method, epochs=3, batch_size=4, micro_batch_size=2, save_every=3)
    run_finetune(settings(sources["llama"], straight, data_dir, **overrides), progress=False)
    save, killed = loop._save_state, []
    monkeypatch.setattr(loop, "_save_state", lambda *args: None if any(killed) else save(*args))

    def kill(step: int) -> None:
        if step == 5:
            killed.append(hard)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_finetune(settings(sources["llama"], resumed, data_dir, **overrides), progress=False, on_step=kill)
    killed.clear()
    assert not resumed.exists() and (state_dir_for(resumed) / "state.pt").is_file()
    with pytest.raises(SurgeryError, match="pass --resume"):
        run_finetune(settings(sources["llama"], resumed, data_dir, **overrides), progress=False)
    with pytest.raises(SurgeryError, match="other settings.*lr"):
        run_finetune(settings(sources["llama"], resumed, data_dir, **overrides, lr=2e-3, resume=True), progress=False)
    details = run_finetune(settings(sources["llama"], resumed, data_dir, **overrides, resume=True), progress=False)
    assert details["resumed_from_step"] == (3 if hard else 5) and details["steps"] == 12
    a, b = weights(straight), weights(resumed)
    assert set(a) == set(b) and all(torch.equal(a[name], b[name]) for name in a)
    log_a = (straight / "train_log.jsonl").read_text().splitlines()
    log_b = (resumed / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]
    assert not state_dir_for(resumed).exists()


# ------------------------------------------------------------------------------- real model and real data


@pytest.mark.integration
@pytest.mark.parametrize(("method", "lr"), [("full", 1e-4), ("lora", 2e-3)])
def test_smollm2_few_steps_on_real_arc_lower_the_loss(method, lr, smollm2_dir, tmp_path):
    arc = data_path("arc", "ARC-Challenge-Train.jsonl").parent.parent
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = FinetuneConfig.validated(
            model=str(smollm2_dir), out_dir=tmp_path / "out", method=method, data_dir=arc, limit=8, batch_size=8,
            micro_batch_size=4, epochs=3, lr=lr, warmup_ratio=0.0, save_every=100,
        )  # fmt: skip
        details = run_finetune(config, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert details["data"]["examples"] == 8 and details["steps"] == 3
    assert details["final_loss"] < details["first_loss"]  # the same 8 questions each step
