"""The Mamba kernels' tuned launch configurations, shared between processes.

mamba-ssm's Triton kernels choose their block sizes on first use by timing each configuration they offer.
Two processes may choose differently (timings vary, the more so while another GPU of the host is busy), and
another configuration adds in another order, so one candidate's NLL can differ in its last bits between two
workers, and a search spread over workers could pick another plan than one process picks. So all workers run
one process's choices: the driver's where it has made them, and the first worker's for the rest.
"""
from __future__ import annotations

import importlib
import sys

PACKAGES = ("mamba_ssm.",)


def _autotuner(value):
    """``value`` if it is a Triton autotuner, or the autotuner it wraps (a heuristics decorator); else None."""
    for _ in range(3):
        if type(value).__name__ == "Autotuner" and isinstance(getattr(value, "cache", None), dict):
            return value
        value = getattr(value, "fn", None)
    return None


def _autotuners() -> dict[str, object]:
    """The autotuned kernels of the loaded kernel modules, by ``module:name``."""
    found = {}
    for name, module in list(sys.modules.items()):
        if module is not None and name.startswith(PACKAGES):
            for attr, value in list(vars(module).items()):
                tuner = _autotuner(value)
                if tuner is not None:
                    found[f"{name}:{attr}"] = tuner
    return found


def tuned_configs() -> dict[str, dict]:
    """This process's choices so far: {kernel: {its inputs' key: configuration}}."""
    return {name: dict(tuner.cache) for name, tuner in _autotuners().items() if tuner.cache}


def use_configs(configs: dict[str, dict]) -> int:
    """Make this process's kernels run ``configs`` instead of timing their own; how many kernels took them."""
    for module in {name.partition(":")[0] for name in configs}:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    tuners = _autotuners()
    for name, cache in configs.items():
        if name in tuners:
            tuners[name].cache.update(cache)
    return sum(name in tuners for name in configs)


def compile_kernels(model, prompt_len: int = 256) -> bool:
    """On a GPU, run ``model`` once: a pass over a ``prompt_len``-token prompt and two generated tokens. The Mamba
    kernels compile and tune themselves on first use, which can take tens of seconds on a machine that has not run
    them before; done here (in a model's load), it does not land in the first measurement. False on a CPU (nothing
    to compile)."""
    from ..measurement.perplexity import model_device
    from ..speed.latency import generate_exactly, random_prompt

    if model_device(model).type != "cuda":
        return False
    generate_exactly(model, random_prompt(model, 1, prompt_len, seed=0), 2)
    return True
