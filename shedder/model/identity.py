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


LOWER_PRECISIONS = (torch.bfloat16, torch.float16)


def rounded_fingerprints(model: nn.Module) -> dict[str, str]:
    """For a model in float32: the fingerprints its weights would have if loaded in each lower precision
    (``{"bfloat16": ..., "float16": ...}``), so that a plan made on it is recognised on a bfloat16 copy
    of the same checkpoint; empty for a model already in a lower precision."""
    if not any(p.dtype == torch.float32 for p in model.parameters()):
        return {}
    return {str(low).removeprefix("torch."): model_fingerprint(model, low) for low in LOWER_PRECISIONS}


def same_weights(model: nn.Module, fingerprint: str, rounded: dict[str, str] | None = None) -> bool:
    """Whether ``fingerprint`` names ``model``'s weights: as loaded; or as they were when loaded in a lower
    precision (a plan searched in bfloat16 on a GPU names the same float32 checkpoint as this CPU copy); or,
    given the plan's ``rounded`` fingerprints (:func:`rounded_fingerprints`), as this lower-precision copy of
    the float32 weights the plan was made on."""
    own = model_fingerprint(model)
    if own == fingerprint or own in (rounded or {}).values():
        return True
    return any(model_fingerprint(model, low) == fingerprint for low in LOWER_PRECISIONS)
