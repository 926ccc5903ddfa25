"""Tiny random-weight models of every supported family, built in the test (no downloads)."""
from __future__ import annotations

import torch
import transformers as T

VOCAB = 96


def _configs() -> dict:
    return {
        "mamba": T.MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                               conv_kernel=4, time_step_rank=4),
        "falcon_mamba": T.FalconMambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3,
                                            expand=2, time_step_rank=4),
        "mamba2": T.Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                                 head_dim=8, num_heads=8, n_groups=2, chunk_size=8),
        "zamba2": T.Zamba2Config(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, mamba_d_state=8,
                                 mamba_headdim=8, n_mamba_heads=8, mamba_ngroups=1, num_attention_heads=4,
                                 num_key_value_heads=4, attention_head_dim=16, intermediate_size=64,
                                 layers_block_type=["mamba", "hybrid", "mamba", "hybrid"], hybrid_layer_ids=[1, 3],
                                 num_mem_blocks=1, adapter_rank=4, chunk_size=8),
        "bamba": T.BambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=8,
                               mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=8),
        "nemotron_h": T.NemotronHConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                                        hybrid_override_pattern="M*-ME", num_attention_heads=4, num_key_value_heads=2,
                                        head_dim=8, mamba_num_heads=8, mamba_head_dim=8, n_groups=1,
                                        ssm_state_size=8, chunk_size=8, n_routed_experts=2, num_experts_per_tok=1,
                                        moe_intermediate_size=16, moe_shared_expert_intermediate_size=16),
        "falcon_h1": T.FalconH1Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_n_heads=8,
                                      mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=8,
                                      mamba_d_ssm=64, mamba_rms_norm=True),
        "jamba": T.JambaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, attn_layer_period=2, attn_layer_offset=1,
                               expert_layer_period=2, expert_layer_offset=1, num_experts=2, mamba_d_state=8,
                               mamba_expand=2, mamba_dt_rank=4),
        "granitemoehybrid": T.GraniteMoeHybridConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                                     layer_types=["mamba", "attention", "mamba"], num_local_experts=2,
                                                     num_experts_per_tok=1, shared_intermediate_size=64,
                                                     mamba_n_heads=8, mamba_d_head=8, mamba_n_groups=1,
                                                     mamba_d_state=8, mamba_chunk_size=8),
        "llama": T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                               num_attention_heads=4, num_key_value_heads=2),
    }


FAMILIES = sorted(_configs())


def build(family: str, seed: int = 0, **config_overrides) -> torch.nn.Module:
    """A seeded tiny model; norms and D get random values so that no removal is accidentally a no-op."""
    torch.manual_seed(seed)
    config = _configs()[family]
    for key, value in config_overrides.items():
        setattr(config, key, value)
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("norm.weight", ".D", "layernorm.weight")):
                param.uniform_(0.5, 1.5)
    return model.eval()


def token_ids(batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


SAMPLE_TEXT = (
    "The state space model reads a sequence one token at a time and keeps a small memory of what it saw. "
    "Pruning removes the parts of a network that matter least, and a good method measures that first. "
) * 40


def tiny_tokenizer(text: str = SAMPLE_TEXT, vocab_size: int = VOCAB):
    """A character-level BPE tokenizer trained on ``text`` with at most ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([text], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def save_tiny(family: str, directory, seed: int = 0):
    """Save a tiny model plus tokenizer as a transformers folder, like a user's local checkpoint."""
    model = build(family, seed)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return model


def train_briefly(model: torch.nn.Module, ids: torch.Tensor, steps: int = 60, lr: float = 3e-3, seed: int = 0):
    """A few optimiser steps on ``ids`` so that components differ in importance, as in a real model."""
    torch.manual_seed(seed)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()
