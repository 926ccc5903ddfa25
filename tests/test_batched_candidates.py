"""Candidates of one layer evaluated together give exactly the sums of one-at-a-time evaluation."""
import math

import pytest

from shedder.measurement.calibration import cut_windows
from shedder.measurement.evaluator import EvalSettings, Evaluator
from shedder.plan import Plan
from shedder.removal.catalogue import Component, catalogue_of
from shedder.searching.executor import LocalExecutor
from shedder.searching.search import parse_stages, search
from tiny_models import build, token_ids

FAMILIES = ["mamba", "mamba2", "bamba", "nemotron_h", "zamba2", "falcon_h1"]


def windows(seed=2, n=6):
    return cut_windows(token_ids(batch=1, length=n * 16, seed=seed).reshape(-1), 16, source="random")


def by_layer(model, base=()):
    groups = {}
    for c in catalogue_of(model).components():
        if c not in base:
            groups.setdefault(c.layer, []).append(c)
    return groups


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_group_equals_one_at_a_time(family):
    model = build(family)
    evaluator = Evaluator(model, windows(), EvalSettings(batch_size=4, group_layers=True))
    base = [catalogue_of(model).components()[0]]
    evaluator.set_base(base)
    checked = 0
    for layer, group in by_layer(model, base).items():
        if len(group) < 2 or not evaluator.groupable(layer):
            continue
        together = evaluator.evaluate_together(group)
        alone = [evaluator.evaluate(c) for c in group]
        assert [(r.component, r.nll_sum, r.complete) for r in together] == \
               [(r.component, r.nll_sum, r.complete) for r in alone]
        checked += 1
    assert checked > 0


def test_group_stops_early_exactly_where_one_at_a_time_stops():
    model = build("mamba2")
    evaluator = Evaluator(model, windows(n=8), EvalSettings(batch_size=2, group_layers=True))
    evaluator.set_base([])
    group = by_layer(model)[1]
    alone = [evaluator.evaluate(c) for c in group]
    bound = sorted(r.nll_sum for r in alone)[len(alone) // 2] * 0.6  # some stop part-way
    together = evaluator.evaluate_together(group, bound)
    expected = [evaluator.evaluate(c, bound) for c in group]
    assert [(r.nll_sum, r.windows_done, r.complete) for r in together] == \
           [(r.nll_sum, r.windows_done, r.complete) for r in expected]
    assert any(not r.complete for r in together)


def test_groups_larger_than_the_window_cap_are_split():
    model = build("mamba2")
    evaluator = Evaluator(model, windows(), EvalSettings(batch_size=4, group_layers=True))
    evaluator.set_base([])
    group = by_layer(model)[1]
    assert [r.nll_sum for r in evaluator.evaluate_together(group, max_windows=4)] == \
           [r.nll_sum for r in evaluator.evaluate_together(group)]


KINDS = ["block", "ssm", "attn", "mlp", "ssm_heads", "mlp_channels"]


def test_score_sweep_in_layer_groups_equals_one_at_a_time_and_counts_the_same_work():
    model = build("bamba")
    components = catalogue_of(model).components(KINDS)
    grouped = LocalExecutor(Evaluator(model, windows(), EvalSettings(4, group_layers=True))).score([], components)
    single = LocalExecutor(Evaluator(model, windows(), EvalSettings(4, group_layers=False))).score([], components)
    assert grouped.base.nll_sum == single.base.nll_sum
    assert [(r.component, r.nll_sum) for r in grouped.results] == [(r.component, r.nll_sum) for r in single.results]
    assert grouped.work == single.work


def test_a_stopped_sweep_returns_the_finished_part_in_the_order_asked():
    model = build("mamba2")
    asked = catalogue_of(model).components(["block", "ssm", "ssm_heads"])
    calls = iter(range(1000))
    outcome = LocalExecutor(Evaluator(model, windows(), EvalSettings(batch_size=4, group_layers=True))).score(
        [], asked, should_stop=lambda: next(calls) >= 3)
    assert [r.component for r in outcome.results] == asked[:len(outcome.results)] and len(outcome.results) < len(asked)
    assert all(r.complete for r in outcome.results)


def test_search_with_layer_groups_picks_the_same_plan_with_the_same_perplexities():
    model = build("bamba")
    calibration, runs = windows(n=8), []
    for grouped in (True, False):
        grouping = Plan(channel_group_size=catalogue_of(model).channel_group_size)
        settings = EvalSettings(batch_size=4, group_layers=grouped)
        executor = LocalExecutor(Evaluator(model, calibration, settings, grouping))
        runs.append(search(model, calibration, parse_stages("block,ssm,attn,mlp:3"), settings=settings,
                           executor=executor))
    assert runs[0]["removed"] == runs[1]["removed"]
    assert [s["ppl"] for s in runs[0]["steps"]] == [s["ppl"] for s in runs[1]["steps"]]


def test_cpu_default_is_one_at_a_time():
    assert not Evaluator(build("mamba2"), windows(), EvalSettings(batch_size=4)).group_layers


def test_groupable_refuses_the_last_layer_and_missing_states():
    model = build("mamba2")
    evaluator = Evaluator(model, windows(), EvalSettings(batch_size=4, prefix_reuse=False, group_layers=True))
    evaluator.set_base([])
    assert not evaluator.groupable(0)
    evaluator = Evaluator(model, windows(), EvalSettings(batch_size=4, group_layers=True))
    evaluator.set_base([])
    last = len(by_layer(model)) - 1
    assert evaluator.groupable(0) and not evaluator.groupable(last)


def test_resumed_group_equals_resumed_one_at_a_time():
    model = build("mamba2")
    evaluator = Evaluator(model, windows(n=8), EvalSettings(batch_size=2, group_layers=True))
    evaluator.set_base([])
    group = by_layer(model)[1]
    screened = {r.component: r for r in evaluator.evaluate_together(group, bound=-math.inf)}
    assert all(r.windows_done == 2 for r in screened.values())  # the first batch only
    together = evaluator.evaluate_together(group, resume=screened)
    alone = [evaluator.evaluate(c, resume=screened[c]) for c in group]
    assert [(r.nll_sum, r.windows_done, r.complete) for r in together] == \
           [(r.nll_sum, r.windows_done, r.complete) for r in alone]


def test_search_steps_run_layers_together_in_fewer_forwards():
    model = build("mamba2")
    calibration, count = windows(n=8), {"forwards": 0}

    def counted(module, args):
        count["forwards"] += 1

    runs = {}
    handle = model.register_forward_pre_hook(counted)
    try:
        for grouped in (False, True):
            count["forwards"] = 0
            settings = EvalSettings(batch_size=2, group_layers=grouped)
            log = search(model, calibration, parse_stages("block,ssm,ssm_heads:2"), settings=settings)
            runs[grouped] = (log["removed"], [s["ppl"] for s in log["steps"]], count["forwards"])
    finally:
        handle.remove()
    assert runs[True][:2] == runs[False][:2]
    assert runs[True][2] < 0.75 * runs[False][2], runs  # 140 against 208 calls of the model


def test_carried_candidates_run_together_with_the_sums_of_a_fresh_evaluation():
    """States kept in a grouped run carry over to the next step, where the candidates that have them run together
    from the carried layer, with exactly the sums of an evaluator that starts them at their own layers."""
    model = build("mamba2", num_hidden_layers=6)
    calibration, settings = windows(n=8), EvalSettings(batch_size=2, group_layers=True)
    evaluator = Evaluator(model, calibration, settings)
    evaluator.set_base([])
    evaluator.carry_at([4])
    earlier = [c for layer, group in by_layer(model).items() if layer < 4 for c in group]
    list(evaluator.evaluate_many(earlier))
    pick = by_layer(model)[4][0]
    evaluator.set_base([pick])
    assert {evaluator.joins_at(c) for c in earlier} == {4}  # every one carried to layer 4
    work_before = evaluator.work
    together = evaluator.evaluate_together(earlier)
    carried_work = evaluator.work - work_before
    fresh = Evaluator(model, calibration, EvalSettings(batch_size=2, group_layers=False))
    fresh.set_base([pick])
    work_before = fresh.work
    alone = [fresh.evaluate(c) for c in earlier]
    assert [(r.component, r.nll_sum, r.complete) for r in together] == \
           [(r.component, r.nll_sum, r.complete) for r in alone]
    assert carried_work < fresh.work - work_before


def test_grouped_search_carries_states_over_for_less_work_and_the_same_plan():
    model = build("mamba2", num_hidden_layers=8)
    calibration, runs = windows(n=8), {}
    for carry_over in (False, True):
        settings = EvalSettings(batch_size=2, group_layers=True, carry_over=carry_over)
        runs[carry_over] = search(model, calibration, parse_stages("block,ssm:4"), settings=settings)
    assert runs[True]["removed"] == runs[False]["removed"]
    assert [s["ppl"] for s in runs[True]["steps"]] == [s["ppl"] for s in runs[False]["steps"]]
    assert runs[True]["work"] < runs[False]["work"]


def test_a_lone_candidate_resumes_in_fewer_forwards_with_the_same_sum():
    """After its screening, one candidate (the first of a step, or a Ray worker's) runs its remaining window batches in
    one forward of the layers after its own, instead of a forward per batch."""
    model = build("mamba2")
    evaluator = Evaluator(model, windows(n=8), EvalSettings(batch_size=2, group_layers=True))
    evaluator.set_base([])
    candidate = by_layer(model)[1][0]
    screened = evaluator.evaluate(candidate, bound=-math.inf)
    calls = {"n": 0}
    handle = model.register_forward_pre_hook(lambda module, args: calls.__setitem__("n", calls["n"] + 1))
    try:
        [together] = evaluator.evaluate_unit([candidate], resume={candidate: screened})
        forwards_together, calls["n"] = calls["n"], 0
        alone = evaluator.evaluate(candidate, resume=screened)
    finally:
        handle.remove()
    assert (together.nll_sum, together.windows_done) == (alone.nll_sum, alone.windows_done)
    assert forwards_together == 2 and calls["n"] == 3  # its own layer, then the rest; against 3 batches


def test_the_base_pass_keeps_the_same_states_in_fewer_forwards():
    """With layer groups on, the base pass runs several window batches per forward and stops before the last layer
    (whose output nothing reads); every stored state equals the batch-by-batch pass's."""
    model = build("mamba2")
    runs = {}
    for per_forward in (2, 8):
        evaluator = Evaluator(model, windows(n=8), EvalSettings(batch_size=2, group_layers=True,
                                                                 windows_per_forward=per_forward))
        calls = {"n": 0}
        handle = model.register_forward_pre_hook(lambda module, args: calls.__setitem__("n", calls["n"] + 1))
        try:
            evaluator.set_base([catalogue_of(model).components()[0]])
        finally:
            handle.remove()
        runs[per_forward] = (evaluator._states, calls["n"], evaluator.work)
    (one_by_one, forwards_one, work_one), (chunked, forwards_chunked, work_chunked) = runs[2], runs[8]
    assert one_by_one.keys() == chunked.keys()
    assert all(len(one_by_one[k]) == len(chunked[k]) == 4 for k in one_by_one)
    assert all(a.equal(b) for k in one_by_one for a, b in zip(one_by_one[k], chunked[k]))
    assert (forwards_one, forwards_chunked) == (4, 1) and work_one == work_chunked
