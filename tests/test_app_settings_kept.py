"""Every page's settings outlive a page switch for the whole browser session (app.state.remembered), and only for
it: set on a page, the user goes to another page and comes back to the settings as left, so a stopped job resumes
with one click; another session starts from the defaults. Driven through AppTest on tiny saved models."""
import pytest
from streamlit.testing.v1 import AppTest

from test_app import bamba_dir, finish_job  # noqa: F401  (bamba_dir: a fixture, a tiny Bamba saved as a folder)
from test_app_long_jobs import MODEL_FOLDER, widget
from test_app_pages import open_page
from tiny_models import save_tiny

SETTING_WIDGETS = ("radio", "multiselect", "number_input", "text_input", "selectbox", "select_slider", "slider",
                   "toggle")


def settings(at: AppTest) -> dict:
    """The page's settings as shown (its main area: the sidebar is drawn on every page), by label."""
    shown = {}
    for kind in SETTING_WIDGETS:
        for w in getattr(at.main, kind):
            assert w.label not in shown, f"two settings labelled {w.label!r}"
            shown[w.label] = w.value
    return shown


def away_and_back(at: AppTest, page: str, away: str = "pages/model.py") -> None:
    at.switch_page(away).run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception


def test_the_search_settings_and_the_step_shown_outlive_a_page_switch(bamba_dir):
    at = open_page(bamba_dir, "pages/search.py")
    defaults = settings(at)
    assert defaults["Channel order"] == "stored"  # an option is selected: "as stored"
    widget(at, "multiselect", "Candidates").set_value(["ssm"]).run()
    widget(at, "number_input", "Steps").set_value(1)
    widget(at, "selectbox", "Calibration text").set_value("wiki-test")
    widget(at, "select_slider", "Tokens").set_value(1024)
    widget(at, "select_slider", "Window").set_value(128)
    widget(at, "number_input", "Batch size").set_value(8)
    widget(at, "number_input", "MLP channels per group").set_value(defaults["MLP channels per group"] + 1)
    widget(at, "radio", "Channel order").set_value("l1")
    at.run()
    chosen = settings(at)
    assert all(chosen[label] != defaults[label] for label in ("Candidates", "Steps", "Calibration text", "Tokens",
                                                              "Window", "Batch size", "MLP channels per group",
                                                              "Channel order"))
    away_and_back(at, "pages/search.py", "pages/sensitivity.py")
    assert settings(at) == chosen

    widget(at, "button", "Run search").click().run()
    finish_job(at, "search")
    assert widget(at, "button", "Finished").disabled
    widget(at, "slider", "Plan after step").set_value(0)
    widget(at, "radio", "Across").set_value("prefill + decode latency (ms, measured)")
    at.run()
    shown = settings(at)
    away_and_back(at, "pages/search.py", "pages/playground.py")
    assert settings(at) == shown  # the same settings: they name the finished search, nothing to type again
    assert widget(at, "button", "Finished").disabled
    assert {m.label: m.value for m in at.metric}["components removed"] == "0"  # step 0, as left

    widget(at, "radio", "What to search").set_value("several stages").run()
    widget(at, "text_input", "Stages").set_value("block:1;ssm:2").run()
    staged = settings(at)
    away_and_back(at, "pages/search.py")
    assert settings(at) == staged
    widget(at, "radio", "What to search").set_value("one stage").run()
    assert settings(at) == shown  # the one-stage settings were kept while hidden

    other = open_page(bamba_dir, "pages/search.py")  # another browser session: the defaults
    assert settings(other) == defaults
    assert widget(other, "button", "Run search")


def test_the_kinds_to_score_and_the_colouring_outlive_a_page_switch(bamba_dir):
    at = open_page(bamba_dir, "pages/sensitivity.py")
    defaults = settings(at)
    assert set(defaults["Components"]) == {"block", "ssm", "attn", "mlp"}
    widget(at, "multiselect", "Components").set_value(["block"]).run()
    at.button(key="sensitivity-compute").click().run()
    finish_job(at, "sensitivity")
    widget(at, "radio", "Colour by").set_value("block influence (1 - cos)").run()
    chosen = settings(at)
    assert chosen == {"Components": ["block"], "Colour by": "block influence (1 - cos)"}
    away_and_back(at, "pages/sensitivity.py", "pages/playground.py")
    assert settings(at) == chosen
    assert at.button(key="sensitivity-recompute")  # the three blocks are scored: nothing to press to see them

    other = open_page(bamba_dir, "pages/sensitivity.py")  # another session: every kind, coloured by perplexity
    assert settings(other) == {**defaults, "Colour by": "perplexity change (measured)"}


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A data folder holding an extracted model to recover (a tiny Mamba-2) and a training text."""
    root = tmp_path / "data"
    save_tiny("mamba2", root / "pruned")
    (root / "train.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(root))
    return root


def run_folder(at: AppTest) -> str:
    """The folder the Recovery page's settings name: where their run writes, and continues from."""
    return next(c.value for c in at.caption if c.value.startswith("Runs in and writes the recovered model to"))


def test_the_recovery_settings_outlive_a_page_switch(bamba_dir, data_root):
    at = open_page(bamba_dir, "pages/recover.py")
    widget(at, "text_input", MODEL_FOLDER).set_value("pruned").run()
    defaults = settings(at)
    lora_lr = defaults["Peak learning rate"]
    widget(at, "number_input", "Peak learning rate").set_value(lora_lr / 2)
    widget(at, "radio", "Method").set_value("full").run()
    full_lr = widget(at, "number_input", "Peak learning rate").value
    assert full_lr != lora_lr  # each method starts from its own default
    widget(at, "radio", "Method").set_value("lora").run()
    assert widget(at, "number_input", "Peak learning rate").value == lora_lr / 2
    for kind, label, value in [("number_input", "Steps", 7), ("selectbox", "Windows per step", 2),
                               ("select_slider", "Window (tokens)", 32), ("text_input", "Training text", "train.txt"),
                               ("select_slider", "Held-out tokens", "512"), ("text_input", "Dense reference", "pruned"),
                               ("number_input", "LoRA rank", 4), ("number_input", "LoRA alpha", 8.0),
                               ("number_input", "Seed", 3), ("number_input", "Checkpoint every (steps)", 5)]:
        assert defaults[label] != value
        widget(at, kind, label).set_value(value)
    at.run()
    assert not at.error, at.error
    chosen, run = settings(at), run_folder(at)
    away_and_back(at, "pages/recover.py", "pages/search.py")
    assert settings(at) == chosen
    assert run_folder(at) == run  # the same run: a cancelled one continues with no setting typed again
    widget(at, "radio", "Method").set_value("full").run()
    assert widget(at, "number_input", "Peak learning rate").value == full_lr

    other = open_page(bamba_dir, "pages/recover.py")  # another session: no folder typed, then the defaults
    assert settings(other) == {"Recover": "an extracted model", MODEL_FOLDER: ""}
    widget(other, "text_input", MODEL_FOLDER).set_value("pruned").run()
    assert settings(other) == defaults


def test_the_playground_export_and_tour_settings_outlive_a_page_switch(bamba_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SHEDDER_DATA_ROOT", str(tmp_path))
    at = open_page(bamba_dir, "pages/playground.py")
    at.toggle(key="live-refine").set_value(False)
    widget(at, "text_input", "Prompt").set_value("Once upon a time")
    next(b for b in at.button if b.label == "Generate").click().run()
    assert not at.exception, at.exception
    playground = settings(at)
    assert playground["Prompt"] == "Once upon a time"
    assert playground["Live: refine latency and accuracy after every change"] is False

    at.switch_page("pages/export.py").run()
    widget(at, "text_input", "Folder").set_value("my-extraction").run()
    export = settings(at)

    at.switch_page("pages/tour.py").run()
    defaults = settings(at)
    assert defaults["Tour model"] == "demo-mamba2"
    at.radio(key="tour_model").set_value("demo-hybrid").run()
    tour = settings(at)

    for page, shown in [("pages/playground.py", playground), ("pages/export.py", export), ("pages/tour.py", tour)]:
        at.switch_page(page).run()
        assert not at.exception, at.exception
        assert settings(at) == shown, page

    other = open_page(bamba_dir, "pages/tour.py")
    assert settings(other) == defaults
