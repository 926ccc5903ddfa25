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
        together = evaluator.evaluate_layer(group)
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
    together = evaluator.evaluate_layer(group, bound)
    expected = [evaluator.evaluate(c, bound) for c in group]
    assert [(r.nll_sum, r.windows_done, r.complete) for r in together] == \
           [(r.nll_sum, r.windows_done, r.complete) for r in expected]
    assert any(not r.complete for r in together)


def test_groups_larger_than_the_window_cap_are_split():
    model = build("mamba2")
    evaluator = Evaluator(model, windows(), EvalSettings(batch_size=4, group_layers=True))
    evaluator.set_base([])
    group = by_layer(model)[1]
    assert [r.nll_sum for r in evaluator.evaluate_layer(group, max_windows=4)] == \
           [r.nll_sum for r in evaluator.evaluate_layer(group)]


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
    screened = {r.component: r for r in evaluator.evaluate_layer(group, bound=-math.inf)}
    assert all(r.windows_done == 2 for r in screened.values())  # the first batch only
    together = evaluator.evaluate_layer(group, resume=screened)
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
