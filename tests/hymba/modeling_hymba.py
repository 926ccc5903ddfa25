"""A small Hymba-compatible model for shedder's tests, written for them in plain PyTorch (CPU, no kernels).

Module and state-dict names are those of the public ``nvidia/Hymba-1.5B-Base`` model code, and so is the
function of one layer: a hybrid-head mixer (``mamba``) projects its input once (``in_proj``: queries, keys and
values for attention, ``x`` for the SSM, and the gate ``z``), runs attention heads and a Mamba-1 selective scan
in parallel, normalises each branch's output (``pre_avg_layernorm1`` / ``2``), averages them and projects back
(``out_proj``); then an MLP (``moe.experts.0``). Meta tokens (``memory_tokens``) are prepended to every
sequence; most layers attend within a sliding window (the meta tokens always visible), the ``global_attn_idx``
layers globally; layers in a ``kv_reuse_group`` after its first reuse the first one's keys and values.
Not modelled: the real model's key-value cache, kernels and flex/flash attention; ``generate`` recomputes.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from .configuration_hymba import HymbaConfig


class HymbaRMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        dtype = hidden_states.dtype
        hidden_states = hidden_states.float()
        hidden_states = hidden_states * torch.rsqrt(hidden_states.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * hidden_states.to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class HymbaAttention(nn.Module):
    """Attention without projections of its own (the mixer's ``in_proj`` makes q, k, v)."""

    def __init__(self, config, layer_idx, reuse_kv=False):
        super().__init__()
        self.config, self.layer_idx, self.reuse_kv = config, layer_idx, reuse_kv
        self.num_heads, self.num_key_value_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.hidden_size // self.num_heads  # queries and keys
        self.v_head_dim = int(config.mamba_expand * config.hidden_size) // self.num_heads
        self.rope_theta = config.rope_theta

    def _rope(self, x):
        # computed here, not kept as a buffer: transformers 5 leaves non-persistent buffers of custom code unset
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, self.head_dim, 2, device=x.device).float() / self.head_dim))
        positions = torch.arange(x.shape[-2], device=x.device).float()
        freqs = torch.outer(positions, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return x * emb.cos().to(x.dtype) + _rotate_half(x) * emb.sin().to(x.dtype)

    def _mask(self, length, device):
        q, k = torch.arange(length, device=device)[:, None], torch.arange(length, device=device)[None, :]
        allowed = k <= q
        if self.layer_idx not in self.config.global_attn_idx:
            allowed &= (q - k < self.config.sliding_window) | (k < self.config.num_memory_tokens)
        return allowed

    def forward(self, query_states, key_states=None, value_states=None, kv_last_layer=None):
        bsz, length, _ = query_states.shape
        q = self._rope(query_states.view(bsz, length, self.num_heads, self.head_dim).transpose(1, 2))
        if self.reuse_kv:
            k, v = kv_last_layer
        else:
            k = self._rope(key_states.view(bsz, length, self.num_key_value_heads, self.head_dim).transpose(1, 2))
            v = value_states.view(bsz, length, self.num_key_value_heads, self.v_head_dim).transpose(1, 2)
        repeat = self.num_heads // self.num_key_value_heads
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(repeat, 1), v.repeat_interleave(repeat, 1),
                                             attn_mask=self._mask(length, q.device))
        return out.transpose(1, 2).reshape(bsz, length, self.num_heads * self.v_head_dim), (k, v)


class HymbaBlock(nn.Module):
    """The hybrid-head mixer: attention heads and a Mamba-1 scan on one projection, normalised and averaged."""

    def __init__(self, config, layer_idx, reuse_kv=False):
        super().__init__()
        self.layer_idx, self.reuse_kv = layer_idx, reuse_kv
        self.intermediate_size = int(config.mamba_expand * config.hidden_size)
        self.attn_hidden_size = config.hidden_size
        ratio = config.num_key_value_heads / config.num_attention_heads
        self.k_hidden_size = int(ratio * config.hidden_size)
        self.v_hidden_size = int(ratio * config.hidden_size * config.mamba_expand)
        self.ssm_state_size, self.time_step_rank = config.mamba_d_state, config.mamba_dt_rank
        self.self_attn = HymbaAttention(config, layer_idx, reuse_kv)
        self.latent_dim = self.intermediate_size + self.attn_hidden_size
        if not reuse_kv:
            self.latent_dim += self.k_hidden_size + self.v_hidden_size
        self.in_proj = nn.Linear(config.hidden_size, self.latent_dim + self.intermediate_size, bias=config.mamba_proj_bias)
        self.out_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=config.mamba_proj_bias)
        self.conv1d = nn.Conv1d(self.intermediate_size, self.intermediate_size, config.mamba_d_conv,
                                groups=self.intermediate_size, padding=config.mamba_d_conv - 1, bias=config.mamba_conv_bias)
        self.x_proj = nn.ModuleList([nn.Linear(self.intermediate_size, self.time_step_rank + 2 * self.ssm_state_size,
                                               bias=False)])
        self.dt_proj = nn.ModuleList([nn.Linear(self.time_step_rank, self.intermediate_size, bias=True)])
        A = torch.arange(1, self.ssm_state_size + 1, dtype=torch.float32).expand(self.intermediate_size, -1)
        self.A_log = nn.ParameterList([nn.Parameter(torch.log(A).contiguous())])
        self.D = nn.ParameterList([nn.Parameter(torch.ones(self.intermediate_size))])
        if config.mamba_inner_layernorms:
            self.dt_layernorm = HymbaRMSNorm(self.time_step_rank, eps=config.rms_norm_eps)
            self.B_layernorm = HymbaRMSNorm(self.ssm_state_size, eps=config.rms_norm_eps)
            self.C_layernorm = HymbaRMSNorm(self.ssm_state_size, eps=config.rms_norm_eps)
        else:
            self.dt_layernorm = self.B_layernorm = self.C_layernorm = None
        self.pre_avg_layernorm1 = HymbaRMSNorm(self.intermediate_size, eps=config.rms_norm_eps)
        self.pre_avg_layernorm2 = HymbaRMSNorm(self.intermediate_size, eps=config.rms_norm_eps)

    def _scan(self, x, gate):
        """Mamba-1 selective scan of ``x`` (batch, channels, length), gated by ``silu(gate)``."""
        dt, B, C = torch.split(self.x_proj[0](x.transpose(1, 2)), [self.time_step_rank, self.ssm_state_size,
                                                                    self.ssm_state_size], dim=-1)
        if self.dt_layernorm is not None:
            dt, B, C = self.dt_layernorm(dt), self.B_layernorm(B), self.C_layernorm(C)
        dt = F.softplus(self.dt_proj[0](dt)).transpose(1, 2)  # (batch, channels, length)
        A = -torch.exp(self.A_log[0].float())
        state = x.new_zeros(x.shape[0], x.shape[1], self.ssm_state_size).float()
        ys = []
        for t in range(x.shape[-1]):
            dA = torch.exp(dt[:, :, t, None] * A)
            state = dA * state + dt[:, :, t, None] * B[:, None, t, :] * x[:, :, t, None]
            ys.append((state * C[:, None, t, :]).sum(-1))
        y = torch.stack(ys, dim=-1).to(x.dtype) + x * self.D[0][None, :, None]
        return y * F.silu(gate)

    def forward(self, hidden_states, kv_last_layer=None):
        length = hidden_states.shape[1]
        projected = self.in_proj(hidden_states)
        latent, gate = projected.split([self.latent_dim, self.intermediate_size], dim=-1)
        if self.reuse_kv:
            q, x = latent.split([self.attn_hidden_size, self.intermediate_size], dim=-1)
            attn_out, kv = self.self_attn(q, kv_last_layer=kv_last_layer)
        else:
            q, k, v, x = latent.split([self.attn_hidden_size, self.k_hidden_size, self.v_hidden_size,
                                       self.intermediate_size], dim=-1)
            attn_out, kv = self.self_attn(q, k, v)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :length])
        scan_out = self._scan(x, gate.transpose(1, 2)).transpose(1, 2)
        mixed = (self.pre_avg_layernorm1(attn_out) + self.pre_avg_layernorm2(scan_out)) / 2
        return self.out_proj(mixed), kv


class HymbaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class HymbaSparseMoeBlock(nn.Module):
    """One expert (as in the released checkpoints), so no router."""

    def __init__(self, config):
        super().__init__()
        self.router = None
        self.experts = nn.ModuleList([HymbaMLP(config)])

    def forward(self, hidden_states):
        return self.experts[0](hidden_states), None


class HymbaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx, reuse_kv=False):
        super().__init__()
        self.mamba = HymbaBlock(config, layer_idx, reuse_kv)
        self.input_layernorm = HymbaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.moe = HymbaSparseMoeBlock(config)
        self.pre_moe_layernorm = HymbaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, kv_last_layer=None, **kwargs):
        mixed, kv = self.mamba(self.input_layernorm(hidden_states), kv_last_layer=kv_last_layer)
        hidden_states = hidden_states + mixed
        hidden_states = hidden_states + self.moe(self.pre_moe_layernorm(hidden_states))[0]
        return hidden_states, kv


class HymbaPreTrainedModel(PreTrainedModel):
    config_class = HymbaConfig
    base_model_prefix = "model"
    _no_split_modules = ["HymbaDecoderLayer"]

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            module.weight.data.normal_(0.0, 0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.data.normal_(0.0, 0.02)


class HymbaModel(HymbaPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        consumers = {layer: group[0] for group in (config.kv_reuse_group or []) for layer in group[1:]}
        self.kv_producer = consumers  # consumer layer -> the layer whose keys and values it reuses
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([HymbaDecoderLayer(config, i, reuse_kv=i in consumers)
                                     for i in range(config.num_hidden_layers)])
        self.final_layernorm = HymbaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        if config.num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.randn(config.num_memory_tokens, config.hidden_size))
        self.post_init()

    def forward(self, input_ids):
        hidden = self.embed_tokens(input_ids)
        memory = self.config.num_memory_tokens
        if memory > 0:
            hidden = torch.cat([self.memory_tokens.expand(hidden.shape[0], -1, -1).to(hidden.dtype), hidden], dim=1)
        shared = {}
        for i, layer in enumerate(self.layers):
            outputs = layer(hidden, kv_last_layer=shared.get(self.kv_producer.get(i)))
            hidden = outputs[0]
            shared[i] = outputs[-1]
        return self.final_layernorm(hidden)[:, memory:]


class HymbaForCausalLM(HymbaPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = HymbaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, labels=None, **kwargs):
        logits = self.lm_head(self.model(input_ids)).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return CausalLMOutput(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}  # no cache: every step recomputes the whole sequence


HymbaConfig.register_for_auto_class()
HymbaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
