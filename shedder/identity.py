"""A model's identity: what a plan or a cached result must match to be used with it."""
from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

_SAMPLE = 4096  # values hashed per tensor: both ends plus an even stride through the middle


def model_fingerprint(model: nn.Module, rounded_to: torch.dtype | None = None) -> str:
    """Hash of the config and a deterministic sample of every weight (cheap even for billions).

    ``rounded_to``: hash the sample as it would be after casting the weights to that dtype (see
    :func:`same_weights`)."""
    digest = hashlib.blake2b(digest_size=12)
    config = model.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures"):
        config.pop(volatile, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            step = max(1, flat.numel() // _SAMPLE)
            sample = torch.cat([flat[:64], flat[::step], flat[-64:]])
            if rounded_to is not None and sample.is_floating_point():
                sample = sample.to(rounded_to)
            sample = sample.float().cpu()
            digest.update(name.encode())
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def same_weights(model: nn.Module, fingerprint: str) -> bool:
    """Whether ``fingerprint`` names ``model``'s weights, as loaded or as they were when loaded in a lower
    precision (a plan searched in bfloat16 on a GPU names the same float32 checkpoint as this CPU copy)."""
    if model_fingerprint(model) == fingerprint:
        return True
    return any(model_fingerprint(model, low) == fingerprint for low in (torch.bfloat16, torch.float16))
