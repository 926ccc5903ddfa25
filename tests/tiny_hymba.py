"""A tiny random Hymba folder for the tests: our own Hymba-compatible code (``tests/hymba``) next to its
weights, loaded as the real checkpoints are, with ``trust_remote_code=True``."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tiny_models import tiny_tokenizer

CODE = Path(__file__).resolve().parent / "hymba"
AUTO_MAP = {"AutoConfig": "configuration_hymba.HymbaConfig", "AutoModelForCausalLM": "modeling_hymba.HymbaForCausalLM"}


def save_tiny_hymba(directory, seed: int = 0, **config) -> Path:
    """A folder holding a seeded tiny Hymba (norms, D and meta tokens random, so no removal is a no-op by
    accident), its code and a tokenizer."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("configuration_hymba.py", "modeling_hymba.py"):
        shutil.copy(CODE / name, directory / name)
    (directory / "config.json").write_text(json.dumps({"model_type": "hymba", "auto_map": AUTO_MAP, **config}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory, trust_remote_code=True),
                                             trust_remote_code=True)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm1.weight", "layernorm2.weight", ".D.0")):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def load_tiny_hymba(directory):
    return AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
