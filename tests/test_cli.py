import json

import pytest
import transformers as T

from shedder.errors import ShedderError
from shedder.model.loading import load_model
from shedder.plan import Plan
from shedder.removal.catalogue import Component, build_catalogue
from conftest import run_cli
from tiny_models import SAMPLE_TEXT

shedder = run_cli


def test_inspect_lists_the_catalogue_of_a_saved_mamba2(mamba2_dir, tmp_path):
    result = shedder("inspect", "--model", str(mamba2_dir), "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    model, _ = load_model(str(mamba2_dir))
    expected = [{**e.component.to_dict(), "params": e.params} for e in build_catalogue(model)]
    assert listed["model_type"] == "mamba2" and listed["components"] == expected
    table = shedder("inspect", "--model", str(mamba2_dir), cache=tmp_path)
    assert table.returncode == 0 and "ssm_heads" in table.stdout and "3 layers" in table.stdout


def test_ppl_with_a_text_file_and_a_plan(mamba2_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT, encoding="utf-8")
    dense = shedder("ppl", "--model", str(mamba2_dir), "--calib", str(text), "--tokens", "256", "--seq-len", "32",
                    "--json", cache=tmp_path)
    assert dense.returncode == 0, dense.stderr
    dense = json.loads(dense.stdout)
    assert dense["n_windows"] == 8 and dense["n_predictions"] == 8 * 31

    model, _ = load_model(str(mamba2_dir))
    plan = Plan.for_model(model, [Component("ssm", 1), Component("block", 2)])
    plan.save(tmp_path / "plan.json")
    pruned = shedder("ppl", "--model", str(mamba2_dir), "--plan", str(tmp_path / "plan.json"), "--calib", str(text),
                     "--tokens", "256", "--seq-len", "32", "--json", cache=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    pruned = json.loads(pruned.stdout)
    assert pruned["removed"] == 2 and pruned["ppl"] != dense["ppl"]


def test_a_plan_for_another_model_is_explained(mamba2_dir, tmp_path):
    plan = Plan([Component("attn", 0)], model_type="llama", n_layers=3)
    plan.save(tmp_path / "plan.json")
    result = shedder("ppl", "--model", str(mamba2_dir), "--plan", str(tmp_path / "plan.json"), cache=tmp_path)
    assert result.returncode == 2 and "plan is for a llama model; this one is mamba2" in result.stderr


def test_unknown_model_id_offline_is_a_clear_error(tmp_path):
    result = shedder("inspect", "--model", "someone/not-a-model-130m", cache=tmp_path)
    assert result.returncode == 2
    assert "not a zoo name or a local directory" in result.stderr and "offline" in result.stderr
    assert "Traceback" not in result.stderr


def test_unsupported_architecture_is_refused_before_loading_weights(tmp_path):
    T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50).save_pretrained(tmp_path)  # config only
    with pytest.raises(ShedderError, match="'gpt2' is not supported.*falcon_h1"):
        load_model(str(tmp_path))


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ShedderError, match="no config.json"):
        load_model(str(tmp_path))


def test_plan_round_trips_and_checks_layers(mamba2_dir, tmp_path):
    model, _ = load_model(str(mamba2_dir))
    plan = Plan.for_model(model, [Component("ssm_heads", 0, 3)])
    plan.save(tmp_path / "p.json")
    loaded = Plan.load(tmp_path / "p.json")
    assert loaded.removed == plan.removed and loaded.fingerprint == plan.fingerprint
    loaded.check(model, strict_weights=True)
    with pytest.raises(ShedderError, match="4 layers; this one has 3"):
        Plan([], model_type="mamba2", n_layers=4).check(model)
    with pytest.raises(ShedderError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        Plan.load(tmp_path / "bad.json")


def test_score_search_and_plan_convert_end_to_end(mamba2_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT, encoding="utf-8")
    calib = ["--calib", str(text), "--tokens", "192", "--seq-len", "32", "--batch-size", "2"]
    scored = shedder("score", "--model", str(mamba2_dir), "--kinds", "block,ssm", *calib,
                     "--out", str(tmp_path / "scores.json"), cache=tmp_path)
    assert scored.returncode == 0, scored.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert len(scores["scores"]) == 6 and scores["base_ppl"] > 1
    assert {"kind", "layer", "ppl", "delta"} <= set(scores["scores"][0])
    assert scores["proxy_spearman"]["block_influence"]["block"]["n"] == 3

    run = ["search", "--model", str(mamba2_dir), "--targets", "block,ssm", "--steps", "2", *calib,
           "--out", str(tmp_path / "run")]
    searched = shedder(*run, cache=tmp_path)
    assert searched.returncode == 0, searched.stderr
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert len(plan["removed"]) == 2 and plan["format"] == "shedder-plan"
    again = shedder(*run, cache=tmp_path)  # finished: resumes, changes nothing
    assert again.returncode == 0 and json.loads((tmp_path / "run" / "plan.json").read_text())["removed"] == plan["removed"]

    to_ref = shedder("plan-convert", "--model", str(mamba2_dir), "--in", str(tmp_path / "run" / "plan.json"),
                     "--out", str(tmp_path / "ref.json"), cache=tmp_path)
    assert to_ref.returncode == 0, to_ref.stderr
    back = shedder("plan-convert", "--model", str(mamba2_dir), "--in", str(tmp_path / "ref.json"),
                   "--out", str(tmp_path / "back.json"), cache=tmp_path)
    assert back.returncode == 0, back.stderr
    assert {json.dumps(c, sort_keys=True) for c in json.loads((tmp_path / "back.json").read_text())["removed"]} == \
        {json.dumps(c, sort_keys=True) for c in plan["removed"]}
