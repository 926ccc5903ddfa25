"""``python -m shedder zoo`` and ``python -m shedder eval`` end to end, offline, in a subprocess."""
import json

from shedder.model.loading import load_model
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from conftest import run_cli
from tiny_models import SAMPLE_TEXT

shedder = run_cli


def test_zoo_lists_models_and_offline_availability(tmp_path):
    table = shedder("zoo", cache=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "smollm2-135m" in table.stdout and "demo-mamba2" in table.stdout
    listed = {m["name"]: m for m in json.loads(shedder("zoo", "--json", cache=tmp_path).stdout)}
    assert listed["smollm2-135m"]["available"] is True


def test_eval_dense_and_with_a_plan(mamba2_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(SAMPLE_TEXT, encoding="utf-8")
    model, _ = load_model(str(mamba2_dir))
    Plan.for_model(model, [Component("ssm", 1), Component("block", 2)]).save(tmp_path / "plan.json")
    out = tmp_path / "eval.json"
    result = shedder("eval", "--model", str(mamba2_dir), "--plan", str(tmp_path / "plan.json"),
                     "--tasks", "piqa,lambada_openai", "--limit", "4", "--seed", "7", "--calib", str(text),
                     "--tokens", "256", "--seq-len", "32", "--out", str(out), cache=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "average (*)" in result.stdout and "relative" in result.stdout and "piqa 4/1838" in result.stdout
    data = json.loads(out.read_text())
    assert data["tasks"] == ["piqa", "lambada_openai"] and data["limit"] == 4 and data["mode"] == "offline"
    assert data["removed"] == [{"kind": "ssm", "layer": 1}, {"kind": "block", "layer": 2}]
    dense, pruned = data["dense"], data["pruned"]
    assert dense["perplexity"]["n_windows"] == 8 and pruned["perplexity"]["ppl"] != dense["perplexity"]["ppl"]
    assert dense["accuracy"]["removed"] == [] and len(pruned["accuracy"]["removed"]) == 2
    for run in (dense, pruned):
        piqa = run["accuracy"]["tasks"]["piqa"]
        assert piqa["n_docs"] == 4 and set(piqa["metrics"]) == {"acc", "acc_norm"}
        assert 0 <= piqa["metrics"]["acc"] <= 1 and piqa["stderr"]["acc"] is not None
    assert pruned["accuracy"]["lambada_perplexity"] != dense["accuracy"]["lambada_perplexity"]
    assert set(data["relative"]["tasks"]) == {"piqa", "lambada_openai"}


def test_eval_user_errors_are_explained(mamba2_dir, tmp_path):
    unknown = shedder("eval", "--model", str(mamba2_dir), "--tasks", "piqa,mmlu", cache=tmp_path)
    assert unknown.returncode == 2 and "Unknown task 'mmlu'" in unknown.stderr and "Traceback" not in unknown.stderr
    lonely = shedder("eval", "--model", str(mamba2_dir), "--no-dense", cache=tmp_path)
    assert lonely.returncode == 2 and "--no-dense needs --plan" in lonely.stderr
