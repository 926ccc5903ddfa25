"""Checkpoints in mamba-ssm's original format load as transformers models with identical outputs."""
import json

import pytest
import torch

from shedder.errors import ShedderError
from shedder.model.convert import foreign_source, mamba_ssm_config, neox_tokenizer, padded_vocab
from shedder.model.loading import load_config, load_model
from shedder.removal.catalogue import build_catalogue
from tiny_models import build, save_tiny, tiny_tokenizer, token_ids

# The tiny models of tests/tiny_models.py, described the way mamba-ssm's config.json does it.
ORIGINAL_CONFIGS = {
    "mamba": {"d_model": 32, "n_layer": 3, "vocab_size": 96, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 8,
              "ssm_cfg": {"d_state": 8, "d_conv": 4, "expand": 2, "dt_rank": 4}},
    "mamba2": {"d_model": 32, "d_intermediate": 0, "n_layer": 3, "vocab_size": 90, "attn_layer_idx": [],
               "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
               "pad_vocab_size_multiple": 16, "tie_embeddings": False,  # 90 padded to 96
               "ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8}},
}


def write_original(model, family: str, folder, with_tokenizer: bool = False):
    """What a state-spaces repository holds: mamba-ssm names (backbone.embedding) in pytorch_model.bin."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(ORIGINAL_CONFIGS[family]))
    state = {}
    for name, tensor in model.state_dict().items():
        state[name.replace("backbone.embeddings.", "backbone.embedding.")] = tensor.clone()
    assert "backbone.embedding.weight" in state and "lm_head.weight" in state
    torch.save(state, folder / "pytorch_model.bin")
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(folder)
    return folder


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_original_checkpoint_gives_identical_logits(family, tmp_path):
    original = build(family)
    folder = write_original(original, family, tmp_path / family, with_tokenizer=True)
    assert foreign_source(folder).kind == "mamba-ssm"
    config = load_config(str(folder))
    assert config.model_type == family and config.vocab_size == 96
    model, tokenizer = load_model(str(folder), dtype="float32", device="cpu")
    assert type(model).__name__ == type(original).__name__
    ids = token_ids(batch=2, length=20)
    assert torch.equal(logits(model, ids), logits(original, ids))
    assert len(tokenizer) == len(tiny_tokenizer())  # the folder's own tokenizer
    assert len(build_catalogue(model)) == len(build_catalogue(original))


def test_without_tokenizer_files_the_gpt_neox_tokenizer_is_used(tmp_path):
    folder = write_original(build("mamba"), "mamba", tmp_path / "m")
    _, tokenizer = load_model(str(folder), device="cpu")
    assert len(tokenizer) == 50277 and tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 0
    assert tokenizer("Hello world")["input_ids"] == [12092, 1533]
    assert neox_tokenizer()("|||EMAIL_ADDRESS|||")["input_ids"] != [50277]  # ai2's PII placeholders dropped


def test_mamba_ssm_defaults_and_vocab_padding():
    config = mamba_ssm_config({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {}})
    assert config.model_type == "mamba" and config.vocab_size == 50280 and config.time_step_rank == 48
    assert config.state_size == 16 and config.tie_word_embeddings
    config2 = mamba_ssm_config({"d_model": 768, "n_layer": 24, "vocab_size": 50277, "pad_vocab_size_multiple": 16,
                                "ssm_cfg": {"layer": "Mamba2"}})
    assert config2.model_type == "mamba2" and config2.vocab_size == 50288
    assert (config2.num_heads, config2.head_dim, config2.state_size, config2.n_groups) == (24, 64, 128, 1)
    assert padded_vocab(96, 8) == 96 and padded_vocab(97, 8) == 104


@pytest.mark.parametrize("change, message", [
    ({"attn_layer_idx": [1]}, "attention layers"),
    ({"d_intermediate": 64}, "MLP"),
    ({"ssm_cfg": {"layer": "Mamba2", "d_state": 8, "headdim": 8, "ngroups": 2, "chunk_size": 8,
                  "norm_before_gate": True}}, "norm_before_gate"),
    ({"ssm_cfg": {"layer": "Mamba2", "mystery": 1}}, "Unknown Mamba2 ssm_cfg setting"),
])
def test_what_transformers_cannot_hold_is_refused(change, message):
    with pytest.raises(ShedderError, match=message):
        mamba_ssm_config({**ORIGINAL_CONFIGS["mamba2"], **change})


def test_weights_that_do_not_fit_are_explained(tmp_path):
    folder = write_original(build("mamba"), "mamba", tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({**ORIGINAL_CONFIGS["mamba"], "n_layer": 4}))
    with pytest.raises(ShedderError, match="missing"):
        load_model(str(folder), device="cpu")
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(ShedderError, match="no pytorch_model.bin"):
        load_model(str(folder), device="cpu")


def test_transformers_folders_are_not_foreign(tmp_path):
    save_tiny("mamba2", tmp_path)
    assert foreign_source(tmp_path) is None and foreign_source(tmp_path / "missing.gguf") is None
