"""One model over several GPUs: the device map (on any machine) and equal results (with 2+ GPUs)."""
import pytest
import torch

from shedder.errors import ShedderError
from shedder.families import describe_model
from shedder.measurement.calibration import cut_windows
from shedder.measurement.evaluator import EvalSettings
from shedder.measurement.perplexity import perplexity
from shedder.model.loading import load_model
from shedder.model.sharding import balanced_device_map
from shedder.removal.catalogue import Component, build_catalogue
from shedder.searching.executor import RayOptions
from shedder.searching.search import parse_stages, search
from tiny_models import build, save_tiny, token_ids

TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
PLENTY = 1 << 40


def layer_names(model) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names[id(parts.layer)] for parts in describe_model(model)[1]]


@pytest.mark.parametrize("family", ["mamba", "mamba2", "nemotron_h", "jamba", "bamba"])
def test_device_map_keeps_layers_whole_and_in_order_over_both_gpus(family):
    model = build(family, num_hidden_layers=6) if family in ("mamba", "mamba2") else build(family)
    device_map = balanced_device_map(model, [PLENTY, PLENTY])
    layer_devices = []
    for name in layer_names(model):
        owners = [key for key in device_map if name == key or name.startswith(key + ".") or key.startswith(name + ".")]
        devices = {device_map[key] for key in owners}
        assert len(devices) == 1, f"{name} split over {devices}"
        layer_devices.append(devices.pop())
    assert layer_devices == sorted(layer_devices)  # layers in order: activations only move forwards
    assert set(device_map.values()) == {0, 1}


def test_a_model_too_big_for_the_gpus_is_refused():
    model = build("mamba2")
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with pytest.raises(ShedderError, match="does not fit on the 2 GPUs; use more GPUs"):
        balanced_device_map(model, [size // 4, size // 4])


def test_layers_sharing_weights_are_not_split_and_say_so():
    model = build("zamba2")  # its shared transformer block belongs to two layers
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with pytest.raises(ShedderError, match="cannot be split into whole layers over 2 GPUs"):
        balanced_device_map(model, [size * 3 // 4, size * 3 // 4])


def test_more_gpus_per_worker_needs_gpus():
    with pytest.raises(ShedderError, match="does not go with --device cpu"):
        RayOptions(model="m", device="cpu", gpus_per_worker=2)
    with pytest.raises(ShedderError, match="at least one worker"):
        RayOptions(model="m", gpus_per_worker=0)


def removals_for_spread_test(model) -> list[Component]:
    """The last block and the first SSM the model offers (in NemotronH the last layer is an MLP layer)."""
    catalogue = build_catalogue(model)
    return [catalogue.components(["block"])[-1], catalogue.components(["ssm"])[0]]


@pytest.mark.parametrize("family", ["mamba2", "nemotron_h"])
def test_spread_test_removes_a_block_and_an_ssm_the_model_offers(family, tmp_path):
    save_tiny(family, tmp_path / family)
    # on the GPU where there is one: with the Mamba kernels installed, transformers sends CPU tensors to them
    model, _ = load_model(str(tmp_path / family), "float32", "cuda" if torch.cuda.is_available() else "cpu")
    block, ssm = removals_for_spread_test(model)
    assert (block.kind, ssm.kind) == ("block", "ssm")
    assert perplexity(model, cut_windows(token_ids(batch=1, length=64, seed=3).reshape(-1), 32, source="random"),
                      [block, ssm]).ppl > 0


@TWO_GPUS
@pytest.mark.parametrize("family", ["mamba2", "nemotron_h"])
def test_spread_model_gives_one_gpus_numbers_and_plan(family, tmp_path):
    save_tiny(family, tmp_path / family)
    one, _ = load_model(str(tmp_path / family), "float32", "cuda")
    spread, _ = load_model(str(tmp_path / family), "float32", "balanced")
    assert {p.device.index for p in spread.parameters()} == {0, 1}
    windows = cut_windows(token_ids(batch=1, length=6 * 32, seed=3).reshape(-1), 32, source="random")
    removed = removals_for_spread_test(one)
    assert perplexity(spread, windows, removed, batch_size=2).ppl == perplexity(one, windows, removed, batch_size=2).ppl
    stages = parse_stages("block,ssm:2")
    settings = EvalSettings(batch_size=2)
    on_one, on_two = search(one, windows, stages, settings=settings), search(spread, windows, stages, settings=settings)
    assert on_two["removed"] == on_one["removed"]
    assert [s["ppl"] for s in on_two["steps"]] == [s["ppl"] for s in on_one["steps"]]
