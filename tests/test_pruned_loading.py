"""Folders written by ``shedder extract`` with a pruned layout load back into shedder: the catalogue
offers only what is left, masks work on it, and the CLI inspects it."""
from __future__ import annotations

import json

import pytest
import torch

from shedder.errors import ShedderError
from shedder.extraction.extract import extract
from shedder.measurement.calibration import Windows
from shedder.measurement.perplexity import perplexity
from shedder.model.loading import load_model
from shedder.model.trust import not_own_extraction
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.removal.masks import catalogue_of, masked
from tiny_models import build, tiny_tokenizer, token_ids
from conftest import run_cli


def _extracted(family: str, removed: list[Component], out, **overrides):
    model = build(family, **overrides)
    result = extract(model, tiny_tokenizer(), Plan.for_model(model, removed), out)
    assert result.needs_remote_code
    return model


@pytest.fixture(scope="module")
def mamba2_without_ssm(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "mamba2"
    return _extracted("mamba2", [Component("ssm", 1)], out), out


@pytest.fixture(scope="module")
def bamba_without_attn_and_mlp(tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "bamba"
    removed = [Component("attn", 2), Component("mlp", 0), Component("attn_heads", 1, 0),
               Component("attn_heads", 1, 1)]  # heads 0 and 1: key/value head 0's whole group
    return _extracted("bamba", removed, out, attn_layer_indices=[1, 2]), out


def _kinds_at(catalogue, layer: int) -> set[str]:
    return {c.kind for c in catalogue.components() if c.layer == layer}


def _windows() -> Windows:
    return Windows(ids=token_ids(batch=3, length=16), source="test", seed=None)


def test_mamba2_without_an_ssm_loads_and_offers_no_scan_there(mamba2_without_ssm):
    source, out = mamba2_without_ssm
    assert not_own_extraction(out) is None
    model, _ = load_model(str(out), dtype="float32", device="cpu")  # shedder's own code: no flag needed
    assert model.config.model_type == "shedder_pruned_mamba2"
    catalogue, dense = catalogue_of(model), catalogue_of(source)
    assert _kinds_at(catalogue, 1) == {"block"}
    assert _kinds_at(catalogue, 0) == _kinds_at(catalogue, 2) == {"block", "ssm", "ssm_heads"}
    assert len(catalogue) == len(dense) - 1 - 8  # the ssm and its 8 heads
    assert catalogue.total_params == dense.total_params - dense.params_of(Component("ssm", 1))
    # a remaining block and a remaining scan are removed by masks on the pruned model
    for removed in ([Component("block", 2)], [Component("block", 1)], [Component("ssm", 0)]):
        assert perplexity(model, _windows(), removed).ppl != perplexity(model, _windows()).ppl
    with pytest.raises(ShedderError, match="layer 1 of this shedder_pruned_mamba2 model has no 'ssm'"):
        with masked(model, [Component("ssm", 1)]):
            pass


def test_bamba_without_attention_and_mlp_offers_neither(bamba_without_attn_and_mlp):
    source, out = bamba_without_attn_and_mlp
    model, _ = load_model(str(out), dtype="float32", device="cpu")
    catalogue, dense = catalogue_of(model), catalogue_of(source)
    assert _kinds_at(catalogue, 0) == {"block", "ssm", "ssm_heads"}  # its MLP is gone
    assert _kinds_at(catalogue, 2) == {"block", "mlp", "mlp_channels"}  # its attention is gone
    assert _kinds_at(catalogue, 1) == _kinds_at(dense, 1)
    assert len(catalogue.components(["attn_heads"])) == 2 and len(dense.components(["attn_heads"])) == 8
    assert len(catalogue) < len(dense)
    ids = token_ids()
    with torch.no_grad():
        full = model(input_ids=ids).logits
    for removed in ([Component("mlp", 2)], [Component("attn_heads", 1, 0)], [Component("ssm_heads", 0, 3)],
                    [Component("mlp_channels", 1, 2)], [Component("block", 1)]):
        assert perplexity(model, _windows(), removed).ppl != perplexity(model, _windows()).ppl
    with torch.no_grad():  # every mask undone
        assert torch.equal(model(input_ids=ids).logits, full)


def test_heads_silenced_by_extraction_are_not_offered_again(tmp_path):
    # one head of a grouped-query attention: its group keeps it as a silenced slot (zero o_proj columns)
    _extracted("bamba", [Component("attn_heads", 1, 0), Component("ssm", 0)], tmp_path / "out")
    model, _ = load_model(str(tmp_path / "out"), dtype="float32", device="cpu")
    assert [c.index for c in catalogue_of(model).components(["attn_heads"])] == [1, 2, 3]


def test_inspect_a_pruned_folder(bamba_without_attn_and_mlp, tmp_path):
    _, out = bamba_without_attn_and_mlp
    done = run_cli("inspect", "--model", str(out), "--device", "cpu", "--json", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    kinds = {(c["kind"], c["layer"]) for c in json.loads(done.stdout)["components"]}
    assert ("attn", 2) not in kinds and ("mlp", 0) not in kinds and ("mlp", 2) in kinds


def test_edited_model_code_needs_the_flag(mamba2_without_ssm, tmp_path):
    _, out = mamba2_without_ssm
    edited = tmp_path / "edited"
    edited.mkdir()
    for path in out.iterdir():
        if path.is_file():
            (edited / path.name).write_bytes(path.read_bytes())
    with open(edited / "pruned_layers.py", "a", encoding="utf-8") as f:
        f.write("\n# edited\n")
    assert not_own_extraction(edited) is not None
    with pytest.raises(ShedderError, match="--trust-remote-code"):
        load_model(str(edited), dtype="float32", device="cpu")
    model, _ = load_model(str(edited), dtype="float32", device="cpu", trust_remote_code=True)
    assert {c.kind for c in catalogue_of(model).components() if c.layer == 1} == {"block"}
