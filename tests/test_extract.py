"""Physical extraction: the written model matches the masked model, its parameter count is the
catalogue's prediction, and it reloads without shedder (stock, or with its own model code)."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from shedder.errors import ShedderError
from shedder.extraction.extract import build_extracted, count_params, extract
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.removal.masks import catalogue_of, masked
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
    predicted = catalogue.total_params - catalogue.params_of(removed)

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


# --- every other kind, on every family ------------------------------------------------------------

def _c(kind: str, layer: int, *indices: int) -> list[Component]:
    return [Component(kind, layer, i) for i in indices] if indices else [Component(kind, layer)]


NEMOTRON_TWO_ATTN = {"layers_block_type": ["linear_attention", "full_attention", "mlp", "full_attention", "moe"]}
# (family, config overrides, removed components, channel_reorder); each kind offered by a family appears
KIND_CASES = {
    "mamba-ssm": ("mamba", {}, _c("ssm", 1), None),
    "falcon_mamba-ssm": ("falcon_mamba", {}, _c("ssm", 0) + _c("ssm", 2), None),
    "mamba2-ssm": ("mamba2", {}, _c("ssm", 1), None),
    "mamba2-ssm_heads": ("mamba2", {}, _c("ssm_heads", 2, 0, 5), None),  # one head in each of its 2 groups
    "bamba-ssm": ("bamba", {}, _c("ssm", 0), None),
    "bamba-attn": ("bamba", {"attn_layer_indices": [1, 2]}, _c("attn", 1), None),
    "bamba-mlp": ("bamba", {}, _c("mlp", 2), None),
    "bamba-ssm_heads": ("bamba", {}, _c("ssm_heads", 2, 1), None),
    "bamba-attn_heads-even": ("bamba", {}, _c("attn_heads", 1, 1, 3), None),  # one per key/value head
    "bamba-attn_heads-uneven": ("bamba", {}, _c("attn_heads", 1, 0), None),
    "bamba-mlp_channels": ("bamba", {}, _c("mlp_channels", 0, 1, 2), None),
    "falcon_h1-ssm": ("falcon_h1", {}, _c("ssm", 1), None),
    "falcon_h1-attn": ("falcon_h1", {}, _c("attn", 0), None),
    "falcon_h1-mlp": ("falcon_h1", {}, _c("mlp", 2), None),
    "falcon_h1-ssm_heads": ("falcon_h1", {}, _c("ssm_heads", 2, 3), None),
    "falcon_h1-ssm_heads-no-norm": ("falcon_h1", {"mamba_rms_norm": False}, _c("ssm_heads", 1, 0, 5), None),
    "falcon_h1-attn_heads": ("falcon_h1", {}, _c("attn_heads", 1, 0, 1), None),  # a whole key/value group
    "falcon_h1-mlp_channels": ("falcon_h1", {}, _c("mlp_channels", 0, 0, 7), None),
    "granitemoehybrid-ssm": ("granitemoehybrid", {}, _c("ssm", 0), None),
    "granitemoehybrid-attn": ("granitemoehybrid", {}, _c("attn", 1), None),  # its only attention: the layer stays
    "granitemoehybrid-mlp": ("granitemoehybrid", {}, _c("mlp", 2), None),  # MoE + shared MLP
    "granitemoehybrid-ssm_heads": ("granitemoehybrid", {}, _c("ssm_heads", 2, 7), None),
    "granitemoehybrid-attn_heads": ("granitemoehybrid", {}, _c("attn_heads", 1, 0, 2), None),
    "jamba-ssm": ("jamba", {}, _c("ssm", 0), None),
    "jamba-attn": ("jamba", {}, _c("attn", 1), None),
    "jamba-mlp": ("jamba", {}, _c("mlp", 3), None),  # an MoE
    "jamba-attn_heads": ("jamba", {}, _c("attn_heads", 3, 1, 3), None),
    "jamba-mlp_channels": ("jamba", {}, _c("mlp_channels", 2, 3), None),
    "llama-attn": ("llama", {}, _c("attn", 0), None),
    "llama-mlp": ("llama", {}, _c("mlp", 1), None),
    "llama-attn+mlp": ("llama", {}, _c("attn", 2) + _c("mlp", 2), None),  # the whole layer goes: stock
    "llama-attn_heads": ("llama", {}, _c("attn_heads", 1, 0, 2), None),
    "llama-mlp_channels-l1": ("llama", {}, _c("mlp_channels", 2, 0, 5), "l1"),
    # every MLP narrowed to one width: the stock config says so (intermediate_size)
    "llama-mlp_channels-uniform": ("llama", {}, _c("mlp_channels", 0, 1) + _c("mlp_channels", 1, 7)
                                   + _c("mlp_channels", 2, 3), "l1"),
    "nemotron_h-ssm": ("nemotron_h", {}, _c("ssm", 0), None),
    "nemotron_h-attn": ("nemotron_h", NEMOTRON_TWO_ATTN, _c("attn", 1), None),  # an attention layer goes: stock
    "nemotron_h-mlp": ("nemotron_h", {}, _c("mlp", 2), None),  # an MLP layer goes: stock
    "nemotron_h-ssm_heads": ("nemotron_h", {}, _c("ssm_heads", 3, 2), None),
    "nemotron_h-attn_heads": ("nemotron_h", {}, _c("attn_heads", 1, 0, 3), None),
    "nemotron_h-mlp_channels": ("nemotron_h", {}, _c("mlp_channels", 2, 1), None),
    "zamba2-ssm": ("zamba2", {}, _c("ssm", 0) + _c("ssm", 3), None),  # a Mamba and a hybrid layer's mixer
    "zamba2-attn": ("zamba2", {"use_shared_attention_adapter": True}, _c("attn", 1), None),  # -> a Mamba layer
    "zamba2-ssm_heads": ("zamba2", {}, _c("ssm_heads", 3, 0), None),
    # several kinds in one plan
    "mamba2-mixed": ("mamba2", {}, _c("ssm", 2) + _c("ssm_heads", 2, 1) + _c("block", 0), None),
    "falcon_h1-mixed": ("falcon_h1", {}, _c("attn", 0) + _c("ssm", 0) + _c("attn_heads", 1, 3)
                        + _c("mlp_channels", 1, 2) + _c("mlp", 2), None),
    "bamba-mixed": ("bamba", {"attn_layer_indices": [1, 2]}, _c("attn", 2) + _c("mlp_channels", 2, 0)
                    + _c("attn_heads", 1, 0, 1, 2) + _c("ssm", 0), None),
}
STOCK_CASES = {"llama-attn+mlp", "llama-mlp_channels-uniform", "nemotron_h-attn", "nemotron_h-mlp",
               "nemotron_h-mlp_channels",  # its only dense MLP: one width, which intermediate_size says
               "zamba2-attn"}
NEW_TOKENS = 4


def _greedy_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
    return torch.stack(out.logits)


# Loads every extracted folder in a fresh interpreter that cannot import shedder, and compares with
# the masked model's logits (one forward pass, and the logits of a few cached generation steps).
RELOAD_SCRIPT = r"""
import json, sys, traceback, torch
from transformers import AutoModelForCausalLM
try:
    import shedder
    sys.exit("shedder is importable")
except ImportError:
    pass
results = {}

def check(entry):
    ref = torch.load(entry["ref"])
    model = AutoModelForCausalLM.from_pretrained(entry["dir"], trust_remote_code=entry["remote"],
                                                 dtype=entry.get("dtype", torch.float32)).eval()
    with torch.no_grad():
        logits = model(input_ids=ref["ids"], use_cache=False).logits.float()
        steps = torch.stack(model.generate(ref["ids"][:1], max_new_tokens=ref["steps"].shape[0], do_sample=False,
                                           output_logits=True, return_dict_in_generate=True).logits).float()
    out = {"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
           "dtype": str(next(model.parameters()).dtype),
           "logits": (logits - ref["logits"]).abs().max().item(), "steps": (steps - ref["steps"]).abs().max().item()}
    if entry.get("resave"):  # a loaded pruned model saves and loads again (e.g. after recovery tuning)
        model.save_pretrained(entry["resave"])
        again = AutoModelForCausalLM.from_pretrained(entry["resave"], trust_remote_code=True).eval()
        with torch.no_grad():
            out["resaved"] = (again(input_ids=ref["ids"]).logits - ref["logits"]).abs().max().item()
    return out

for name, entry in json.loads(sys.argv[1]).items():
    try:
        results[name] = check(entry)
    except Exception:
        results[name] = {"error": traceback.format_exc()[-2000:]}
print("RESULTS" + json.dumps(results))
"""


def _reload_without_shedder(entries: dict, workdir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(workdir / "modules"), HF_HUB_DISABLE_PROGRESS_BARS="1",
               TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")  # tiny models: threads only add overhead
    done = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, json.dumps(entries)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULTS", 1)[1])


@pytest.fixture(scope="module")
def kind_results(tmp_path_factory):
    """Extract every case once; reload them all in one interpreter without shedder."""
    work = tmp_path_factory.mktemp("kinds")
    ids = token_ids()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (restored below)
    try:
        local, entries = _extract_cases(work, ids)
    finally:
        torch.set_num_threads(threads)
    return local, _reload_without_shedder(entries, work)


def _extract_cases(work: Path, ids: torch.Tensor) -> tuple[dict, dict]:
    local, entries = {}, {}
    for name, (family, overrides, removed, reorder) in KIND_CASES.items():
        model = build(family, **overrides)
        plan = Plan.for_model(model, removed, channel_reorder=reorder)
        with masked(model, plan):
            expected = _logits(model, ids)
            steps = _greedy_logits(model, ids[:1])
        result = extract(model, None, plan, work / name)
        torch.save({"ids": ids, "logits": expected, "steps": steps}, work / f"{name}.pt")
        catalogue = catalogue_of(model, plan.channel_group_size)
        local[name] = {"result": result, "predicted": catalogue.total_params - catalogue.params_of(removed)}
        entries[name] = {"dir": str(work / name), "ref": str(work / f"{name}.pt"), "remote": name not in STOCK_CASES}
    entries["falcon_h1-mixed"]["resave"] = str(work / "resaved")
    # a bfloat16 model stays bfloat16 (loaded with dtype="auto")
    model = build("mamba2").to(torch.bfloat16)
    plan = Plan.for_model(model, _c("block", 0) + _c("ssm", 1) + _c("ssm_heads", 2, 1))
    with masked(model, plan):
        expected, steps = _logits(model, ids).float(), _greedy_logits(model, ids[:1]).float()
    extract(model, None, plan, work / "bf16")
    torch.save({"ids": ids, "logits": expected, "steps": steps}, work / "bf16.pt")
    entries["bf16"] = {"dir": str(work / "bf16"), "ref": str(work / "bf16.pt"), "remote": True, "dtype": "auto"}
    return local, entries


def test_kind_cases_cover_every_kind_on_every_family():
    for family in FAMILIES:
        model = build(family)
        offered = {c.kind for c in catalogue_of(model).components()} - {"block"}
        covered = {c.kind for fam, _, removed, _ in KIND_CASES.values() if fam == family for c in removed}
        assert offered <= covered, (family, offered - covered)


@pytest.mark.parametrize("name", sorted(KIND_CASES))
def test_extracted_kinds_match_the_masked_model_and_reload_without_shedder(name, kind_results):
    local, reloaded = kind_results
    mine, theirs = local[name], reloaded[name]
    assert "error" not in theirs, theirs.get("error")
    assert theirs["logits"] <= 1e-5 and theirs["steps"] <= 1e-5  # also with caches (prefill, then decode steps)
    assert theirs["params"] == mine["result"].params_after == mine["predicted"]
    assert mine["result"].needs_remote_code == (name not in STOCK_CASES)
    assert theirs["class"].startswith("ShedderPruned") == (name not in STOCK_CASES)
    assert theirs.get("resaved", 0.0) <= 1e-5


def test_a_bfloat16_extraction_stays_bfloat16(kind_results):
    reloaded = kind_results[1]["bf16"]
    assert "error" not in reloaded, reloaded.get("error")
    assert reloaded["dtype"] == "torch.bfloat16"
    assert reloaded["logits"] <= 1e-2 and reloaded["steps"] <= 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family, removed", [
    ("mamba2", _c("ssm", 1) + _c("ssm_heads", 2, 1, 6) + _c("block", 0)),
    ("mamba", _c("ssm", 0) + _c("ssm", 2)),
    ("falcon_h1", _c("ssm", 1) + _c("attn", 0) + _c("attn_heads", 2, 0) + _c("mlp_channels", 1, 3) + _c("mlp", 2)),
    ("bamba", _c("ssm", 0) + _c("ssm_heads", 2, 3) + _c("mlp", 1)),
])
def test_extracted_model_on_gpu_matches_the_masked_model(family, removed):
    """On a GPU, with the mamba-ssm / causal-conv1d kernels where installed: float32 tight, bfloat16 loose."""
    ids = token_ids().cuda()
    for dtype, tolerance in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        model = build(family).to("cuda", dtype)
        plan = Plan.for_model(model, removed)
        with masked(model, plan):
            expected, steps = _logits(model, ids).float(), _greedy_logits(model, ids[:1]).float()
        small = build_extracted(model, plan).to("cuda")
        scale = max(1.0, expected.abs().max().item(), steps.abs().max().item())
        assert (_logits(small, ids).float() - expected).abs().max().item() <= tolerance * scale
        assert (_greedy_logits(small, ids[:1]).float() - steps).abs().max().item() <= tolerance * scale


def test_a_pruned_layout_is_described_in_the_folder(tmp_path):
    model = build("mamba2")
    extract(model, tiny_tokenizer(), Plan.for_model(model, _c("ssm", 1) + _c("ssm_heads", 2, 3)), tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "mamba2"  # the family's, so that config and tokenizer need no code
    assert config["architectures"] == ["ShedderPrunedMamba2ForCausalLM"]
    assert (tmp_path / "out" / "model.pruned.safetensors").is_file()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert config["pruned_layout"]["layers"]["1"] == [{"op": "remove_ssm", "module": "mixer"}]
    assert config["pruned_layout"]["layers"]["2"][0]["kept"] == [0, 1, 2, 4, 5, 6, 7]
    assert 'BASE_MODEL_TYPE = "mamba2"' in (tmp_path / "out" / "modeling_shedder_pruned.py").read_text()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "trust_remote_code=True" in card and "1 ssm" in card and "out_proj" in card
    with pytest.raises(OSError, match="model.safetensors"):  # never silently the unpruned architecture
        AutoModelForCausalLM.from_pretrained(tmp_path / "out")


def test_build_extracted_matches_the_masked_model_and_leaves_the_source_alone():
    model = build("bamba")
    plan = Plan.for_model(model, _c("ssm", 0) + _c("mlp_channels", 2, 1) + _c("attn_heads", 1, 0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with masked(model, plan):
        expected = _logits(model, token_ids())
    small = build_extracted(model, plan)
    torch.testing.assert_close(_logits(small, token_ids()), expected, rtol=1e-5, atol=1e-5)
    assert count_params(small) < count_params(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("removed, match", [
    (_c("attn_heads", 1, 0, 1, 2, 3), "every attention head of layer 1; remove its attn"),
    (_c("mlp_channels", 0, *range(8)), "every MLP channel of layer 0; remove its mlp"),
])
def test_refuses_removing_every_group_of_a_sub_block(removed, match, tmp_path):
    model = build("llama")
    with pytest.raises(ShedderError, match=match):
        extract(model, None, Plan.for_model(model, removed), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# --- bad input ------------------------------------------------------------------------------------

def test_refuses_a_plan_for_another_model(tmp_path):
    plan = Plan.for_model(build("mamba2"), _c("ssm", 1))
    with pytest.raises(ShedderError, match="plan is for a mamba2 model"):
        extract(build("mamba"), None, plan, tmp_path / "out")
    deeper = build("mamba", num_hidden_layers=4)
    with pytest.raises(ShedderError, match="4 layers"):
        extract(build("mamba"), None, Plan.for_model(deeper, _c("ssm", 1)), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_gives_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    import shedder.extraction.extract as extract_module

    real = extract_module.write_model_code

    def disk_full(directory, *args):
        real(directory, *args)  # the weights and half the files are written by now
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extract_module, "write_model_code", disk_full)
    model = build("mamba2")
    with pytest.raises(ShedderError, match="disk is full"):
        extract(model, tiny_tokenizer(), Plan.for_model(model, _c("ssm", 1)), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
