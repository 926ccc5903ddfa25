"""Playground, Search and Export & compare pages, driven through AppTest on tiny saved models: every
widget used here starts real computation through the library."""
import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from transformers import AutoModelForCausalLM

from app.state import ModelChoice
from shedder.measurement.calibration import calibration_windows
from shedder.measurement.evaluation import evaluate_accuracy
from shedder.measurement.perplexity import perplexity
from shedder.model.loading import load_model
from shedder.plan import Plan
from shedder.removal.catalogue import Component

from test_app import APP, bamba_dir, finish_job  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba saved as a folder)


def open_page(model_dir, page: str, timeout: int = 240) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["model_choice"] = ModelChoice(str(model_dir))
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def pills(at: AppTest, kind: str):
    return next(p for p in at.pills if p.label.startswith(f"{kind}:"))


def test_playground_toggles_measure_latency_and_accuracy(bamba_dir):
    at = open_page(bamba_dir, "pages/playground.py")
    dense = float(metrics(at)["perplexity"])
    assert metrics(at)["components removed"] == "0"
    assert {p.label.split(":")[0] for p in at.pills} == {"block", "ssm", "attn", "mlp"}

    pills(at, "block").set_value([0]).run()
    assert not at.exception, at.exception
    shown = metrics(at)
    assert shown["components removed"] == "1" and float(shown["perplexity"]) != dense
    model, tokenizer = load_model(str(bamba_dir))
    windows = calibration_windows("wiki-test", tokenizer, 256, 2048)
    assert float(shown["perplexity"]) == pytest.approx(perplexity(model, windows, [Component("block", 0)]).ppl, abs=6e-4)

    freed = metrics(at)["parameters freed"]
    pills(at, "ssm").set_value([0]).run()  # the SSM of the removed block: no effect, not counted again
    assert metrics(at)["components removed"] == "2" and metrics(at)["perplexity"] == shown["perplexity"]
    assert metrics(at)["parameters freed"] == freed
    assert any(c.value.startswith("No effect: ssm@0") for c in at.caption)
    pills(at, "ssm").set_value([]).run()

    # latency and accuracy refine in the background after the change, with no click
    tasks = next(m for m in at.multiselect if m.label == "Zero-shot tasks")
    tasks.set_value(["piqa"])
    next(n for n in at.number_input if n.label == "Documents per task").set_value(5)
    at.run()
    finish_job(at, "refine")
    assert at.session_state["jobs"]["refine"].state == "done"
    timed = metrics(at)
    assert float(timed["speedup"].removesuffix("x")) > 0 and timed["prefill + decode"].endswith(" ms")
    table = next(d.value for d in at.dataframe if "± stderr" in d.value.columns)
    assert list(table["task"]) == ["piqa"] and set(table["documents"]) == {5}
    direct = evaluate_accuracy(model, tokenizer, ["piqa"], [Component("block", 0)], limit=5).tasks["piqa"]
    assert table["pruned"][0] == direct.paper_value and table["± stderr"][0] == direct.stderr[direct.paper_metric]
    assert not any("Refining" in c.value for c in at.caption)  # final numbers, no longer marked refining


def test_the_next_toggle_cancels_the_running_refinement_and_never_waits_for_it(bamba_dir):
    at = open_page(bamba_dir, "pages/playground.py")
    next(n for n in at.number_input if n.label == "Documents per task").set_value(300).run()  # long enough to catch
    pills(at, "block").set_value([0]).run()
    first = at.session_state["jobs"]["refine"]
    assert first.running
    start = time.perf_counter()
    pills(at, "mlp").set_value([2]).run()
    toggle_seconds = time.perf_counter() - start
    assert not at.exception, at.exception
    second = at.session_state["jobs"]["refine"]
    assert second is not first and second.running and first.cancelled()
    assert metrics(at)["components removed"] == "2"
    assert first.wait(10) and first.state == "cancelled"  # stopped at its next layer or timed pair
    assert toggle_seconds < 30
    second.cancel()
    assert second.wait(10)


def test_search_runs_shows_steps_and_hands_a_step_to_the_playground(bamba_dir):
    at = open_page(bamba_dir, "pages/search.py")
    assert "No search of this model yet" in at.info[0].value
    next(m for m in at.multiselect if m.label == "Candidates").set_value(["block", "ssm"])
    next(n for n in at.number_input if n.label == "Steps").set_value(2)
    next(s for s in at.select_slider if s.label == "Tokens").set_value(1024)
    next(s for s in at.select_slider if s.label == "Window").set_value(128)
    at.run()
    button(at, "Run search").click().run()
    assert not at.exception, at.exception
    finish_job(at, "search")  # a background job; the page shows its steps once it ends
    (run_dir,) = at.session_state["search_runs"].values()
    log = json.loads((Path(run_dir) / "log.json").read_text())
    assert len(log["steps"]) == 2
    step2 = log["steps"][1]
    assert float(metrics(at)["search perplexity"]) == pytest.approx(step2["ppl"], abs=6e-4)
    assert metrics(at)["components removed"] == "2"
    assert at.slider[0].value == 2 and at.slider[0].max == 2
    assert button(at, "Finished").disabled  # the same settings now name the finished run

    button(at, "Use in Playground").click().run()
    assert not at.exception, at.exception
    at.switch_page("pages/playground.py").run()
    assert not at.exception, at.exception
    assert metrics(at)["components removed"] == "2"
    next(s for s in at.selectbox if s.label == "Evaluation text").set_value("wiki")
    next(s for s in at.select_slider if s.label == "Evaluation tokens").set_value(1024)
    next(s for s in at.select_slider if s.label == "Evaluation window").set_value(128)
    at.run()
    # the Playground measures the step's plan on the search's calibration windows: the same number
    assert float(metrics(at)["perplexity"]) == pytest.approx(step2["ppl"], abs=6e-4)

    other = open_page(bamba_dir, "pages/search.py")  # another session has a workspace of its own: not there
    assert "No search of this model yet" in other.info[0].value
    # the same session reloaded (its workspace in the page's address) finds the finished search on disk
    again = AppTest.from_file(APP, default_timeout=240)
    again.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    again.query_params["workspace"] = at.session_state["workspace"]
    again.switch_page("pages/search.py").run()
    assert not again.exception, again.exception
    assert again.session_state["workspace"] == at.session_state["workspace"]
    assert metrics(again)["components removed"] == "2"
    again.slider[0].set_value(1).run()
    assert metrics(again)["components removed"] == "1"
    assert float(metrics(again)["search perplexity"]) == pytest.approx(log["steps"][0]["ppl"], abs=6e-4)


def test_export_uploads_extracts_saves_and_compares(bamba_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(tmp_path))
    at = open_page(bamba_dir, "pages/export.py")
    assert "Nothing is removed yet" in at.info[0].value
    model, _ = load_model(str(bamba_dir))

    other = Plan([Component("block", 5)], "bamba", 8)
    at.file_uploader[0].set_value(("other.json", json.dumps(other.to_dict()).encode(), "application/json")).run()
    assert "does not fit" in at.error[0].value and "8 layers" in at.error[0].value

    heads = Plan.for_model(model, [Component("attn_heads", 1, 0)])
    at.file_uploader[0].set_value(("heads.json", json.dumps(heads.to_dict()).encode(), "application/json")).run()
    assert not at.exception, at.exception
    assert "fits this model: 1 removals" in at.success[0].value
    button(at, "Make it the current plan").click().run()
    assert not at.exception, at.exception
    assert any("cannot express attn_heads" in w.value for w in at.warning)  # the reference format refuses heads

    reference = {"pruned_mamba_block_idx": [0], "pruned_ssm_idx": [1]}
    at.file_uploader[0].set_value(("pruning_config.json", json.dumps(reference).encode(), "application/json")).run()
    assert "fits this model: 2 removals" in at.success[0].value
    assert any("pruned_mamba_block_idx 0 -> block@0; pruned_ssm_idx 1 -> ssm@2" in w.value for w in at.warning)
    next(c for c in at.checkbox if c.label == "The mapping is what I meant").check().run()
    button(at, "Make it the current plan").click().run()
    assert not at.exception, at.exception
    assert not any("cannot express" in w.value for w in at.warning)
    assert "block@0, ssm@2" in at.markdown[0].value  # ordinal 1 among the SSM layers is layer 2

    next(b for b in at.button if b.label == "Save as a named plan").click().run()
    assert any(s.value == "Saved as plan-2." for s in at.success)

    folder = tmp_path / "extracted"
    next(t for t in at.text_input if t.label == "Folder").set_value(str(folder)).run()
    button(at, "Extract").click().run()
    assert not at.exception, at.exception
    if at.error:  # refused with the extractor's own message
        assert not folder.exists()
    else:
        small = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        after = sum(p.numel() for p in small.parameters())
        assert f"-> {after:,} parameters" in next(s.value for s in at.success if s.value.startswith("Wrote"))
        assert small.config.num_hidden_layers == 2

    table = at.dataframe[-1].value
    assert list(table["plan"]) == ["dense", "plan-2"] and list(table["removed"]) == [0, 2]
    next(m for m in at.multiselect if m.label == "Zero-shot tasks").set_value(["piqa"])
    next(n for n in at.number_input if n.label == "Documents per task").set_value(5)
    at.run()
    button(at, "Evaluate accuracy").click().run()
    assert not at.exception, at.exception
    table = at.dataframe[-1].value
    assert "piqa" in table.columns and table["average accuracy"].notna().all()
    assert table["change vs dense"][0] == "-" and "vs dense" in table["change vs dense"][1]


def test_pareto_front_keeps_only_plans_no_other_beats_on_both_axes():
    from app.figures import pareto_front

    points = [{"x": 0, "y": 10}, {"x": 5, "y": 12}, {"x": 5, "y": 11}, {"x": 3, "y": 15}, {"x": 9, "y": 30}]
    assert pareto_front(points, x_better="high", y_better="low") == [{"x": 0, "y": 10}, {"x": 5, "y": 11},
                                                                      {"x": 9, "y": 30}]
    assert pareto_front(points, x_better="low", y_better="high") == [{"x": 0, "y": 10}, {"x": 3, "y": 15},
                                                                      {"x": 9, "y": 30}]
