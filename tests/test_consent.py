"""Code from a model folder runs only with the user's consent or when the folder is provably shedder's own
extraction (``shedder.model.trust``). Each attack plants a payload that leaves a marker file when imported; without
consent the marker must never appear, and with consent it does (so the payload is live)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app.state import ModelChoice
from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.model.loading import load_model
from shedder.model.trust import may_run_code, not_own_extraction
from shedder.plan import Plan
from shedder.recovery.recover import Evaluation, RecoverySettings, recover
from shedder.removal.catalogue import Component
from tiny_models import build, save_tiny, tiny_tokenizer
from conftest import run_cli
from test_app import APP


def payload(marker: Path, then: str = "") -> str:
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n{then}"


@pytest.fixture(scope="module")
def extraction(tmp_path_factory) -> Path:
    """A pruned-layout extraction (model code shipped beside the weights), as ``shedder extract`` writes it."""
    out = tmp_path_factory.mktemp("own") / "mamba2-without-ssm1"
    model = build("mamba2")
    assert extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("ssm", 1)]), out).needs_remote_code
    return out


def copy_of(folder: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_own_extraction_loads_without_the_flag(extraction):
    assert not_own_extraction(extraction) is None and may_run_code(extraction, False)
    model, _ = load_model(str(extraction), "float32", "cpu")
    assert model.config.model_type == "shedder_pruned_mamba2"


def test_an_extractions_tokenizer_and_config_load_with_plain_transformers(extraction, monkeypatch):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    prompts = []
    monkeypatch.setattr("builtins.input", lambda *question: prompts.append(question) or "n")
    assert AutoTokenizer.from_pretrained(extraction)("state space").input_ids
    assert AutoConfig.from_pretrained(extraction).model_type == "mamba2"
    with pytest.raises(OSError, match="model.safetensors"):  # the stock model, which would not fit, finds no weights
        AutoModelForCausalLM.from_pretrained(extraction)
    pruned = AutoModelForCausalLM.from_pretrained(extraction, trust_remote_code=True)
    assert pruned.config.model_type == "shedder_pruned_mamba2" and prompts == []


def attack_config_auto_map(folder: Path, marker: Path) -> None:
    """config.json names an extra module beside the two byte-identical template files."""
    (folder / "extra.py").write_text(payload(marker, "from .modeling_shedder_pruned import *  # noqa\n"))
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    edit_json(folder / "config.json", auto_map={**auto_map, "AutoConfig": "extra.ShedderPrunedConfig"})


def attack_tokenizer_auto_map(folder: Path, marker: Path) -> None:
    """tokenizer_config.json names its own tokenizer class in a module beside the weights."""
    (folder / "extra.py").write_text(payload(marker, "from transformers import PreTrainedTokenizerFast\n\n\n"
                                                     "class Tok(PreTrainedTokenizerFast):\n    pass\n"))
    edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["extra.Tok", "extra.Tok"]})


def attack_unreferenced_module(folder: Path, marker: Path) -> None:
    """A module nobody names today, in a subfolder (e.g. a custom generate loop)."""
    (folder / "custom_generate").mkdir()
    (folder / "custom_generate" / "generate.py").write_text(payload(marker))


def attack_other_repository(folder: Path, marker: Path) -> None:
    """auto_map pointing at code in another repository."""
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    edit_json(folder / "config.json", auto_map={**auto_map, "AutoModel": "someone/else--modeling.Model"})


ATTACKS = {"config": attack_config_auto_map, "tokenizer": attack_tokenizer_auto_map,
           "unreferenced": attack_unreferenced_module, "other-repository": attack_other_repository}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_tampered_extraction_runs_no_code_without_consent(extraction, tmp_path, attack):
    marker = tmp_path / "marker"
    folder = copy_of(extraction, tmp_path, f"tampered-{attack}")
    ATTACKS[attack](folder, marker)
    reason = not_own_extraction(folder)
    assert reason is not None and not may_run_code(folder, False)
    with pytest.raises(ShedderError, match="--trust-remote-code") as raised:
        load_model(str(folder), "float32", "cpu")
    assert reason in str(raised.value)
    result = run_cli("inspect", "--model", str(folder), cache=tmp_path / "cache")
    assert result.returncode != 0 and "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


@pytest.mark.parametrize("attack", ["config", "tokenizer"])
def test_the_payloads_are_live_with_consent(extraction, tmp_path, attack):
    """The same folders do run their code when the user opts in: the tests above could fail."""
    marker = tmp_path / "marker"
    folder = copy_of(extraction, tmp_path, f"consented-{attack}")
    ATTACKS[attack](folder, marker)
    load_model(str(folder), "float32", "cpu", trust_remote_code=True)
    assert marker.exists()


def test_the_dashboards_local_folder_runs_no_code_without_the_box(extraction, tmp_path):
    marker = tmp_path / "marker"
    folder = copy_of(extraction, tmp_path, "tampered-dashboard")
    attack_config_auto_map(folder, marker)
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["model_choice"] = ModelChoice(str(folder), "float32", "cpu", False)
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    assert any("--trust-remote-code" in e.value or "remote code" in e.value for e in at.error)
    assert not marker.exists()


@pytest.fixture()
def foreign_remote_code_model(tmp_path) -> tuple[Path, Path]:
    """A stock-looking model whose config names its own code, with a plan.json and a payload beside it."""
    marker = tmp_path / "marker"
    folder = tmp_path / "foreign"
    model = save_tiny("mamba2", folder)
    (folder / "evil.py").write_text(payload(marker, "from transformers import Mamba2Config\n\n\n"
                                                    "class Config(Mamba2Config):\n    model_type = 'foreign'\n"))
    edit_json(folder / "config.json", model_type="foreign", auto_map={"AutoConfig": "evil.Config"})
    Plan.for_model(model, [Component("ssm", 1)]).save(folder / "plan.json")
    return folder, marker


def test_recover_runs_no_code_of_a_foreign_folder_without_consent(foreign_remote_code_model, tmp_path):
    folder, marker = foreign_remote_code_model
    assert not may_run_code(folder, False)
    with pytest.raises(ShedderError, match="--trust-remote-code"):
        recover(str(folder), tmp_path / "out", RecoverySettings(steps=1, batch_size=1, seq_len=16),
                Evaluation(tokens=64, seq_len=16), device="cpu")
    result = run_cli("recover", "--model", str(folder), "--steps", "1", "--out", str(tmp_path / "cli-out"),
                     cache=tmp_path / "cache")
    assert result.returncode != 0 and "--trust-remote-code" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_a_foreign_folder_runs_its_code_only_with_consent(foreign_remote_code_model, tmp_path):
    folder, marker = foreign_remote_code_model
    with pytest.raises(ShedderError, match="not supported|Unsupported|supported"):
        load_model(str(folder), "float32", "cpu", trust_remote_code=True)  # the architecture check, after its code
    assert marker.exists()
