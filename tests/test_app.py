"""The dashboard, driven through streamlit's AppTest on a tiny saved model."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.state import ModelChoice
from tiny_models import save_tiny

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


@pytest.fixture(scope="module")
def bamba_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-bamba")
    save_tiny("bamba", directory)
    return directory


def test_model_page_shows_architecture_parameters_and_perplexity(bamba_dir):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["architecture"] == "bamba" and metrics["layers"] == "3"
    assert float(metrics["perplexity"]) > 1
    kinds = set(at.dataframe[0].value["kind"])
    assert {"block", "ssm", "attn", "mlp", "mlp_channels"} <= kinds


def test_bad_model_folder_shows_an_error_not_a_traceback(tmp_path):
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["model_choice"] = ModelChoice(str(tmp_path))
    at.run()
    assert not at.exception
    assert "no config.json" in at.error[0].value


def test_opens_on_the_method_and_the_embedded_demo_model_by_default():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Mamba-Shedder in a minute"
    assert any(s.value == "One layer of demo-mamba2" for s in at.subheader)
    at.switch_page("pages/model.py").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["architecture"] == "mamba2" and metrics["layers"] == "12"
    assert 5 < float(metrics["perplexity"]) < 500


def finish_job(at, name: str, timeout: float = 240) -> None:
    """Rerun the page until this session's background job ``name`` has ended, then once more (its results)."""
    run_until(at, lambda: name in at.session_state["jobs"] and not at.session_state["jobs"][name].running, timeout)
    at.run()
    assert not at.exception, at.exception


def run_until(at, done, timeout: float = 240) -> None:
    """Rerun the page until ``done()`` (a background job finished and the page shows it)."""
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the background job did not finish"
        time.sleep(0.5)
        at.run()
        assert not at.exception, at.exception


def test_sensitivity_page_computes_caches_and_switches_to_a_proxy(bamba_dir, tmp_path):
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/sensitivity.py").run()
    assert not at.exception, at.exception
    assert "Press Compute" in at.info[0].value
    at.button(key="sensitivity-compute").click().run()  # scored in a background job; the page follows it
    assert not at.exception, at.exception
    finish_job(at, "sensitivity")
    assert any(s.value == "Least important first" for s in at.subheader)
    assert float(at.metric[0].value) > 1
    table = at.dataframe[-1].value
    assert set(table["kind"]) == {"block", "ssm", "attn", "mlp"} and len(table) == 3 + 2 + 1 + 3
    assert list(table["perplexity"]) == sorted(table["perplexity"])
    colour = next(r for r in at.main.radio if r.label == "Colour by")
    colour.set_value("block influence (1 - cos)").run()
    assert not at.exception, at.exception
    assert at.main.radio[0].value == "block influence (1 - cos)"
    again = AppTest.from_file(APP, default_timeout=60)  # a new session finds the stored result
    again.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    again.switch_page("pages/sensitivity.py").run()
    assert not again.info and again.button(key="sensitivity-recompute").label == "Recompute"


def test_playground_toggles_change_perplexity_and_plan(bamba_dir):
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/playground.py").run()
    assert not at.exception, at.exception
    metrics = {m.label: m for m in at.metric}
    dense = float(metrics["perplexity"].value)
    assert metrics["components removed"].value == "0"
    at.multiselect[0].select(at.multiselect[0].options[0]).run()  # one attention head / channel group
    assert not at.exception, at.exception
    metrics = {m.label: m for m in at.metric}
    assert metrics["components removed"].value == "1"
    assert float(metrics["perplexity"].value) != dense
    assert int(metrics["parameters freed"].value.split()[0].replace(",", "")) > 0


@pytest.mark.parametrize("name", ["demo-mamba2", "demo-hybrid"])
def test_the_shipped_tour_is_fresh_for_the_shipped_demo_model(name):
    from shedder.formats.tour import load_tour
    from shedder.model.loading import ZOO_DIR

    assert load_tour(ZOO_DIR / name) is not None, (
        f"zoo/{name}/tour.json does not match the model's weight files: run scripts/make_tour.py {name}")


def test_the_hybrid_tour_maps_attention_and_mlps_and_hands_its_plan_to_the_hybrid():
    import json

    from shedder.model.loading import ZOO_DIR

    tour = json.loads((ZOO_DIR / "demo-hybrid" / "tour.json").read_text())
    assert tour["sensitivity"]["kinds"] == ["block", "ssm", "attn", "mlp"]
    at = AppTest.from_file(APP, default_timeout=240)
    at.switch_page("pages/tour.py").run()
    at.radio(key="tour_model").set_value("demo-hybrid").run()
    assert not at.exception, at.exception
    assert not at.info, "the shipped results are fresh: nothing to measure"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["architecture"] == "bamba"
    assert metrics["perplexity"] == f"{tour['sensitivity']['base_ppl']:.3f}"
    assert any("**attention** sub-block" in m.value for m in at.markdown)
    next(b for b in at.button if b.label == "Next").click().run()
    (chart,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = next(t for t in chart["data"] if t["type"] == "heatmap")
    assert set(heat["y"]) == {"block", "ssm", "attn", "mlp"}

    at.session_state["tour_step"] = 4
    at.run()
    next(b for b in at.button if b.label.startswith("Use the plan after step")).click().run()
    assert not at.exception, at.exception
    at.switch_page("pages/playground.py").run()  # where the button took the user: the hybrid, with the tour's plan
    steps = tour["search"]["steps"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["components removed"] == str(len(steps))
    assert metrics["perplexity"] == f"{steps[-1]['ppl']:.3f}"


def test_the_guided_tour_opens_from_the_shipped_results_and_hands_its_plans_on():
    import json
    import time

    from app.figures import signed_log_percent
    from shedder.model.loading import ZOO_DIR

    tour = json.loads((ZOO_DIR / "demo-mamba2" / "tour.json").read_text())
    base = tour["sensitivity"]["base_ppl"]
    at = AppTest.from_file(APP, default_timeout=240)
    start = time.perf_counter()
    at.switch_page("pages/tour.py").run()
    assert not at.exception, at.exception
    assert {m.label: m.value for m in at.metric}["perplexity"] == f"{base:.3f}"
    assert not at.info, "the shipped results are fresh: nothing to measure"
    next(b for b in at.button if b.label == "Next").click().run()
    (chart,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    heat = next(t for t in chart["data"] if t["type"] == "heatmap")
    for row in tour["sensitivity"]["scores"]:  # each cell is the shipped relative change, on the page's log scale
        z = heat["z"][heat["y"].index(row["kind"])][row["layer"]]
        assert z == pytest.approx(signed_log_percent(100 * (row["ppl"] - base) / base), abs=1e-9)
    print(f"tour: two steps in {time.perf_counter() - start:.2f} s")

    at.session_state["tour_step"] = 4
    at.run()
    next(b for b in at.button if b.label.startswith("Use the plan after step")).click().run()
    assert not at.exception, at.exception
    steps = tour["search"]["steps"]
    at.switch_page("pages/playground.py").run()  # where the button took the user
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["components removed"] == str(len(steps))
    assert metrics["perplexity"] == f"{steps[-1]['ppl']:.3f}"  # the search ran on the evaluation setting itself
