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
    at.run()
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


def test_opens_on_the_embedded_demo_model_by_default():
    at = AppTest.from_file(APP, default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["architecture"] == "mamba2" and metrics["layers"] == "12"
    assert 5 < float(metrics["perplexity"]) < 500
