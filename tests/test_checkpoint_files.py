"""What `apply` writes: shards, dtypes, per-layer config, side files, card, provenance, atomicity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from tiny_models import build_tiny
from transformers import AutoConfig, AutoModelForCausalLM

from surgery.apply.materialize import ApplyOptions, apply_plan
from surgery.errors import SurgeryError
from surgery.io import safetensors_stream


def _all_tensors(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            tensors.update({name: handle.get_tensor(name) for name in handle.keys()})
    return tensors


def test_repeated_layers_are_copied_with_renumbered_names(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "repeat:2-4@6,skip:5", tmp_path / "out")
    source = build_tiny("llama")
    written = _all_tensors(tmp_path / "out")
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.num_hidden_layers == 7
    for position, layer in enumerate([0, 1, 6, 6, 6, 6, 7]):
        expected = source.model.layers[layer].self_attn.q_proj.weight
        assert torch.equal(written[f"model.layers.{position}.self_attn.q_proj.weight"], expected)
    assert not any(name.startswith("model.layers.7.") for name in written)
    assert torch.equal(written["model.embed_tokens.weight"], source.model.embed_tokens.weight)


def test_sharding_and_index(tiny_checkpoints, tmp_path):
    options = ApplyOptions(shard_size=40_000)
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", tmp_path / "out", options)
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 3
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    written = _all_tensors(tmp_path / "out")
    assert set(index["weight_map"]) == set(written)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.config.num_hidden_layers == 7


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_conversion(dtype, tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", tmp_path / "out", ApplyOptions(dtype=dtype))
    written = _all_tensors(tmp_path / "out")
    assert {t.dtype for t in written.values()} == {getattr(torch, dtype)}
    source = build_tiny("llama")
    expected = source.model.layers[2].mlp.up_proj.weight.to(getattr(torch, dtype))
    assert torch.equal(written["model.layers.1.mlp.up_proj.weight"], expected)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == dtype


def test_source_dtype_kept_by_default(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", tmp_path / "bf16", ApplyOptions(dtype="bfloat16"))
    apply_plan(str(tmp_path / "bf16"), "skip:1", tmp_path / "out")
    assert {t.dtype for t in _all_tensors(tmp_path / "out").values()} == {torch.bfloat16}


def test_per_layer_config_arrays_follow_their_layers(tiny_checkpoints, tmp_path):
    source = AutoConfig.from_pretrained(tiny_checkpoints["qwen2"])
    assert source.layer_types[6] == "sliding_attention" and source.layer_types[0] == "full_attention"
    apply_plan(str(tiny_checkpoints["qwen2"]), "reverse:0-7", tmp_path / "out")
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.layer_types == list(reversed(source.layer_types))
    apply_plan(str(tiny_checkpoints["qwen2"]), "parallel:2-3x2", tmp_path / "par")
    config = AutoConfig.from_pretrained(tmp_path / "par", trust_remote_code=True)
    instances = [0, 1, 2, 3, 2, 3, 4, 5, 6, 7]
    assert config.layer_types == [source.layer_types[i] for i in instances]


def test_parallel_group_mixing_attention_types_gives_each_member_its_mask(tiny_checkpoints, tmp_path):
    """Layers 5 (full) and 6 (sliding window 6) in one group: each member attends with its own mask, as in the
    reference execution; cached generation equals uncached (sliding slots keep only the window)."""
    from reference import reference_output
    from tiny_models import VOCAB, build_tiny
    from transformers import AutoModelForCausalLM

    apply_plan(str(tiny_checkpoints["qwen2"]), "parallel:5-6x2", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    model.eval()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))  # longer than the window
    expected = reference_output(build_tiny("qwen2"), "qwen2", ids, [0, 1, 2, 3, 4, (5, 6), (5, 6), 7])
    with torch.no_grad():
        actual = model(input_ids=ids).logits
        options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        cached, uncached = model.generate(ids, **options), model.generate(ids, use_cache=False, **options)
    assert (actual - expected).abs().max().item() <= 1e-4
    assert torch.equal(cached, uncached)


def test_card_provenance_and_side_files(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-4x3", tmp_path / "out")
    out = tmp_path / "out"
    provenance = json.loads((out / "surgery.json").read_text())
    assert provenance["plan"]["given"] == "parallel:2-4x3"
    assert provenance["plan"]["steps"][2] == [2, 3, 4]
    assert provenance["source"]["num_layers"] == 8
    assert provenance["output"]["layout"] == "surgery"
    assert provenance["surgery_version"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "parallel" in card and "trust_remote_code=True" in card
    assert (out / "generation_config.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_surgery.SurgeryForCausalLM"
    assert (out / "modeling_surgery.py").is_file() and (out / "configuration_surgery.py").is_file()


@pytest.mark.parametrize("plan", ["skip:1", "parallel:2-4"])
def test_no_written_file_names_the_temporary_directory(plan, tiny_checkpoints, tmp_path, monkeypatch):
    import surgery.io.output_dir as output_dir

    seen = []
    original = output_dir._install
    monkeypatch.setattr(
        output_dir, "_install", lambda tmp, out, overwrite: (seen.append(tmp.name), original(tmp, out, overwrite))
    )
    out = tmp_path / "my-variant"
    apply_plan(str(tiny_checkpoints["llama"]), plan, out)
    (temporary,) = seen
    assert ".surgery-tmp-" in temporary
    for path in out.iterdir():
        if path.suffix in (".json", ".md", ".py", ".txt"):
            assert temporary not in path.read_text(), path.name
            assert ".surgery-tmp-" not in path.read_text(), path.name
    card = (out / "README.md").read_text()
    assert "# my-variant\n" in card and 'from_pretrained("path/to/my-variant"' in card
    assert "https://github.com/surgery-tools/surgery" in card


def test_card_states_a_gguf_origin():
    record = {"source": "/models/SmolLM2.Q4_1.gguf", "kind": "gguf", "sha256": "ab" * 32, "given": "smollm2-demo"}
    from surgery.apply.card import _origin

    assert _origin(record) == f"the GGUF file **SmolLM2.Q4_1.gguf** (sha256 `{'ab' * 32}`)"
    assert "whose metadata names org/model" in _origin({**record, "gguf_repo": "org/model"})


def test_interrupted_write_leaves_nothing(tiny_checkpoints, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(safetensors_stream, "_write_tensor", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        apply_plan(str(tiny_checkpoints["llama"]), "skip:1", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert safetensors_stream.parse_size("5GB") == 5 * 10**9
    assert safetensors_stream.parse_size("500MiB") == 500 * 2**20
    assert safetensors_stream.parse_size("1234") == 1234
    for bad in ("lots", "nan", "inf", "-5GB", "0", "١٠GB", "5TB"):
        with pytest.raises(SurgeryError, match="malformed size"):
            safetensors_stream.parse_size(bad)


def test_shards_follow_source_files_and_data_is_page_aligned(tiny_checkpoints, tmp_path):
    apply_plan(str(tiny_checkpoints["llama"]), "skip:1", tmp_path / "sharded", ApplyOptions(shard_size=60_000))
    apply_plan(str(tmp_path / "sharded"), "skip:2", tmp_path / "out")
    sources = safetensors_stream.index_checkpoint(sorted((tmp_path / "sharded").glob("*.safetensors")))
    outputs = safetensors_stream.index_checkpoint(sorted((tmp_path / "out").glob("*.safetensors")))
    assert len({record.file for record in sources.values()}) > 1

    def source_name(name: str) -> str:  # skip:2 on 7 layers: output layer j runs source layer j (j < 2) or j + 1
        parts = name.split(".")
        if parts[1] == "layers" and int(parts[2]) >= 2:
            parts[2] = str(int(parts[2]) + 1)
        return ".".join(parts)

    by_shard: dict = {}
    for name, record in outputs.items():
        by_shard.setdefault(record.file, []).append((record, sources[source_name(name)]))
    assert len(by_shard) > 1
    for pairs in by_shard.values():
        assert len({src.file for _, src in pairs}) == 1  # one source file per output shard
        assert all(out.offset % 4096 == src.offset % 4096 for out, src in pairs)  # page-aligned copies
    written = _all_tensors(tmp_path / "out")
    expected = build_tiny("llama").model.layers[4].mlp.up_proj.weight  # output layer 2 <- sharded 3 <- source 4
    assert torch.equal(written["model.layers.2.mlp.up_proj.weight"], expected)
