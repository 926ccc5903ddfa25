import threading

import pytest
import torch
import torch.nn.functional as F

from reference import mamba1_without_scan, mamba2_without_scan

from shedder.errors import ShedderError
from shedder.families import describe_model
from shedder.removal.catalogue import Component, build_catalogue
from shedder.removal.masks import masked
from tiny_models import FAMILIES, build, token_ids

MAMBA1 = ["mamba", "falcon_mamba", "jamba"]
MAMBA2_PLAIN = ["mamba2", "bamba", "zamba2", "nemotron_h", "granitemoehybrid"]  # no extra multipliers


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def one_of_each_kind(model):
    chosen = {}
    for entry in build_catalogue(model):
        chosen.setdefault(entry.component.kind, entry.component)
    return list(chosen.values())


def parts_of(model, layer):
    return describe_model(model)[1][layer]


def first_layer_with(model, kind):
    return next(c.layer for c in build_catalogue(model).components([kind]))


def all_family_kind_pairs():
    return [(f, c) for f in FAMILIES for c in one_of_each_kind(build(f))]


# --- semantics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_block_returns_its_input(family):
    model = build(family)
    layer = next(c.layer for c in build_catalogue(model).components(["block"]) if c.layer < 2)
    seen = []

    def record(module, args, kwargs, out):
        hidden_in = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen.append((hidden_in, out[0] if isinstance(out, tuple) else out))

    handle = parts_of(model, layer).layer.register_forward_hook(record, with_kwargs=True)
    try:
        with masked(model, [Component("block", layer)]), torch.no_grad():
            masked_logits = model(token_ids(), use_cache=False).logits
    finally:
        handle.remove()
    (hidden_in, hidden_out), = seen
    assert hidden_out is hidden_in
    assert not torch.equal(masked_logits, logits(model, token_ids()))


BY_HAND = [(f, mamba2_without_scan) for f in MAMBA2_PLAIN] + [(f, mamba1_without_scan) for f in MAMBA1]


@pytest.mark.parametrize("family,reference", BY_HAND, ids=[f for f, _ in BY_HAND])
def test_ssm_removal_matches_the_hand_computation(family, reference):
    """Mamba-2: y = x (no D term), then gated norm with z and out_proj; Mamba-1: y = x * silu(z)."""
    model = build(family)
    layer = first_layer_with(model, "ssm")
    mixer = parts_of(model, layer).ssm
    hidden = torch.randn(2, 11, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(mixer, hidden)
        with masked(model, [Component("ssm", layer)]):
            actual = mixer(hidden)
        dense = mixer(hidden)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dense, expected, rtol=1e-5, atol=1e-6)  # the check can tell the two apart


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "llama"])
def test_removed_ssm_ignores_the_scan_parameters(family):
    """With the SSM removed, A and dt no longer matter: the scan is gone."""
    model = build(family)
    layer = first_layer_with(model, "ssm")
    mixer = parts_of(model, layer).ssm
    ids = token_ids()
    with masked(model, [Component("ssm", layer)]):
        before = logits(model, ids)
        with torch.no_grad():
            mixer.A_log.add_(0.7)
            if hasattr(mixer, "dt_bias"):
                mixer.dt_bias.add_(1.3)
            else:
                mixer.dt_proj.bias.add_(1.3)
        after = logits(model, ids)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def _output_of(module, model, ids, removed):
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append((args[0].detach(), out.detach())))
    try:
        with masked(model, removed), torch.no_grad():
            model(ids, use_cache=False)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in ("mamba", "mamba2", "falcon_mamba")])
def test_removed_attention_and_mlp_contribute_zero(family):
    model = build(family)
    catalogue = build_catalogue(model)
    for kind in ("attn", "mlp"):
        for component in catalogue.components([kind])[:2]:
            parts = parts_of(model, component.layer)
            if kind == "attn":
                modules = parts.attn_out
            else:  # Granite's MoE and shared MLP are both summed into the residual
                modules = list(parts.mlp) if isinstance(parts.mlp, torch.nn.ModuleList) else [parts.mlp]
            for module in modules:
                outputs = _output_of(module, model, token_ids(), [component])
                assert outputs and all(torch.count_nonzero(out) == 0 for _, out in outputs), component


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_groups_zero_their_slice_of_the_output_projection(family):
    model = build(family)
    catalogue = build_catalogue(model)
    for kind in ("attn_heads", "ssm_heads", "mlp_channels"):
        groups = catalogue.components([kind])
        if not groups:
            continue
        component = groups[len(groups) // 2]
        parts = parts_of(model, component.layer)
        projection = {"attn_heads": lambda: parts.attn.o_proj, "ssm_heads": lambda: parts.ssm.out_proj,
                      "mlp_channels": lambda: parts.mlp_down}[kind]()
        original = projection.weight.detach().clone()
        width = {"attn_heads": lambda: parts.attn_head_dim,
                 "ssm_heads": lambda: original.shape[1] // parts.ssm.A_log.shape[0],
                 "mlp_channels": lambda: catalogue.channel_group_size}[kind]()
        start = component.index * width
        for inputs, out in _output_of(projection, model, token_ids(), [component]):
            kept = inputs.clone()
            kept[..., start:start + width] = 0
            expected = F.linear(kept, original, projection.bias)
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


# --- reversibility, isolation, caches --------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_every_kind_changes_the_output_and_restores_bit_identical(family):
    model = build(family)
    ids = token_ids()
    dense = logits(model, ids)
    for component in one_of_each_kind(model):
        with masked(model, [component]):
            assert not torch.equal(logits(model, ids), dense), component
        assert torch.equal(logits(model, ids), dense), component
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with masked(model, one_of_each_kind(model)):
        pass
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_restored_after_an_exception_inside_the_context():
    model = build("bamba")
    ids = token_ids()
    dense = logits(model, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with masked(model, one_of_each_kind(model)):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), dense)
    assert "forward" not in model.model.layers[0].__dict__


def test_masks_nest_and_unwind_in_order():
    model = build("llama")
    ids = token_ids()
    dense = logits(model, ids)
    with masked(model, [Component("attn", 0)]):
        outer = logits(model, ids)
        with masked(model, [Component("attn_heads", 0, 1), Component("block", 2)]):
            assert not torch.equal(logits(model, ids), outer)
        assert torch.equal(logits(model, ids), outer)
    assert torch.equal(logits(model, ids), dense)


def test_other_models_and_other_layers_are_untouched():
    model_a, model_b = build("mamba2", seed=0), build("mamba2", seed=0)
    ids = token_ids()
    dense = logits(model_b, ids)
    with masked(model_a, [Component("block", 1), Component("ssm", 0)]):
        assert torch.equal(logits(model_b, ids), dense)
        assert "forward" not in model_a.backbone.layers[0].__dict__
        assert "forward" not in model_a.backbone.layers[2].__dict__
        assert type(model_a.backbone.layers[1]).forward is type(model_b.backbone.layers[1]).forward


@pytest.mark.parametrize("family,component", all_family_kind_pairs(), ids=str)
def test_generate_with_cache_equals_without_cache(family, component):
    model = build(family)
    prompt = token_ids(batch=1, length=7)
    with masked(model, [component]), torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("family", ["zamba2", "jamba", "bamba"])
def test_generate_with_cache_when_every_attention_layer_is_a_removed_block(family):
    model = build(family)
    catalogue = build_catalogue(model)
    removed = [Component("block", c.layer) for c in catalogue.components(["attn"])]
    prompt = token_ids(batch=1, length=7)
    with masked(model, removed), torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_two_threads_with_two_plans_never_mix():
    model = build("bamba")
    ids = token_ids()
    plans = {"a": [Component("ssm", 0), Component("mlp", 1)], "b": [Component("block", 1), Component("attn_heads", 1, 2)]}
    expected = {}
    for name, plan in plans.items():
        with masked(model, plan):
            expected[name] = logits(model, ids)
    failures = []

    def worker(name):
        for _ in range(15):
            with masked(model, plans[name]):
                if not torch.equal(logits(model, ids), expected[name]):
                    failures.append(name)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b", "a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    with masked(model, []):
        assert torch.equal(logits(model, ids), logits(build("bamba"), ids))


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad,message", [
    (Component("ssm", 9), "layers 0..2"),
    (Component("attn", 0), "has no 'attn'.*block, ssm, ssm_heads"),
    (Component("ssm_heads", 0, 8), "groups 0..7"),
    (Component("wings", 0), "has no 'wings'"),
])
def test_bad_plans_are_refused_and_leave_the_model_unmasked(bad, message):
    model = build("mamba2")
    ids = token_ids()
    dense = logits(model, ids)
    with pytest.raises(ShedderError, match=message):
        with masked(model, [Component("block", 0), Component("ssm", 1), bad]):
            pass
    assert torch.equal(logits(model, ids), dense)


def test_duplicates_are_refused():
    with pytest.raises(ShedderError, match="twice"):
        with masked(build("mamba"), [Component("ssm", 1), Component("ssm", 1)]):
            pass
