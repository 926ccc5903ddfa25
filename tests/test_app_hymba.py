"""The dashboard on Hymba: a tiny Hymba-compatible folder (its own model code, so the sidebar's consent to run a
folder's code is given), through streamlit's AppTest."""
import pytest
from streamlit.testing.v1 import AppTest

from app.state import ModelChoice
from shedder.measurement.calibration import calibration_windows
from shedder.measurement.perplexity import perplexity
from shedder.model.loading import load_model
from shedder.removal.catalogue import Component
from test_app import APP
from tiny_hymba import save_tiny_hymba


@pytest.fixture(scope="module")
def hymba_dir(tmp_path_factory):
    return save_tiny_hymba(tmp_path_factory.mktemp("tiny-hymba"))


def open_page(model_dir, page: str, trust: bool = True) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(model_dir), trust_remote_code=trust)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_hymba_model_page_shows_its_branches_and_perplexity(hymba_dir):
    at = open_page(hymba_dir, "pages/model.py")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["architecture"] == "hymba" and metrics["layers"] == "4"
    assert float(metrics["perplexity"]) > 1
    assert {"block", "ssm", "attn", "mlp", "mlp_channels"} == set(at.dataframe[0].value["kind"])


def test_hymba_folder_code_does_not_run_without_consent(hymba_dir):
    at = open_page(hymba_dir, "pages/model.py", trust=False)
    assert any("trust" in e.value.lower() for e in at.error)


def test_hymba_playground_toggles_a_branch_and_a_block_and_shows_the_library_number(hymba_dir):
    at = open_page(hymba_dir, "pages/playground.py")
    labels = {p.label.split(":")[0] for p in at.pills}
    assert labels == {"block", "ssm", "attn", "mlp"}
    block = next(p for p in at.pills if p.label.startswith("block:"))
    assert list(block.options) == ["0", "2", "3"]  # layer 1's keys and values are reused by layer 2
    next(p for p in at.pills if p.label.startswith("attn:")).set_value([1]).run()
    assert not at.exception, at.exception
    shown = {m.label: m.value for m in at.metric}
    model, tokenizer = load_model(str(hymba_dir), trust_remote_code=True)
    windows = calibration_windows("wiki-test", tokenizer, 256, 2048)
    expected = perplexity(model, windows, [Component("attn", 1)]).ppl
    assert float(shown["perplexity"]) == pytest.approx(expected, abs=6e-4)



@pytest.mark.parametrize("page", ["pages/method.py", "pages/sensitivity.py", "pages/search.py", "pages/export.py"])
def test_hymba_every_page_opens_without_an_error(hymba_dir, page):
    at = open_page(hymba_dir, page)
    assert not at.error, [e.value for e in at.error]
