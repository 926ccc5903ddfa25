"""One model over several GPUs, for a model too big for one: whole layers per GPU, balanced.

accelerate places each decoder layer (never split: the model's ``_no_split_modules``), the embedding,
the final norm and the head on a GPU and hooks every placed module so that its inputs move to its
device. Masks, prefix reuse and the stored layer inputs work unchanged: a skipped layer hands its
input on as it is, and the next placed module moves it. Results equal one GPU's up to the rounding
of the GPUs themselves (the same kind of GPU computes the same layers the same way).
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ShedderError

SPREAD = "balanced"  # the device name that asks for this (CLI --device, load_model)


def spread_over_gpus(model: nn.Module) -> nn.Module:
    """Place ``model`` (on the CPU) over every visible GPU, layers balanced by size; one GPU: moved there."""
    gpus = torch.cuda.device_count()
    if gpus == 0:
        raise ShedderError(f"--device {SPREAD} spreads the model over GPUs, and none is visible; use --device cpu.")
    if gpus == 1:
        return model.to("cuda")
    from accelerate import dispatch_model

    free = [torch.cuda.mem_get_info(i)[0] for i in range(gpus)]
    return dispatch_model(model, balanced_device_map(model, free))


def balanced_device_map(model: nn.Module, free_bytes: list[int]) -> dict:
    """accelerate's device map over GPUs ``0 .. len(free_bytes) - 1``, about the same bytes of layers
    on each: budgets of an even share plus one layer, filled in order (accelerate's own balancing keeps
    a small model on one GPU). Uses at most 90 % of each GPU's free memory."""
    from accelerate import infer_auto_device_map

    from ..families import describe_model

    def size(module: nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    share = size(model) // len(free_bytes) + max(size(parts.layer) for parts in describe_model(model)[1])
    memory = {i: min(share, int(free * 0.9)) for i, free in enumerate(free_bytes)}
    keep_whole = list(getattr(model, "_no_split_modules", None) or [])
    device_map = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=keep_whole)
    if any(not isinstance(d, int) for d in device_map.values()):
        gpus = len(free_bytes)
        if size(model) > sum(memory.values()):
            raise ShedderError(f"The model does not fit on the {gpus} GPUs; use more GPUs per replica or a smaller dtype.")
        # e.g. Zamba2: one shared transformer block is part of several layers, which must then stay together
        raise ShedderError(f"This {model.config.model_type} model cannot be split into whole layers over {gpus} GPUs "
                           "(layers that share weights stay on one GPU); use GPUs large enough for it alone.")
    return device_map


def synchronize(model: nn.Module) -> None:
    """Wait for every GPU the model is on (timing a step as a whole)."""
    for index in sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"}):
        torch.cuda.synchronize(index)
