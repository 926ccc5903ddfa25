"""Physical extraction of block removals: the written model loads with stock transformers and
matches the masked model exactly."""
from __future__ import annotations


import pytest
import torch
from transformers import AutoModelForCausalLM

from shedder.catalogue import Component
from shedder.errors import ShedderError
from shedder.extract import count_params, extract
from shedder.masks import catalogue_of, masked
from shedder.plan import Plan
from tiny_models import FAMILIES, build, tiny_tokenizer, token_ids
from conftest import run_cli

# family -> (config overrides, removed layers); chosen so that the layout fields are exercised
CASES = {
    "bamba": ({"attn_layer_indices": [1, 2]}, [1]),  # an attention layer; indices remapped [1, 2] -> [1]
    "falcon_h1": ({}, [1]),
    "falcon_mamba": ({}, [0, 2]),
    "granitemoehybrid": ({"layer_types": ["linear_attention", "full_attention", "full_attention"]}, [1]),
    "jamba": ({}, [1]),  # attention + expert layer: [m a m a] -> [m m a], period 3 offset 2
    "llama": ({}, [1]),
    "mamba": ({}, [1]),
    "mamba2": ({}, [0, 2]),
    "nemotron_h": ({}, [0, 3]),  # M*-ME -> *-E
    "zamba2": ({"use_shared_attention_adapter": True}, [1]),  # a hybrid layer; the shared block is kept
}


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _extract_and_compare(model, removed_layers: list[int], out_dir):
    removed = [Component("block", i) for i in removed_layers]
    plan = Plan.for_model(model, removed)
    ids = token_ids()
    with masked(model, removed):
        expected = _logits(model, ids)
    catalogue = catalogue_of(model)
    predicted = catalogue.total_params - sum(catalogue.params_of(c) for c in removed)

    result = extract(model, tiny_tokenizer(), plan, out_dir)

    small = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(small, ids), expected, rtol=1e-5, atol=1e-5)
    assert count_params(small) == result.params_after == predicted
    assert result.params_before == catalogue.total_params
    assert small.config.num_hidden_layers == model.config.num_hidden_layers - len(removed)
    assert result.removed == removed
    assert Plan.load(out_dir / "plan.json").removed == removed
    assert (out_dir / "README.md").is_file() and (out_dir / "tokenizer.json").is_file()
    return small


def test_cases_cover_every_family():
    assert sorted(CASES) == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_extract_matches_masked_model(family, tmp_path):
    overrides, layers = CASES[family]
    model = build(family, **overrides)
    small = _extract_and_compare(model, layers, tmp_path / "out")
    if family == "bamba":
        assert small.config.attn_layer_indices == [1]
    if family == "nemotron_h":
        assert small.config.hybrid_override_pattern == "*-E"
    if family == "zamba2":
        assert small.config.hybrid_layer_ids == [2]
    if family == "jamba":
        assert small.config.layers_block_type == ["mamba", "mamba", "attention"]
        assert small.config.layers_num_experts == [1, 1, model.config.num_experts]


def test_zamba2_two_shared_blocks_keep_their_order(tmp_path):
    model = build("zamba2", num_mem_blocks=2)
    small = _extract_and_compare(model, [0], tmp_path / "out")
    assert small.config.hybrid_layer_ids == [0, 2]


def test_zamba2_refuses_reassigning_shared_blocks(tmp_path):
    model = build("zamba2", num_mem_blocks=2)
    with pytest.raises(ShedderError, match="shared transformer blocks"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_jamba_refuses_a_layout_its_config_cannot_describe(tmp_path):
    model = build("jamba")  # [m a m a]; without layer 2 the attention layers would sit at 1 and 2
    with pytest.raises(ShedderError, match="periodically"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 2)]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_refuses_removing_every_attention_layer(tmp_path):
    model = build("bamba")  # one attention layer, at 1
    with pytest.raises(ShedderError, match="every attention layer"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), tmp_path / "out")


def test_refuses_other_kinds(tmp_path):
    model = build("mamba2")
    plan = Plan.for_model(model, [Component("block", 0), Component("ssm", 1)])
    with pytest.raises(ShedderError, match="ssm removals is not implemented"):
        extract(model, tiny_tokenizer(), plan, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_non_empty_out_dir_and_leaves_it_alone(tmp_path):
    model = build("mamba")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ShedderError, match="not an empty folder"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_empty_out_dir_is_used(tmp_path):
    model = build("mamba")
    (tmp_path / "out").mkdir()
    _extract_and_compare(model, [1], tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import shedder.extract as extract_module

    def broken(small, tokenizer, plan, card, directory):
        (directory / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(extract_module, "_write", broken)
    model = build("mamba")
    with pytest.raises(OSError, match="disk full"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_cli_extract(mamba2_dir, tmp_path):
    plan_path = tmp_path / "plan.json"
    Plan(removed=[Component("block", 1)], model_type="mamba2", n_layers=3).save(plan_path)
    out = tmp_path / "small"
    done = run_cli("extract", "--model", str(mamba2_dir), "--plan", str(plan_path), "--out", str(out),
                   "--device", "cpu", "--dtype", "float32", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "parameters" in done.stdout and "->" in done.stdout
    small = AutoModelForCausalLM.from_pretrained(out)
    assert small.config.num_hidden_layers == 2

    again = run_cli("extract", "--model", str(mamba2_dir), "--plan", str(plan_path), "--out", str(out),
                    "--device", "cpu", cache=tmp_path / "cache")
    assert again.returncode == 2 and "not an empty folder" in again.stderr


def test_dtype_is_kept(tmp_path):
    model = build("mamba").to(torch.bfloat16)
    extract(model, tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), tmp_path / "out")
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in small.parameters()} == {torch.bfloat16}
