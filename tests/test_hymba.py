"""Hymba, on a tiny Hymba-compatible model written for these tests (``tests/hymba``; same module and
state-dict names as the published checkpoints' code), loaded with ``trust_remote_code=True`` as they are."""
import json

import pytest
import torch

from shedder.errors import ShedderError
from shedder.extraction.extract import build_extracted, extract
from shedder.formats.reference_format import from_reference, to_reference
from shedder.measurement.evaluator import EvalSettings
from shedder.model.loading import load_model
from shedder.model.trust import may_run_code
from shedder.plan import Plan
from shedder.removal.catalogue import Component, build_catalogue
from shedder.removal.masks import masked
from shedder.searching.search import Stage, naive_search, search
from tiny_hymba import load_tiny_hymba, save_tiny_hymba
from tiny_models import tiny_tokenizer, token_ids


@pytest.fixture(scope="module")
def hymba_dir(tmp_path_factory):
    return save_tiny_hymba(tmp_path_factory.mktemp("tiny-hymba"))


@pytest.fixture
def hymba(hymba_dir):
    return load_tiny_hymba(hymba_dir)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_hymba_catalogue_offers_both_branches_the_mlp_and_only_blocks_whose_keys_no_layer_reuses(hymba):
    catalogue = build_catalogue(hymba)
    assert catalogue.model_type == "hymba" and catalogue.n_layers == 4
    # global attention at 0 and 3; layers 1 and 2 share keys and values (2 reuses 1's): 1 is not offered
    assert [c.layer for c in catalogue.components(["block"])] == [0, 2, 3]
    for kind in ("attn", "ssm", "mlp"):
        assert [c.layer for c in catalogue.components([kind])] == [0, 1, 2, 3]
    assert not catalogue.components(["attn_heads", "ssm_heads"])  # both branches are normalised over all heads
    assert len(catalogue.components(["mlp_channels"])) == 4 * 8
    mixer = hymba.model.layers[0].mamba
    ssm_only = (2 * mixer.intermediate_size * mixer.in_proj.in_features + sum(
        p.numel() for m in (mixer.conv1d, mixer.x_proj, mixer.dt_proj, mixer.A_log, mixer.D, mixer.dt_layernorm,
                            mixer.B_layernorm, mixer.C_layernorm, mixer.pre_avg_layernorm2) for p in m.parameters()))
    assert catalogue.params_of(Component("ssm", 0)) == ssm_only
    assert catalogue.layer_roles() == ["SSM + attention + MLP"] * 4


def test_hymba_masks_remove_a_branch_exactly_and_restore_bit_identical(hymba):
    ids = token_ids()
    dense = logits(hymba, ids)
    seen = {}
    hook = hymba.model.layers[1].mamba.register_forward_hook(lambda m, a, out: seen.update(mixer=out[0]))
    try:
        # the reference's pruned_hymba_block_idx: the whole mixer adds nothing (out_proj has no bias)
        with masked(hymba, [Component("attn", 1), Component("ssm", 1)]):
            changed = logits(hymba, ids)
        assert torch.count_nonzero(seen["mixer"]) == 0
        with masked(hymba, [Component("attn", 1)]):
            logits(hymba, ids)
        assert torch.count_nonzero(seen["mixer"]) > 0  # the SSM branch still adds its half
    finally:
        hook.remove()
    assert not torch.equal(changed, dense)
    for component in build_catalogue(hymba).components():
        with masked(hymba, [component]):
            assert not torch.equal(logits(hymba, ids), dense), component
    assert torch.equal(logits(hymba, ids), dense)


@pytest.mark.parametrize("removed", [
    [Component("block", 2), Component("block", 3)],  # a key-value consumer and a global-attention layer
    [Component("block", 0)],
    [Component("mlp_channels", layer, group) for layer in range(4) for group in (6, 7)],  # one width everywhere
], ids=["consumer-and-global", "first", "uniform-width"])
def test_hymba_extraction_computes_what_the_masked_model_computes_and_loads_with_its_own_code(
        hymba, removed, tmp_path):
    ids = token_ids()
    plan = Plan.for_model(hymba, removed)
    with masked(hymba, plan):
        expected = logits(hymba, ids)
    assert torch.allclose(logits(build_extracted(hymba, plan), ids), expected, atol=1e-6, rtol=0)
    result = extract(hymba, tiny_tokenizer(), plan, tmp_path / "small")
    assert result.needs_remote_code and result.params_after < result.params_before
    assert (tmp_path / "small" / "modeling_hymba.py").is_file()
    assert not may_run_code(tmp_path / "small", opted_in=False)  # not our own code: the user's consent rules
    small, _ = load_model(str(tmp_path / "small"), trust_remote_code=True)
    assert torch.allclose(logits(small, ids), expected, atol=1e-6, rtol=0)


def test_hymba_extraction_refuses_parts_inside_kept_layers_and_says_to_keep_masks(hymba, tmp_path):
    for removed in ([Component("attn", 1)], [Component("ssm", 2)], [Component("mlp_channels", 0, 7)]):
        with pytest.raises(ShedderError, match="Keep using masks"):
            extract(hymba, tiny_tokenizer(), Plan.for_model(hymba, removed), tmp_path / str(removed[0]))
        assert not (tmp_path / str(removed[0])).exists()


def test_hymba_reference_format_reads_and_writes_the_hymba_pruning_keys(hymba):
    published = {"pruned_self_attn_idx": [1], "pruned_ssm_idx": [3], "pruned_hymba_block_idx": [2],
                 "pruned_moe_idx": [0], "pruned_mlp_channels": {"1": 48}}
    plan = from_reference(published, hymba)
    assert {str(c) for c in plan.removed} == {"attn@1", "ssm@3", "attn@2", "ssm@2", "mlp@0", "mlp_channels@1[7]",
                                              "mlp_channels@1[6]"}
    exported = to_reference(Plan.for_model(hymba, [Component("block", 3), Component("attn", 1),
                                                    Component("ssm", 0)]), hymba)
    assert exported == {"pruned_hymba_block_idx": [3], "pruned_moe_idx": [3], "pruned_self_attn_idx": [1],
                        "pruned_ssm_idx": [0]}
    with masked(hymba, from_reference(exported, hymba)):  # a block reads back as mixer + MLP: the same function
        again = logits(hymba, token_ids())
    with masked(hymba, [Component("block", 3), Component("attn", 1), Component("ssm", 0)]):
        assert torch.allclose(logits(hymba, token_ids()), again, atol=1e-6, rtol=0)


def test_hymba_search_equals_the_naive_search(hymba, tmp_path):
    from shedder.measurement.calibration import Windows

    windows = Windows(token_ids(batch=4, length=10, seed=3), "tokens", None)
    stages = [Stage(("block", "attn", "ssm"), 3), Stage(("mlp_channels",), 2)]
    fast = search(hymba, windows, stages, tmp_path / "search", settings=EvalSettings(batch_size=2))
    naive, _ = naive_search(hymba, windows, stages, batch_size=2)
    assert [Component.from_dict(c) for c in fast["removed"]] == naive
    assert json.loads((tmp_path / "search" / "plan.json").read_text())["model"]["model_type"] == "hymba"


def test_hymba_cli_inspect_needs_consent_for_the_checkpoint_code(hymba_dir, capsys):
    from shedder.cli import main

    assert main(["inspect", "--model", str(hymba_dir), "--trust-remote-code", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["model_type"] == "hymba" and described["n_layers"] == 4
    assert main(["inspect", "--model", str(hymba_dir)]) != 0
    assert "trust-remote-code" in capsys.readouterr().err


def test_hymba_score_gives_each_components_exact_perplexity(hymba):
    from shedder.measurement.calibration import Windows
    from shedder.measurement.perplexity import perplexity
    from shedder.searching.scoring import score

    windows = Windows(token_ids(batch=4, length=10, seed=5), "tokens", None)
    base = [Component("block", 3)]
    base_ppl, scores, _ = score(hymba, windows, ["block", "attn", "ssm", "mlp"], base, EvalSettings(batch_size=2))
    assert base_ppl == perplexity(hymba, windows, base, batch_size=2).ppl
    assert [str(s.component) for s in scores][:3] == ["block@0", "ssm@0", "attn@0"]
    for s in scores:  # a key-value consumer (layer 2) is recomputed from the layer it reads: still exact
        assert s.ppl == perplexity(hymba, windows, base + [s.component], batch_size=2).ppl, s.component
