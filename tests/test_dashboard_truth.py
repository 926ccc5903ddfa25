"""The dashboard's pictures and numbers tell the truth: tested from the figures' data (each layer drawn once
with what it holds, one colour scale per page), one evaluation setting giving the same number for the same
plan on every page, noise shown (paired accuracy differences, latency spread) and plans that describe
themselves."""
import json
import math
import statistics
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import store
from app.figures import (PART_OF_KIND, REMOVED_COLOUR, architecture_strip, group_heatmap, percent_scale,
                         signed_log_percent)
from app.state import ModelChoice
from shedder.errors import ShedderError
from shedder.measurement.evaluation import AccuracyReport, TaskResult, average_difference, paired_difference
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.removal.masks import catalogue_of
from shedder.speed.latency import compare_latency, latency_verdict, spread
from tiny_models import FAMILIES, build

from test_app import APP, bamba_dir, finish_job  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba saved as a folder)


# --- the layer strip ------------------------------------------------------------------------------

def drawn_cells(fig) -> list[tuple[int, str, float]]:
    """(layer, part, width) of every bar cell the figure draws."""
    cells = []
    for trace in fig.data:
        if trace.type != "bar" or trace.x is None or trace.x == (None,):
            continue
        widths = trace.width if trace.width is not None else [None] * len(trace.x)
        cells += [(x, trace.name, w) for x, w in zip(trace.x, widths)]
    return cells


def true_parts(model) -> dict[int, set[str]]:
    """What each layer holds, from the catalogue's components (not from the figure module)."""
    cat = catalogue_of(model)
    parts = {layer: set() for layer in range(cat.n_layers)}
    for kind, part in {"ssm": "SSM", "attn": "attention", "mlp": "MLP"}.items():
        for c in cat.components([kind]):
            parts[c.layer].add(part)
    return {layer: p or {"block"} for layer, p in parts.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_strip_draws_every_layer_once_with_what_it_holds(family):
    model = build(family)
    cells = drawn_cells(architecture_strip(catalogue_of(model)))
    assert len(cells) == len({(layer, part) for layer, part, _ in cells}), "a cell drawn twice"
    drawn = {}
    for layer, part, width in cells:
        drawn.setdefault(layer, set()).add(part)
        assert width is not None and 0 < width < 1, "a bar's width left to plotly (it spans several layers)"
    assert drawn == true_parts(model)


def test_strip_of_a_hybrid_with_sparse_attention_draws_attention_only_where_it_is():
    # demo-hybrid's shape: attention at layers 2 and 5 of 8 (drawn over 1-3 and 4-6 before)
    model = build("bamba", num_hidden_layers=8, attn_layer_indices=[2, 5])
    fig = architecture_strip(catalogue_of(model))
    attention = next(t for t in fig.data if t.name == "attention")
    assert list(attention.x) == [2, 5] and list(attention.width) == [0.9, 0.9]
    ssm = next(t for t in fig.data if t.name == "SSM")
    assert list(ssm.x) == [0, 1, 3, 4, 6, 7]
    assert fig.layout.barmode == "stack"


def test_strip_greys_and_crosses_what_the_plan_removes():
    model = build("bamba")
    cat = catalogue_of(model)
    fig = architecture_strip(cat, [Component("attn", 1), Component("block", 2), Component("ssm_heads", 0, 1)])
    colours = {(x, t.name): (c, p) for t in fig.data if t.type == "bar" and t.x != (None,)
               for x, c, p in zip(t.x, t.marker.color, t.marker.pattern.shape)}
    assert colours[(1, "attention")] == (REMOVED_COLOUR, "x")
    assert colours[(1, "MLP")][0] != REMOVED_COLOUR
    assert colours[(2, "SSM")] == (REMOVED_COLOUR, "x") and colours[(2, "MLP")] == (REMOVED_COLOUR, "x")
    assert colours[(0, "SSM")][1] == "/" and colours[(0, "SSM")][0] != REMOVED_COLOUR  # one head of eight
    assert colours[(0, "MLP")] == (colours[(0, "MLP")][0], "") and colours[(0, "MLP")][0] != REMOVED_COLOUR
    assert any(t.name == "removed in the current plan" for t in fig.data)


def test_part_names_cover_every_sub_block_kind_but_block():
    assert set(PART_OF_KIND) == {"ssm", "attn", "mlp"}


# --- heatmaps ---------------------------------------------------------------------------------------

def test_percent_scale_is_centred_on_no_change_and_keeps_negative_changes():
    scale = percent_scale([-0.5, 3.0, 250.0])
    assert scale.zmin == -scale.zmax and scale.zmax == pytest.approx(signed_log_percent(250.0))
    assert signed_log_percent(-0.5) < 0 < signed_log_percent(0.5)
    assert signed_log_percent(0.0) == 0
    assert "0" in scale.ticktext and "+100%" in scale.ticktext and "-1%" in scale.ticktext
    assert "%" in scale.title


def test_group_heatmap_rows_are_real_layers_and_columns_say_what_they_are():
    fig = group_heatmap("attn_heads", [2, 5], 4, {(2, 0): 1.0, (5, 3): -1.0}, {}, percent_scale([10.0]),
                        [Component("attn_heads", 5, 3)])
    heat = fig.data[0]
    assert list(heat.y) == ["layer 2", "layer 5"] and list(heat.x) == ["0", "1", "2", "3"]
    assert fig.layout.xaxis.title.text == "head" and fig.layout.yaxis.type == "category"
    marks = next(t for t in fig.data if t.name == "removed in the current plan")
    assert list(zip(marks.x, marks.y)) == [("3", "layer 5")]


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def open_page(model_dir, page: str, plan: Plan | None = None, timeout: int = 240) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["model_choice"] = ModelChoice(str(model_dir))
    if plan is not None:
        at.session_state["plans"] = {str(model_dir): plan}
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def assert_nothing_raw(at: AppTest) -> None:
    """No table cell left empty as None or NaN, no "None" / "nan" / "1 components" in any text shown."""
    import re

    for frame in at.dataframe:
        table = frame.value
        assert not table.isna().any().any(), table
        assert not table.astype(str).isin(["None", "nan", "NaN"]).any().any(), table
    texts = [e.value for kind in ("markdown", "caption", "info", "success", "warning") for e in getattr(at, kind)]
    for metric in at.metric:  # a metric's label is a heading over its value ("components removed" over "1")
        assert not re.search(r"\bNone\b|\bnan\b", f"{metric.value} {metric.label} {metric.proto.delta}"), metric
    for text in texts:
        assert not re.search(r"\bNone\b|\bnan\b|\b1 (components|plans|removals)\b", str(text)), text


def test_sensitivity_heatmaps_share_one_colour_scale_that_says_what_it_means(bamba_dir):
    plan = Plan([Component("block", 0), Component("attn_heads", 1, 2)], "bamba", 3)
    at = open_page(bamba_dir, "pages/sensitivity.py", plan)
    kinds = next(m for m in at.multiselect if m.label == "Components")
    kinds.set_value(list(kinds.options)).run()
    next(b for b in at.button if b.label in ("Compute", "Recompute")).click().run()
    finish_job(at, "sensitivity")
    heatmaps = [(fig, t) for fig in charts(at) for t in fig["data"] if t["type"] == "heatmap"]
    assert len(heatmaps) == 4  # layers x components, ssm_heads, attn_heads, mlp_channels
    ranges = {(t["zmin"], t["zmax"], json.dumps(t["colorscale"])) for _, t in heatmaps}
    assert len(ranges) == 1, "each chart has its own colour range"
    zmin, zmax, _ = ranges.pop()
    assert zmin == -zmax
    assert all("%" in t["colorbar"]["title"]["text"] for _, t in heatmaps)
    assert any("lighter = cheaper to remove" in c.value and "blue = removal lowers" in c.value for c in at.caption)

    assert_nothing_raw(at)
    # every coloured cell is that component's measured relative change, on the stated log scale
    by_fig = {t["name"]: (fig, t) for fig, t in heatmaps}
    assert set(by_fig) == {"components", "ssm_heads", "attn_heads", "mlp_channels"}
    block_fig, block_heat = by_fig["components"]
    assert block_fig["layout"]["yaxis"]["type"] == "category"
    table = at.dataframe[-1].value  # least important first: component, perplexity, change, change (%)
    base = float(metrics(at)["perplexity with nothing removed"])
    for _, row in table.iterrows():
        kind, rest = row["component"].split("@")
        if "[" in rest:
            continue
        layer = int(rest)
        z = block_heat["z"][block_heat["y"].index(kind)][layer]
        assert z == pytest.approx(signed_log_percent(100 * row["change"] / base), abs=2e-3)

    heads = by_fig["attn_heads"]
    rows = heads[1]["y"]
    assert heads[0]["layout"]["xaxis"]["title"]["text"] == "head"
    assert by_fig["mlp_channels"][0]["layout"]["xaxis"]["title"]["text"] == "channel group"
    cat_layers = sorted({c.layer for c in catalogue_of(build("bamba")).components(["attn_heads"])})
    assert rows == [f"layer {layer}" for layer in cat_layers]
    # every cell with a value can be clicked (an invisible marker on it names its component)
    targets = [t for t in heads[0]["data"] if t.get("name") == "click to toggle"]
    assert targets and {json.loads(c)["kind"] for c in targets[0]["customdata"]} == {"attn_heads"}
    assert len(targets[0]["x"]) == sum(v is not None for row in heads[1]["z"] for v in row)
    marks = [t for t in heads[0]["data"] if t.get("name") == "removed in the current plan"]
    assert marks and list(zip(marks[0]["x"], marks[0]["y"])) == [("2", "layer 1")]
    crossed = [t for t in block_fig["data"] if t.get("name") == "removed in the current plan"]
    assert crossed and set(crossed[0]["x"]) == {0}  # every part of the removed block 0, nothing else

    # a proxy: one linear scale over the charts again
    next(r for r in at.main.radio if r.label == "Colour by").set_value("weight magnitude").run()
    assert not at.exception, at.exception
    heatmaps = [t for fig in charts(at) for t in fig["data"] if t["type"] == "heatmap"]
    assert len({(t["zmin"], t["zmax"]) for t in heatmaps}) == 1


# --- one evaluation setting, the same number on every page ----------------------------------------

def sidebar_setting(at: AppTest, tokens: int, window: int) -> None:
    next(s for s in at.select_slider if s.label == "Evaluation tokens").set_value(tokens)
    next(s for s in at.select_slider if s.label == "Evaluation window").set_value(window)
    at.run()
    assert not at.exception, at.exception


def test_same_plan_same_setting_same_number_on_every_page(bamba_dir):
    from shedder.measurement.calibration import calibration_windows
    from shedder.measurement.perplexity import perplexity
    from shedder.model.loading import load_model

    at = open_page(bamba_dir, "pages/model.py")
    sidebar_setting(at, 1024, 128)  # changed once, in the sidebar
    assert any("wiki-test, 1,024 tokens, windows of 128" in c.value for c in at.caption)
    dense_model_page = metrics(at)["perplexity"]
    model, tokenizer = load_model(str(bamba_dir))
    windows = calibration_windows("wiki-test", tokenizer, 128, 1024)
    assert float(dense_model_page) == pytest.approx(perplexity(model, windows).ppl, abs=6e-4)

    at.switch_page("pages/sensitivity.py").run()
    next(m for m in at.multiselect if m.label == "Components").set_value(["block"]).run()
    next(b for b in at.button if b.label in ("Compute", "Recompute")).click().run()
    finish_job(at, "sensitivity")
    assert metrics(at)["perplexity with nothing removed"] == dense_model_page

    at.switch_page("pages/playground.py").run()
    assert not at.exception, at.exception
    assert metrics(at)["perplexity"] == dense_model_page
    next(p for p in at.pills if p.label.startswith("block:")).set_value([1]).run()
    pruned = metrics(at)["perplexity"]
    assert pruned != dense_model_page
    assert float(pruned) == pytest.approx(perplexity(model, windows, [Component("block", 1)]).ppl, abs=6e-4)

    at.switch_page("pages/export.py").run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Save as a named plan").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert_nothing_raw(at)
    shown = dict(zip(table["plan"], table["perplexity"]))
    assert f"{shown['dense']:.3f}" == dense_model_page and f"{shown['plan-1']:.3f}" == pruned

    at.switch_page("pages/search.py").run()
    next(m for m in at.multiselect if m.label == "Candidates").set_value(["block"]).run()  # then Steps has its range
    next(n for n in at.number_input if n.label == "Steps").set_value(1)
    next(s for s in at.selectbox if s.label == "Calibration text").set_value("wiki")
    next(s for s in at.select_slider if s.label == "Tokens").set_value(1024)
    next(s for s in at.select_slider if s.label == "Window").set_value(128)
    at.run()
    next(b for b in at.button if b.label == "Run search").click().run()
    assert not at.exception, at.exception
    finish_job(at, "search")  # a background job; the page shows its steps once it ends
    searched = metrics(at)
    step = store.step_plan(Path(next(iter(at.session_state["search_runs"].values()))), 0)
    wiki = calibration_windows("wiki", tokenizer, 128, 1024)
    assert float(searched["search perplexity"]) == pytest.approx(perplexity(model, wiki, step.removed).ppl, abs=6e-4)
    assert float(searched["perplexity"]) == pytest.approx(perplexity(model, windows, step.removed).ppl, abs=6e-4)
    assert any("Searched on wiki, 1,024 tokens, windows of 128; shown on wiki-test, 1,024 tokens, windows of 128"
               in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Use in Playground").click().run()
    at.switch_page("pages/playground.py").run()
    assert metrics(at)["perplexity"] == searched["perplexity"]  # the step's plan: the same number there
    assert_nothing_raw(at)


# --- noise: paired accuracy differences, latency spread ---------------------------------------------

def task(per_doc: dict[int, float], name: str = "piqa") -> TaskResult:
    docs = {i: {"acc": v} for i, v in per_doc.items()}
    values = list(per_doc.values())
    return TaskResult(name, "validation", "test", len(docs), 100, {"acc": statistics.fmean(values)}, {"acc": None},
                      "acc", docs)


def test_paired_difference_is_the_mean_per_document_change_with_its_standard_error():
    dense = task({i: 1.0 for i in range(40)})
    pruned = task({i: (0.0 if i < 10 else 1.0) for i in range(40)})  # ten documents lost
    d = paired_difference(pruned, dense)
    diffs = [-1.0] * 10 + [0.0] * 30
    assert d.difference == pytest.approx(-0.25)
    assert d.stderr == pytest.approx(statistics.stdev(diffs) / math.sqrt(40))
    assert d.significant and d.describe().startswith("-0.250 ± ")
    same = paired_difference(dense, dense)
    assert same.difference == 0 and not same.significant
    one_lost = paired_difference(task({i: (0.0 if i == 0 else 1.0) for i in range(40)}), dense)
    assert not one_lost.significant and "not significant" in one_lost.describe()
    with pytest.raises(ShedderError, match="different documents"):
        paired_difference(task({i: 1.0 for i in range(1, 41)}), dense)


def test_average_difference_and_reports_read_back():
    dense = AccuracyReport({"piqa": task({i: 1.0 for i in range(30)}),
                            "arc_easy": task({i: float(i % 2) for i in range(30)}, "arc_easy")}, "offline", 30, 0)
    pruned = AccuracyReport({"piqa": task({i: float(i >= 6) for i in range(30)}),
                             "arc_easy": task({i: float(i % 2) for i in range(30)}, "arc_easy")}, "offline", 30, 0)
    again = AccuracyReport.from_dict(json.loads(json.dumps(pruned.to_dict(with_docs=True))))
    paired = again.paired_against(AccuracyReport.from_dict(json.loads(json.dumps(dense.to_dict(with_docs=True)))))
    assert paired["piqa"].difference == pytest.approx(-0.2) and paired["arc_easy"].difference == 0
    average = paired["average"]
    assert average.difference == pytest.approx(-0.1)
    assert average.stderr == pytest.approx(math.hypot(paired["piqa"].stderr, 0.0) / 2)
    assert average_difference([paired["piqa"]]).difference == paired["piqa"].difference


def test_spread_and_the_flags_for_noisy_or_too_good_latency():
    s = spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["runs"]) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    steady = spread([1.30, 1.31, 1.29, 1.30, 1.32])
    assert latency_verdict(steady, ideal=1.25) == []
    assert any("wide spread" in n for n in latency_verdict(spread([1.18, 1.30, 2.03, 1.25, 1.6]), ideal=1.3))
    assert any("beyond the cost model's ideal" in n for n in latency_verdict(spread([2.38] * 5), ideal=1.2))


def test_compare_latency_times_both_models_in_turns_with_the_ideal():
    model = build("mamba2")
    plan = Plan.for_model(model, [Component("block", 1)])
    result = compare_latency(model, plan, prompt_len=8, new_tokens=3, repeats=5, warmup=1)
    assert result["speedup"]["runs"] == result["dense_ms"]["runs"] == result["extracted_ms"]["runs"] == 5
    assert result["speedup"]["q1"] <= result["speedup"]["median"] <= result["speedup"]["q3"]
    assert 1.0 < result["ideal_speedup"] < 2.0  # one of three blocks gone
    assert result["params"] < sum(p.numel() for p in model.parameters())
    with pytest.raises(ShedderError, match="at least 3"):
        compare_latency(model, plan, 8, 3, repeats=2)


# --- plans that describe themselves ---------------------------------------------------------------

def describe_plan_script(model_dir: str):
    import streamlit as st

    from app.measures import plan_file
    from app.state import ModelChoice, current_plan, evaluation_setting, new_plan, set_plan
    from shedder.removal.catalogue import Component

    choice = ModelChoice(model_dir)
    set_plan(choice, new_plan(choice, [Component("block", 1)]))
    st.code(plan_file(choice, current_plan(choice), evaluation_setting()))


def test_a_downloaded_plan_names_its_model_setting_and_measurements(bamba_dir):
    at = AppTest.from_function(describe_plan_script, args=(str(bamba_dir),), default_timeout=240).run()
    assert not at.exception, at.exception
    data = json.loads(at.code[0].value)
    about = data["about"]
    assert about["model"]["path"].endswith(bamba_dir.name) and about["model"]["model_type"] == "bamba"
    assert about["evaluation"] == {"text": "wiki-test", "tokens": 2048, "seq_len": 256}
    measured = about["measured"]["perplexity"]
    assert measured["described"] == "wiki-test, 2,048 tokens, windows of 256" and measured["value"] > 1
    assert Plan.from_dict(data).extra["about"] == about  # read back, it still says what it is
    assert [c.to_dict() for c in Plan.from_dict(data).removed] == [{"kind": "block", "layer": 1}]
