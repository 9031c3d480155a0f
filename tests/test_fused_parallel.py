"""Fused parallel blocks equal the unfused form, cache per member, and fall back where they cannot fuse."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB, build_tiny
from torch import nn
from transformers import DynamicCache

from surgery.apply.inmemory import planned
from surgery.modeling.modeling_surgery import ExecutionList, FusedParallel, SlotRoute, fusable

TOLERANCE = 1e-4
FUSABLE = ["llama", "llama-tied", "mistral", "qwen2", "qwen3"]  # GQA everywhere; mistral: sliding window 6
# tiny qwen2: layers 6-7 are sliding-window layers (max_window_layers=6), so its plans keep groups of one type
PLANS = {
    "parallel:2-5": 1,
    "parallel:1-3x3": 3,
    "parallel:1-2,parallel:4-5x2": 3,
    "parallel:6-7x2": 2,
}


def _ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _execution(model: nn.Module) -> ExecutionList:
    layers = model.base_model.layers
    assert isinstance(layers, ExecutionList)
    return layers


def _logits(model: nn.Module, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, **kwargs).logits


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {arch: build_tiny(arch) for arch in [*FUSABLE, "gpt_neox"]}


@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("arch", FUSABLE)
def test_fused_equals_unfused(arch, plan, models, one_thread):
    model, ids = models[arch], _ids()
    with planned(model, plan, fuse_parallel=False):
        assert _execution(model).fused_steps == 0
        unfused = _logits(model, ids)
    with planned(model, plan):
        assert _execution(model).fused_steps == PLANS[plan]  # the comparison below is fused vs unfused
        fused = _logits(model, ids)
    assert (fused - unfused).abs().max().item() <= TOLERANCE
    assert (fused - _logits(model, ids)).abs().max().item() > 1e-3  # the plan changes the model


@pytest.mark.parametrize("arch", FUSABLE)
def test_fused_cached_equals_uncached(arch, models, one_thread):
    """Greedy generation with and without a KV cache, and step-by-step logits against full recomputation."""
    model, ids = models[arch], _ids(length=9)
    with planned(model, "parallel:1-3x2,parallel:4-5"):
        assert _execution(model).fused_steps == 3
        options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        with torch.no_grad():
            cached = model.generate(ids, use_cache=True, **options)
            uncached = model.generate(ids, use_cache=False, **options)
            static = model.generate(ids, cache_implementation="static", **options)
        assert torch.equal(cached, uncached) and torch.equal(cached, static)
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids[:, :5], past_key_values=cache, use_cache=True)
            for position in range(5, ids.shape[1]):
                step = model(input_ids=ids[:, position : position + 1], past_key_values=cache, use_cache=True)
                full = model(input_ids=ids[:, : position + 1], use_cache=False)
                assert (step.logits[:, -1] - full.logits[:, -1]).abs().max().item() <= TOLERANCE
        # one slot per executed instance: each member caches its own keys (1 + 3*2 + 2 + 2 = 11 slots)
        assert len(cache.layers) == model.config.num_hidden_layers == 11
        assert all(layer.keys.shape[1] == 2 for layer in cache.layers)  # 2 key/value heads per slot


def test_not_fusable_runs_unfused(models):
    """Other architectures and wrapped projections (LoRA, quantized) run the members one by one."""
    neox = models["gpt_neox"]
    with planned(neox, "parallel:2-5"):
        assert _execution(neox).fused_steps == 0
    llama = models["llama"]
    layers = [llama.model.layers[2], llama.model.layers[3]]
    assert fusable(layers) and not fusable(layers[:1])

    class WrappedLinear(nn.Linear):
        pass

    ids = _ids()
    with planned(llama, "parallel:2-3"):
        fused = _logits(llama, ids)
        original = layers[1].self_attn.q_proj
        wrapped = WrappedLinear(original.in_features, original.out_features, bias=False)
        with torch.no_grad():
            wrapped.weight.copy_(original.weight * 2)
        layers[1].self_attn.q_proj = wrapped  # as PEFT does after the model (and its plan) is built
        try:
            assert not fusable(layers)
            wrapped_logits = _logits(llama, ids)
            _execution(llama).fuse_parallel = False
            unfused = _logits(llama, ids)
        finally:
            layers[1].self_attn.q_proj = original
    assert (wrapped_logits - fused).abs().max().item() > 1e-3  # the wrapped projection is used ...
    assert (wrapped_logits - unfused).abs().max().item() <= TOLERANCE  # ... by running unfused


def test_training_runs_unfused_and_reaches_every_member(models):
    """With gradients on, the members run one by one so every member's weights get gradients."""
    model = models["llama"]
    weights = [model.model.layers[index].mlp.down_proj.weight for index in range(2, 6)]
    with planned(model, "parallel:2-5"):
        model.zero_grad()
        model(input_ids=_ids()).logits.sum().backward()
        grads = [weight.grad for weight in weights]
        assert all(grad is not None and grad.abs().sum() > 0 for grad in grads)
        model.zero_grad(set_to_none=True)


def test_stacked_weights_follow_weight_changes(models):
    """Stacked copies are rebuilt after an in-place update or a dtype change of a member."""
    model, ids = models["qwen3"], _ids()
    weight = model.model.layers[3].mlp.up_proj.weight
    saved = weight.detach().clone()
    try:
        with planned(model, "parallel:2-5"):
            fused = _execution(model).steps[2].fused
            assert isinstance(fused, FusedParallel)
            before = _logits(model, ids)
            with torch.no_grad():
                weight.mul_(3.0)
            after = _logits(model, ids)
            _execution(model).fuse_parallel = False
            unfused = _logits(model, ids)
            _execution(model).fuse_parallel = True
        assert (after - before).abs().max().item() > 1e-3
        assert (after - unfused).abs().max().item() <= TOLERANCE
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def _replace_parameter(layer: nn.Module) -> None:
    layer.mlp.up_proj.weight = nn.Parameter(layer.mlp.up_proj.weight.detach() * 3.0)


def _write_parameters_dict(layer: nn.Module) -> None:  # as accelerate's set_module_tensor_to_device does
    layer.mlp.up_proj._parameters["weight"] = nn.Parameter(layer.mlp.up_proj.weight.detach() * 3.0)


def _replace_linear(layer: nn.Module) -> None:
    old = layer.mlp.up_proj
    new = nn.Linear(old.in_features, old.out_features, bias=False)
    with torch.no_grad():
        new.weight.copy_(old.weight * 3.0)
    layer.mlp.up_proj = new


def _swap_data(layer: nn.Module) -> None:  # what Module.to() does to each parameter
    layer.mlp.up_proj.weight.data = layer.mlp.up_proj.weight.data * 3.0


def _cast_and_back(layer: nn.Module) -> None:  # new storage, possibly at the freed address
    layer.mlp.up_proj.weight.data = (layer.mlp.up_proj.weight.data * 3.0).double().float()


@pytest.mark.parametrize(
    "change", [_replace_parameter, _write_parameters_dict, _replace_linear, _swap_data, _cast_and_back]
)
def test_stacked_weights_follow_replaced_weights(change, one_thread):
    """Hostile: a member's weight replaced between forwards in every way a library does it; the fused block
    (checked once per forward, not per call) computes with the new weight, as the unfused block does."""
    model, ids = build_tiny("llama"), _ids()
    member = model.model.layers[3]  # stored layer 3 (inside the plan, index 3 is the fourth executed step)
    with planned(model, "parallel:2-5x2"):
        before = _logits(model, ids)
        change(member)
        after = _logits(model, ids)
        assert _execution(model).steps[2].fuse_now
        _execution(model).fuse_parallel = False
        unfused = _logits(model, ids)
    assert (after - before).abs().max().item() > 1e-3
    assert (after - unfused).abs().max().item() <= TOLERANCE


def test_pruned_projection_runs_unfused(one_thread):
    """Hostile: torch's pruning moves a weight out of ``_parameters`` (computed by a hook at each call): the
    group runs unfused, with the pruned weight, instead of failing or using a stale copy."""
    from torch.nn.utils import prune

    model, ids = build_tiny("llama"), _ids()
    member = model.model.layers[3]
    with planned(model, "parallel:2-5"):
        before = _logits(model, ids)
        prune.l1_unstructured(member.mlp.up_proj, "weight", amount=0.5)
        pruned = _logits(model, ids)
        assert not _execution(model).steps[2].fuse_now
        _execution(model).fuse_parallel = False
        unfused = _logits(model, ids)
    assert (pruned - before).abs().max().item() > 1e-3
    assert (pruned - unfused).abs().max().item() <= TOLERANCE


def test_fusion_is_decided_once_per_forward(models, monkeypatch, one_thread):
    """The stacked copy's freshness and fusability are checked once per forward, however many steps share it."""
    from surgery.modeling.fused_parallel import StackedWeights

    calls = []
    check = StackedWeights.check
    monkeypatch.setattr(StackedWeights, "check", lambda self: calls.append(self) or check(self))
    model = models["llama"]
    with planned(model, "parallel:2-5x3"):
        _logits(model, _ids())
        assert len(calls) == 1  # three fused steps, one stacked copy, one check
        with torch.no_grad():
            model.generate(_ids(batch=1), max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)
        assert len(calls) == 1 + 4  # one per forward: prefill and 3 decode steps
        model.zero_grad()
        model(input_ids=_ids()).logits.sum().backward()  # training: unfused, nothing checked
        assert len(calls) == 5 and not _execution(model).steps[2].fuse_now
        model.zero_grad(set_to_none=True)


def test_layers_in_their_own_slot_run_as_themselves(models):
    """Identity steps yield the layer itself (nothing in between); a layer executed once elsewhere is pointed at
    its slot for the plan's lifetime and given back its own index after; recording goes through the steps."""
    model = models["llama"]
    layers = list(model.model.layers)
    with planned(model, "identity"):
        assert list(model.model.layers) == layers and model.model.layers[:3] == layers[:3]
        with _execution(model).recording(True):
            assert [step.layers for step in model.model.layers] == [[layer] for layer in layers]
    with planned(model, "skip:2-3,repeat:5-6@6"):  # executed: 0 1 4 6 6 7
        runners = list(model.model.layers)
        assert runners[:2] == layers[:2] and runners[2] is layers[4] and runners[5] is layers[7]
        assert layers[4].self_attn.layer_idx == 2 and layers[7].self_attn.layer_idx == 5  # their slots
        assert layers[6].self_attn.layer_idx == 6  # executed twice: switched per call (SlotRoute)
        assert not isinstance(runners[3], nn.Module) and not isinstance(runners[4], nn.Module)
        ids = _ids()
        cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        assert len(cache.layers) == 6 and all(layer.keys.shape[-2] == ids.shape[1] for layer in cache.layers)
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(len(layers)))


def test_surgery_class_forward_does_not_walk_modules(tiny_checkpoints, tmp_path, monkeypatch, one_thread):
    """At inference the shipped class does no per-forward walk of its modules (is_gradient_checkpointing cost
    11 % of a tiny model's decode step); in training it still disables the cache under checkpointing."""
    from transformers import AutoModelForCausalLM

    from surgery.apply.materialize import apply_plan

    apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-5", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32).eval()

    def walk(self):
        raise AssertionError("walked the modules at inference")

    monkeypatch.setattr(type(model), "is_gradient_checkpointing", property(walk))
    with torch.no_grad():
        model.generate(_ids(batch=1), max_new_tokens=3, do_sample=False, pad_token_id=0)
    monkeypatch.undo()
    model.gradient_checkpointing_enable()
    model.train()
    assert model(input_ids=_ids(), use_cache=True).past_key_values is None


def test_looped_block_shares_one_stacked_copy(models):
    model = models["llama"]
    with planned(model, "parallel:2-5x3,parallel:6-7"):
        fused = [step.fused for step in _execution(model).steps if step.fused is not None]
        assert len(fused) == 4 and fused[0].stacked is fused[1].stacked is fused[2].stacked
        assert fused[3].stacked is not fused[0].stacked and fused[0].slots != fused[1].slots


def test_slot_routes_are_computed_once(models):
    """A layer running in its own slot is called directly; one running elsewhere is pointed there per call."""
    model = models["llama"]
    layer = model.model.layers[4]
    assert SlotRoute(layer, 4).direct and not SlotRoute(layer, 7).direct
    route = SlotRoute(layer, 7)
    cache = DynamicCache(config=model.config)
    hidden = torch.randn(1, 3, 32)
    position = torch.arange(3)[None]
    rotary = model.model.rotary_emb(hidden, position)
    with torch.no_grad():
        route(hidden, position_embeddings=rotary, past_key_values=cache, cache_position=torch.arange(3))
    assert layer.self_attn.layer_idx == 4  # restored after the call
    assert len(cache.layers) > 7 and cache.layers[7].keys.shape[-2] == 3
    assert all(cache.layers[index].keys is None or cache.layers[index].keys.numel() == 0 for index in range(7))


@pytest.mark.integration
def test_smollm2_fused_equals_unfused(smollm2_dir, one_thread):
    """The real model: N = 10 parallel block (11-19), plain and looped 3x; cached == uncached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir, padding_side="left")
    tokenizer.pad_token = tokenizer.eos_token
    ids = tokenizer(["The capital of France is", "Layers are painters: the middle"], return_tensors="pt", padding=True)
    for plan in ("parallel:11-19", "parallel:11-19x3"):
        with planned(model, plan, fuse_parallel=False):
            unfused = _logits(model, ids["input_ids"], attention_mask=ids["attention_mask"])
        with planned(model, plan):
            assert _execution(model).fused_steps == (1 if "x" not in plan else 3)
            fused = _logits(model, ids["input_ids"], attention_mask=ids["attention_mask"])
            with torch.no_grad():
                options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
                cached = model.generate(**ids, use_cache=True, **options)
                uncached = model.generate(**ids, use_cache=False, **options)
        # logits of a real model reach |30|: the bound is relative to their scale, as for export parity
        scale = unfused.abs().max().item()
        assert (fused - unfused).abs().max().item() <= max(TOLERANCE, 1e-5 * scale), plan
        assert torch.equal(cached, uncached), plan


@pytest.mark.gpu
def test_fused_on_cuda():
    """On a GPU: fp32 parity (TF32 off), bf16 close, cached == uncached, and torch.compile with a static cache."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    model = LlamaForCausalLM(config).cuda().eval()
    ids = torch.randint(0, 256, (2, 40), device="cuda")
    with planned(model, "parallel:2-5x2", fuse_parallel=False):
        unfused = _logits(model, ids)
    with planned(model, "parallel:2-5x2"):
        fused = _logits(model, ids)
        options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
        with torch.no_grad():
            cached = model.generate(ids, **options)
            uncached = model.generate(ids, use_cache=False, **options)
            model.forward = torch.compile(model.forward)
            compiled = model.generate(ids, cache_implementation="static", **options)
            del model.forward
    assert (fused - unfused).abs().max().item() <= TOLERANCE
    assert torch.equal(cached, uncached) and torch.equal(cached, compiled)
    model = model.to(torch.bfloat16)
    with planned(model, "parallel:2-5x2", fuse_parallel=False):
        unfused = _logits(model, ids).float()
    with planned(model, "parallel:2-5x2"):
        fused = _logits(model, ids).float()
    assert (fused - unfused).abs().max().item() <= 0.05 * unfused.abs().max().item()


def test_apply_no_fuse_writes_the_flag(tiny_checkpoints, tmp_path, one_thread):
    """``surgery apply --no-fuse`` checkpoints run members one by one; both load to the same numbers."""
    from transformers import AutoModelForCausalLM

    from surgery.apply.materialize import ApplyOptions, apply_plan

    outputs = {}
    for fuse in (True, False):
        out = tmp_path / f"fuse-{fuse}"
        apply_plan(str(tiny_checkpoints["llama"]), "parallel:2-5x2", out, ApplyOptions(fuse_parallel=fuse))
        model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32).eval()
        assert model.config.surgery_fuse_parallel is fuse
        assert model.inner.model.layers.fused_steps == (2 if fuse else 0)
        outputs[fuse] = _logits(model, _ids())
    assert (outputs[True] - outputs[False]).abs().max().item() <= TOLERANCE


def test_wrapper_falls_back_to_eager_attention_for_sources_without_sdpa(tmp_path, one_thread):
    """BLOOM has no SDPA kernel: its surgery class runs eager attention and matches the in-memory plan."""
    from tiny_models import tiny_config, tiny_from_config
    from transformers import AutoModelForCausalLM

    from surgery.apply.materialize import apply_plan

    source = tiny_from_config(tiny_config("bloom"), generative=True)
    source.save_pretrained(tmp_path / "bloom")
    apply_plan(str(tmp_path / "bloom"), "parallel:1-2", tmp_path / "out")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", trust_remote_code=True, dtype=torch.float32)
    assert model.inner.config._attn_implementation == "eager"
    ids = torch.randint(0, source.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with planned(source, "parallel:1-2"):
        expected = _logits(source, ids)
    assert (_logits(model.eval(), ids) - expected).abs().max().item() <= TOLERANCE


def test_mixed_attention_group_in_memory(models, one_thread):
    """A group of a full (5) and a sliding (6) Qwen2 layer runs unfused, each member with its own mask."""
    from reference import reference_output

    model, ids = models["qwen2"], _ids()
    expected = reference_output(model, "qwen2", ids, [0, 1, 2, 3, 4, (5, 6), 7])
    with planned(model, "parallel:5-6"):
        assert _execution(model).fused_steps == 0 and _execution(model).steps[5].mixed
        actual = _logits(model, ids)
    assert (actual - expected).abs().max().item() <= TOLERANCE
