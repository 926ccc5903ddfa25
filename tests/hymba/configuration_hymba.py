"""A small Hymba-compatible configuration for shedder's tests (written for the tests; field names follow the
public ``nvidia/Hymba-1.5B-Base`` config so that shedder reads both alike)."""
from transformers import PretrainedConfig


class HymbaConfig(PretrainedConfig):
    model_type = "hymba"

    def __init__(self, vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
                 mamba_dt_rank=4, mamba_conv_bias=True, mamba_proj_bias=False, mamba_inner_layernorms=True,
                 hidden_act="silu", mlp_hidden_act="silu", rms_norm_eps=1e-6, num_memory_tokens=2,
                 sliding_window=4, global_attn_idx=(0, 3), kv_reuse_group=((1, 2),), rope_theta=10000.0,
                 num_experts=1, tie_word_embeddings=True, use_cache=False, **kwargs):
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.mamba_d_state, self.mamba_d_conv, self.mamba_expand = mamba_d_state, mamba_d_conv, mamba_expand
        self.mamba_dt_rank, self.mamba_conv_bias, self.mamba_proj_bias = mamba_dt_rank, mamba_conv_bias, mamba_proj_bias
        self.mamba_inner_layernorms = mamba_inner_layernorms
        self.hidden_act, self.mlp_hidden_act, self.rms_norm_eps = hidden_act, mlp_hidden_act, rms_norm_eps
        self.num_memory_tokens, self.sliding_window = num_memory_tokens, sliding_window
        self.global_attn_idx = list(global_attn_idx)
        self.kv_reuse_group = [list(g) for g in kv_reuse_group] if kv_reuse_group is not None else None
        self.rope_theta, self.num_experts = rope_theta, num_experts
        super().__init__(tie_word_embeddings=tie_word_embeddings, use_cache=use_cache, **kwargs)
