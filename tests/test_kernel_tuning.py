"""The Mamba kernels' tuned configurations go from one process to another (shedder.model.kernel_tuning), shown on
stand-ins for Triton's autotuners (the real ones run on GPUs only)."""
import sys
import types

from shedder.model.kernel_tuning import tuned_configs, use_configs


class Autotuner:  # what the sharing relies on: Triton's class name and its cache of choices
    def __init__(self):
        self.cache = {}


class Heuristics:  # a decorator wrapped around an autotuner
    def __init__(self, fn):
        self.fn = fn


def kernels(monkeypatch, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.scan, module.norm, module.plain = Autotuner(), Heuristics(Autotuner()), object()
    monkeypatch.setitem(sys.modules, name, module)
    return module


def ours(configs: dict) -> dict:
    """The stand-ins' entries (on a GPU machine the real kernels may have tuned too, in this process)."""
    return {name: cache for name, cache in configs.items() if "stand_in" in name}


def test_choices_made_in_one_process_are_run_in_another(monkeypatch):
    tuned = kernels(monkeypatch, "mamba_ssm.ops.triton.stand_in")
    tuned.scan.cache[(256, 64, 128)] = "BLOCK 64x64, 4 warps"
    tuned.norm.fn.cache[(2560,)] = "BLOCK 1024"
    configs = ours(tuned_configs())
    assert configs == {"mamba_ssm.ops.triton.stand_in:scan": {(256, 64, 128): "BLOCK 64x64, 4 warps"},
                       "mamba_ssm.ops.triton.stand_in:norm": {(2560,): "BLOCK 1024"}}

    other = kernels(monkeypatch, "mamba_ssm.ops.triton.stand_in")  # the same module, loaded in another process
    other.scan.cache[(128, 64, 64)] = "its own choice for another shape"
    assert use_configs({**configs, "mamba_ssm.ops.triton.gone:kernel": {(1,): "x"}}) == 2
    assert other.scan.cache == {(128, 64, 64): "its own choice for another shape", (256, 64, 128): "BLOCK 64x64, 4 warps"}
    assert other.norm.fn.cache == {(2560,): "BLOCK 1024"}


def test_other_packages_and_untuned_kernels_are_left_out(monkeypatch):
    kernels(monkeypatch, "mamba_ssm.ops.triton.stand_in")  # nothing tuned yet
    elsewhere = kernels(monkeypatch, "some_other_package.kernels")
    elsewhere.scan.cache[(1,)] = "not ours"
    assert not [name for name in tuned_configs() if "stand_in" in name or name.startswith("some_other_package")]


def test_a_gpu_model_runs_once_when_loaded_and_a_cpu_model_does_not(monkeypatch):
    """compile_kernels: one pass over a prompt and two generated tokens on a GPU (the kernels compile on first use);
    nothing on a CPU. The GPU is stood in for by reporting the device as cuda."""
    import torch

    import shedder.measurement.perplexity as perplexity
    from shedder.model.kernel_tuning import compile_kernels
    from tiny_models import build

    model = build("mamba2")
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    assert compile_kernels(model) is False and calls == []
    monkeypatch.setattr(perplexity, "model_device", lambda m: torch.device("cuda"))
    assert compile_kernels(model, prompt_len=16) is True
    assert len(calls) == 2  # the prompt's pass, then the second token's step
