import json

import pytest
import torch

from shedder.errors import ShedderError
from shedder.formats.reference_format import from_reference, to_reference
from shedder.measurement.calibration import cut_windows, tokenize_text
from shedder.measurement.evaluator import EvalSettings
from shedder.measurement.perplexity import perplexity
from shedder.plan import Plan
from shedder.removal.catalogue import Component, build_catalogue
from shedder.searching.scoring import block_influence, score, spearman, weight_magnitude
from shedder.searching.search import Stage, candidates_for, naive_search, parse_stages, search
from tiny_models import SAMPLE_TEXT, build, tiny_tokenizer, train_briefly


@pytest.fixture(scope="module")
def windows():
    stream = tokenize_text(SAMPLE_TEXT, tiny_tokenizer(), use_cache=False)
    return cut_windows(stream, seq_len=16, n_tokens=16 * 6, source="sample")


def deep_mamba2():
    return build("mamba2", num_hidden_layers=8)


@pytest.fixture(scope="module")
def trained_mamba2(windows):
    """Briefly trained, so that components differ in importance and early stopping has work to save."""
    return train_briefly(deep_mamba2(), windows.ids, steps=12, lr=1e-2)


def bamba():
    return build("bamba", num_hidden_layers=5, attn_layer_indices=[1, 3])


CASES = [
    ("mamba2 block+ssm", deep_mamba2, [Stage(("block", "ssm"), 6)], None),
    ("bamba hybrid recipe", bamba, [Stage(("block", "attn", "mlp"), 2), Stage(("mlp_channels",), 4), Stage(("ssm",), 2)], None),
    ("bamba channels, l1 order", bamba, [Stage(("mlp_channels",), 5), Stage(("attn", "mlp"), 2)], "l1"),
]


@pytest.mark.parametrize("name,make,stages,reorder", CASES, ids=[c[0] for c in CASES])
def test_search_equals_the_naive_search(name, make, stages, reorder, windows):
    model = make()
    grouping = Plan(channel_reorder=reorder)
    fast = search(model, windows, stages, settings=EvalSettings(batch_size=2), base=grouping)
    naive, naive_work = naive_search(model, windows, stages, batch_size=2, grouping=grouping)
    assert [Component.from_dict(c) for c in fast["removed"]] == naive
    assert fast["work"] < naive_work
    for step in fast["steps"]:  # the pick's logged perplexity is the exact perplexity of that plan
        plan = [Component.from_dict(s["removed"]) for s in fast["steps"][: step["step"] + 1]]
        exact = perplexity(model, windows, grouping.with_removed(plan), batch_size=2).ppl
        assert step["ppl"] == exact


def test_prefix_reuse_and_early_stop_each_keep_the_answer(windows, trained_mamba2):
    stages = [Stage(("block", "ssm"), 3)]
    reference = search(trained_mamba2, windows, stages, settings=EvalSettings(batch_size=1, prefix_reuse=False),
                       early_stop=False)
    for early_stop, settings in ((True, EvalSettings(batch_size=1, prefix_reuse=False)),
                                 (False, EvalSettings(batch_size=1, prefix_reuse=True)),
                                 (True, EvalSettings(batch_size=1, state_budget_bytes=1))):  # 1 byte: states kept
        other = search(trained_mamba2, windows, stages, settings=settings, early_stop=early_stop)  # every few layers
        assert other["removed"] == reference["removed"], (early_stop, settings)
        assert other["work"] < reference["work"], (early_stop, settings)


def test_carry_over_saves_work_and_changes_no_score(windows, trained_mamba2):
    """Candidates before the pick start the next step at the layer where their states were kept: every candidate's
    logged score or bound is bit for bit the same as without, for less work."""
    stages = [Stage(("block", "ssm"), 5)]
    without = search(trained_mamba2, windows, stages, settings=EvalSettings(batch_size=1, carry_over=False))
    carried = search(trained_mamba2, windows, stages, settings=EvalSettings(batch_size=1))
    assert carried["removed"] == without["removed"]
    assert [s["candidates"] for s in carried["steps"]] == [s["candidates"] for s in without["steps"]]
    assert carried["work"] < without["work"]


def test_every_candidate_is_logged_with_a_score_or_a_bound(windows, trained_mamba2):
    record = search(trained_mamba2, windows, [Stage(("block", "ssm"), 2)], settings=EvalSettings(batch_size=1))
    first = record["steps"][0]
    assert len(first["candidates"]) == 16
    stopped = [c for c in first["candidates"] if c["ppl"] is None]
    assert stopped, "early stopping never triggered"
    for c in stopped:
        assert c["ppl_lower_bound"] > first["ppl"] and c["windows_done"] < 6
    assert min(c["ppl"] for c in first["candidates"] if c["ppl"] is not None) == first["ppl"]


def test_interrupted_search_resumes_to_the_same_plan(windows, tmp_path):
    model = deep_mamba2()
    stages = parse_stages("block:2;ssm:3")
    whole = search(model, windows, stages, settings=EvalSettings(batch_size=2))
    steps_seen = []
    search(model, windows, stages, tmp_path / "run", settings=EvalSettings(batch_size=2),
           on_step=steps_seen.append, should_stop=lambda: len(steps_seen) >= 3)
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log["steps"]) == 3
    resumed = search(model, windows, stages, tmp_path / "run", settings=EvalSettings(batch_size=2))
    assert resumed["removed"] == whole["removed"]
    assert sorted(p.name for p in (tmp_path / "run" / "steps").iterdir()) == [f"step_00{i}.json" for i in range(5)]
    plan = Plan.load(tmp_path / "run" / "plan.json")
    assert [c.to_dict() for c in plan.removed] == whole["removed"]
    plan.check(model, strict_weights=True)
    with pytest.raises(ShedderError, match="other settings.*stages"):
        search(model, windows, parse_stages("block:3"), tmp_path / "run", settings=EvalSettings(batch_size=2))


def test_candidates_skip_what_earlier_removals_imply():
    catalogue = build_catalogue(bamba())
    removed = [Component("block", 0), Component("attn", 1), Component("mlp", 2)]
    candidates = candidates_for(catalogue, removed, ("block", "ssm", "attn_heads", "mlp_channels"))
    assert not any(c.layer == 0 for c in candidates)
    assert not any(c.kind == "attn_heads" and c.layer == 1 for c in candidates)
    assert not any(c.kind == "mlp_channels" and c.layer == 2 for c in candidates)
    # channel groups are offered from the tail, one per MLP, never the last remaining one
    channel_candidates = [c for c in candidates if c.kind == "mlp_channels"]
    assert channel_candidates == [Component("mlp_channels", layer, 7) for layer in (1, 3, 4)]
    six_gone = [Component("mlp_channels", 3, i) for i in range(7, 0, -1)]
    assert Component("mlp_channels", 3, 0) not in candidates_for(catalogue, six_gone, ("mlp_channels",))


def test_score_equals_perplexity_of_each_removal(windows):
    model = bamba()
    base = [Component("ssm", 0)]
    base_ppl, scores, work = score(model, windows, ["block", "attn", "mlp"], base, settings=EvalSettings(batch_size=4))
    assert base_ppl == perplexity(model, windows, base, batch_size=4).ppl
    assert len(scores) == 5 + 2 + 5
    for s in scores[::3]:
        assert s.ppl == perplexity(model, windows, base + [s.component], batch_size=4).ppl
        assert s.delta == s.ppl - base_ppl
    assert work > 0


def test_proxies_cover_their_kinds(windows):
    model = bamba()
    influence = block_influence(model, windows)
    assert set(influence) == set(build_catalogue(model).components(["block"]))
    assert all(0 <= v <= 2 for v in influence.values())
    magnitude = weight_magnitude(model)
    assert {c.kind for c in magnitude} == {"attn_heads", "ssm_heads", "mlp_channels"}


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # ranks with a tie: a = [1, 2.5, 2.5, 4], b = [1, 2, 3, 4] -> r = 0.9486832980505138
    assert spearman([1, 5, 5, 9], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_reference_format_round_trips():
    model = bamba()
    plan = Plan.for_model(model, [Component("block", 4), Component("attn", 3), Component("mlp", 0),
                                  Component("mlp_channels", 2, 7), Component("mlp_channels", 2, 6),
                                  Component("ssm", 2)])
    reference = to_reference(plan, model)
    assert reference == {"pruned_mamba_block_idx": [4], "pruned_mha_idx": [1], "pruned_mlp_idx": [0],
                         "pruned_ssm_idx": [1], "pruned_mlp_channels": {"0": 64, "1": 64, "2": 48, "3": 64, "4": 64}}
    back = from_reference(reference, model)
    assert set(back.removed) == set(plan.removed)
    assert to_reference(back, model) == reference


def test_reference_format_refuses_what_it_cannot_say():
    model = bamba()
    with pytest.raises(ShedderError, match="cannot express attn_heads"):
        to_reference(Plan.for_model(model, [Component("attn_heads", 1, 0)]), model)
    with pytest.raises(ShedderError, match="not the last groups"):
        to_reference(Plan.for_model(model, [Component("mlp_channels", 0, 3)]), model)
    with pytest.raises(ShedderError, match="pruned_ssm_idx: 7 is not one of the model's 3 'ssm'"):
        from_reference({"pruned_ssm_idx": [7]}, model)
    with pytest.raises(ShedderError, match="whole number of groups"):
        from_reference({"pruned_mlp_channels": {"0": 50}}, model)


def test_published_mamba2_config_imports_onto_a_64_layer_model():
    model = build("mamba2", num_hidden_layers=64, hidden_size=16, num_heads=4, expand=2)
    published = {"pruned_ssm_idx": [63, 54, 42, 45, 53, 57, 58, 59, 38, 56, 50, 61, 60, 43, 37, 62, 49, 34, 55, 33, 39, 35]}
    plan = from_reference(published, model)
    assert plan.removed[:2] == [Component("ssm", 63), Component("ssm", 54)] and len(plan.removed) == 22
    ids = torch.randint(0, 96, (1, 8))
    from shedder.removal.masks import masked
    with masked(model, plan), torch.no_grad():
        model(ids)


def test_rerunning_a_search_whose_stage_ran_out_of_candidates_adds_nothing(windows, tmp_path):
    model = build("mamba2")  # 3 layers: the ssm stage ends after 3 steps, not 5
    stages = parse_stages("ssm:5;block:1")
    first = search(model, windows, stages, tmp_path / "run", settings=EvalSettings(batch_size=2))
    assert [c["kind"] for c in first["removed"]] == ["ssm", "ssm", "ssm", "block"]
    again = search(model, windows, stages, tmp_path / "run", settings=EvalSettings(batch_size=2))
    assert again["removed"] == first["removed"] and again["work"] == first["work"]


def test_a_bound_read_after_every_batch_stops_where_a_fixed_one_would(windows, trained_mamba2):
    from shedder.measurement.evaluator import Evaluator

    evaluator = Evaluator(trained_mamba2, windows, EvalSettings(batch_size=1))
    evaluator.set_base([])
    candidate = Component("ssm", 3)
    full = evaluator.evaluate(candidate)
    first = evaluator.evaluate(candidate, bound=-float("inf"))  # one batch
    bounds = iter([float("inf"), first.nll_sum * 1.5])  # a bound that falls after the first batch
    falling = evaluator.evaluate(candidate, lambda: next(bounds, first.nll_sum * 1.5))
    fixed = evaluator.evaluate(candidate, bound=first.nll_sum * 1.5)
    assert falling == fixed and not fixed.complete and fixed.windows_done < full.windows_done
    assert evaluator.evaluate(candidate, lambda: float("inf"), resume=first) == full  # never falls: complete, exact
