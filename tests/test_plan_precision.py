"""A plan made on float32 weights names the same checkpoint loaded in bfloat16 or float16, and no other."""
import copy

import pytest
import torch

from shedder.errors import ShedderError
from shedder.measurement.calibration import cut_windows
from shedder.measurement.evaluator import EvalSettings
from shedder.plan import Plan
from shedder.removal.catalogue import Component
from shedder.searching.search import parse_stages, search
from tiny_models import build, tiny_tokenizer, token_ids


def lower(model, dtype):
    return copy.deepcopy(model).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float32_plan_fits_a_lower_precision_copy_of_its_weights(dtype):
    model = build("mamba2")
    plan = Plan.for_model(model, [Component("block", 1)])
    assert set(plan.rounded_fingerprints) == {"bfloat16", "float16"}
    plan.check(lower(model, dtype), strict_weights=True)
    loaded = Plan.from_dict(plan.to_dict())  # the rounded fingerprints survive the file
    assert loaded.rounded_fingerprints == plan.rounded_fingerprints
    loaded.check(lower(model, dtype), strict_weights=True)


def test_float32_plan_refuses_other_weights_in_any_precision():
    model = build("mamba2")
    plan = Plan.for_model(model, [Component("block", 1)])
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    for candidate in (other, lower(other, torch.bfloat16)):
        with pytest.raises(ShedderError, match="other weights"):
            plan.check(candidate, strict_weights=True)


def test_a_plan_without_rounded_fingerprints_needs_the_precision_it_was_made_in():
    model = build("mamba2")
    old = Plan.from_dict({**Plan.for_model(model).to_dict(), "model": {
        "model_type": "mamba2", "n_layers": 3, "fingerprint": Plan.for_model(model).fingerprint}})
    assert old.rounded_fingerprints == {}
    old.check(model, strict_weights=True)
    with pytest.raises(ShedderError, match="other weights"):
        old.check(lower(model, torch.bfloat16), strict_weights=True)


def test_a_bad_rounded_fingerprint_field_is_refused():
    data = Plan.for_model(build("mamba2")).to_dict()
    data["model"]["fingerprint_rounded"] = {"bfloat16": 7}
    with pytest.raises(ShedderError, match="fingerprint_rounded"):
        Plan.from_dict(data)


def test_searched_plan_records_the_rounded_fingerprints(tmp_path):
    model = build("mamba2")
    windows = cut_windows(token_ids(batch=1, length=4 * 16, seed=1).reshape(-1), 16, source="random")
    search(model, windows, parse_stages("block:1"), out_dir=tmp_path, settings=EvalSettings(batch_size=2))
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.rounded_fingerprints == Plan.for_model(model).rounded_fingerprints
    plan.check(lower(model, torch.bfloat16), strict_weights=True)


def test_extraction_records_the_extracted_weights_fingerprints_not_the_plans(tmp_path):
    from shedder.extraction.extract import extract
    from shedder.model.identity import model_fingerprint, rounded_fingerprints

    model = build("mamba2")
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    extract(model, tiny_tokenizer(), Plan.for_model(other, [Component("block", 1)]), tmp_path / "a", allow_other_weights=True)
    written = Plan.load(tmp_path / "a" / "plan.json")
    assert written.fingerprint == model_fingerprint(model)
    assert written.rounded_fingerprints == rounded_fingerprints(model) != Plan.for_model(other).rounded_fingerprints
    assert written.extra["made_for"]["fingerprint"] == model_fingerprint(other)

    # the same weights in bfloat16: not "made for other weights"
    extract(lower(model, torch.bfloat16), tiny_tokenizer(), Plan.for_model(model, [Component("block", 1)]), tmp_path / "b")
    assert "made_for" not in Plan.load(tmp_path / "b" / "plan.json").extra
