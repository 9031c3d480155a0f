"""Detection of block lists and per-layer config keys, and their rewriting (no weights: meta-device models)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tiny_models import tiny_config

from surgery.architectures.detect import build_config, detect
from surgery.architectures.layer_config import check_layer_config, layer_config_updates
from surgery.architectures.specs import arch_for_config, check_model_type, spec_from_detection
from surgery.cli.main import main
from surgery.errors import SurgeryError


def _spec(config):
    return spec_from_detection(detect(config))


@pytest.mark.parametrize(
    ("model_type", "layer_list", "layer_path", "count_key"),
    [
        ("llama", "layers", "model.layers", "num_hidden_layers"),
        ("gpt2", "h", "transformer.h", "n_layer"),
        ("falcon", "h", "transformer.h", "num_hidden_layers"),
        ("bert", "encoder.layer", "encoder.layer", "num_hidden_layers"),
        ("mixtral", "layers", "model.layers", "num_hidden_layers"),  # the experts' list is nested: not the blocks
    ],
)
def test_block_list_and_layer_count_key_are_detected(model_type, layer_list, layer_path, count_key):
    detection = detect(tiny_config(model_type))
    assert (detection.layer_list, detection.layer_path, detection.count_key) == (layer_list, layer_path, count_key)
    assert len(detection.signatures) == 4


def test_per_layer_keys_are_the_lists_of_layer_count_length():
    qwen2 = detect(tiny_config("qwen2"))
    assert qwen2.per_layer_keys == ("layer_types",) and "max_window_layers" in qwen2.structural_keys
    assert detect(tiny_config("llama")).per_layer_keys == ()
    moe = detect(tiny_config("qwen2_moe"))
    assert moe.index_keys == ("mlp_only_layers",) and "decoder_sparse_step" in moe.structural_keys


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"model_type": "t5"}, "encoder-decoder model"),
        ({"model_type": "gemma3"}, "composite/multimodal config"),
        ({"model_type": "gemma3n_text"}, "reuse the KV cache of earlier ones"),
        ({"model_type": "no-such-model"}, "unsupported architecture model_type='no-such-model'"),
        ({"model_type": 3}, "config.json must name a model_type"),
    ],
)
def test_architectures_that_cannot_work_are_refused_with_the_reason(config, fragment):
    with pytest.raises(SurgeryError, match="unsupported architecture") as error:
        arch_for_config(config)
    assert fragment in str(error.value)


def test_cheap_check_needs_no_transformers_for_refused_types():
    with pytest.raises(SurgeryError, match="num_kv_shared_layers"):
        check_model_type({"model_type": "gemma3n_text"})
    assert check_model_type({"model_type": "surgery", "source_model_type": "llama"}) == "llama"


def test_first_k_dense_replace_is_rewritten_or_refused():
    config = tiny_config("dots1")
    config.first_k_dense_replace = 2
    spec = _spec(config)
    assert layer_config_updates(config, spec, [0, 1, 3, 2, 2])["first_k_dense_replace"] == 2
    assert layer_config_updates(config, spec, [1, 3])["first_k_dense_replace"] == 1
    with pytest.raises(SurgeryError, match="first_k_dense_replace=2 .* must stay before the others"):
        layer_config_updates(config, spec, [0, 2, 1, 3])


def test_decoder_sparse_step_becomes_an_explicit_dense_layer_list():
    config = tiny_config("qwen2_moe")  # step 2, mlp_only_layers [0]: layers 1 and 3 are sparse
    updates = layer_config_updates(config, _spec(config), [3, 2, 1, 0, 1])
    assert updates["decoder_sparse_step"] == 1
    assert updates["mlp_only_layers"] == [1, 3]  # positions of source layers 2 and 0
    check_layer_config(config, _spec(config), detect(config).signatures, [3, 2, 1, 0, 1], updates)


def test_layer_types_follow_their_layers():
    config = tiny_config("gemma2")  # alternating sliding / full
    updates = layer_config_updates(config, _spec(config), [1, 1, 0])
    assert updates["layer_types"] == [config.layer_types[1], config.layer_types[1], config.layer_types[0]]
    assert updates["num_hidden_layers"] == 3


def test_a_position_dependent_layer_nobody_listed_is_refused():
    """DiffLlama's lambda_init depends on the layer index: a moved layer would compute something else."""
    config = tiny_config("diffllama")
    spec = _spec(config)
    updates = layer_config_updates(config, spec, [0, 3])
    with pytest.raises(SurgeryError, match="would build layer 1 unlike its source layer 3"):
        check_layer_config(config, spec, detect(config).signatures, [0, 3], updates)


def test_build_config_refuses_unknown_keys_cleanly():
    with pytest.raises(SurgeryError, match="unsupported architecture"):
        build_config("definitely-not-a-model", {})


def test_plan_show_prints_the_detected_layers_and_per_layer_keys(tiny_checkpoints):
    runner = CliRunner()
    result = runner.invoke(main, ["plan", "show", "--plan", "reverse:0-7", str(tiny_checkpoints["qwen2"])])
    assert result.exit_code == 0, result.output
    assert "layers:    model.layers (detected block list" in result.output
    source = ["full_attention"] * 6 + ["sliding_attention"] * 2
    runs = 'layer_types: ["full_attention" x6, "sliding_attention" x2] -> ["sliding_attention" x2, "full_attention" x6]'
    assert f"per-layer: {runs}" in result.output
    assert "per-layer: max_window_layers: 6 -> 0" in result.output  # layer_types is explicit: it decides
    assert "per-layer: num_hidden_layers: 8 -> 8" in result.output
    result = runner.invoke(main, ["plan", "show", "--json", "--plan", "skip:0-1", str(tiny_checkpoints["qwen2"])])
    payload = json.loads(result.output)
    assert payload["layer_list"] == "model.layers"
    assert payload["per_layer_config"]["layer_types"][1] == source[2:]
