"""The anatomy of a layer, for the How it works page: built from the model's real modules, every parameter of
the layer counted once, and what each removal frees taken from the catalogue."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app.state import ModelChoice
from shedder.families import describe_model
from shedder.model.anatomy import distinct_layers, layer_anatomy
from shedder.removal.catalogue import Component
from shedder.removal.masks import catalogue_of
from tiny_models import build
from test_app import APP, bamba_dir  # noqa: F401


@pytest.mark.parametrize("family", ["mamba", "mamba2", "bamba", "zamba2", "nemotron_h", "falcon_h1", "jamba",
                                    "granitemoehybrid"])
def test_every_parameter_of_a_layer_is_in_one_part(family):
    model = build(family)
    cat = catalogue_of(model)
    layers = distinct_layers(model)
    assert layers and layers[0] == 0
    for layer in layers:
        anatomy = layer_anatomy(model, cat, layer)
        listed = sum(m.params for p in anatomy.parts for m in p.modules)
        assert listed == anatomy.params == sum(p.numel() for p in describe_model(model)[1][layer].layer.parameters())
        for part in anatomy.parts:
            assert part.params == sum(m.params for m in part.modules)
            if part.kind != "rest":
                assert part.freed == cat.params_of(Component(part.kind, layer))
                assert part.freed <= part.params


def test_a_hybrid_shows_its_mamba_and_its_attention_layer():
    model = build("bamba", attn_layer_indices=[1])
    cat = catalogue_of(model)
    assert distinct_layers(model) == [0, 1]
    mamba, attention = layer_anatomy(model, cat, 0), layer_anatomy(model, cat, 1)
    assert [p.kind for p in mamba.parts] == ["ssm", "mlp", "rest"]
    assert [p.kind for p in attention.parts] == ["attn", "mlp"]
    ssm = mamba.parts[0]
    assert {m.name for m in ssm.modules if m.scan_only} == {"mamba.A_log", "mamba.D", "mamba.dt_bias"}
    assert ssm.groups == ("heads", 8) and attention.parts[0].groups == ("heads", 4)
    assert mamba.block_freed == cat.params_of(Component("block", 0))


def test_zamba2_shared_block_frees_only_this_layers_own_weights():
    model = build("zamba2")
    cat = catalogue_of(model)
    hybrid = layer_anatomy(model, cat, 1)
    shared = next(p for p in hybrid.parts if p.kind == "attn")
    assert shared.freed < shared.params and "shared" in shared.title


def test_the_how_it_works_page_draws_the_loaded_models_layers(bamba_dir):
    at = AppTest.from_file(APP, default_timeout=240)
    at.session_state["model_choice"] = ModelChoice(str(bamba_dir))
    at.switch_page("pages/method.py").run()
    assert not at.exception, at.exception
    assert list(at.radio(key="anatomy_layer").options) == ["layer 0: Mamba-2 mixer + MLP", "layer 1: attention + MLP"]
    table = at.table[0].value
    assert list(table.index) == ["block", "ssm", "attn", "mlp", "ssm_heads", "attn_heads", "mlp_channels"]
    assert table.loc["attn", "in this model"] == "1" and table.loc["ssm", "in this model"] == "2"
