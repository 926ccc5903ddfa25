"""A Mamba-2/attention hybrid made from a Llama model: the zoo's ``smollm2-hybrid``.

The recipe of *The Mamba in the Llama* (Wang et al., 2024), on transformers' stock ``BambaForCausalLM``:
keep the Llama model's embeddings, norms, MLPs and the attention of the layers that stay attention, and
give every other layer a Mamba-2 mixer initialised from the attention it replaces. A Mamba-2 head
computes ``y_t = sum_s C_t . B_s * dt_s * exp(decay) * x_s``, a linear attention, so with one group per
query head and a state as wide as an attention head:

- ``x`` <- the values (``v_proj``; key-value heads repeated as the attention shares them),
- ``B`` <- the keys (``k_proj``, repeated likewise), ``C`` <- the queries (``q_proj``),
- ``out_proj`` <- ``o_proj``.

The gate ``z`` starts with zero weights and a constant bias (so the gated norm only normalises each
head), the convolution starts as the identity, ``dt`` comes from ``dt_bias`` alone. Distillation
(``scripts/make_smollm2_hybrid.py``) then trains the mixers.

What ships is a *delta* (:class:`HybridDelta`, one safetensors file): the Bamba config, the list of
converted layers, and for each tensor of the Bamba model that is not the initial value above either
its full value (``name``) or a low-rank correction (``name.up`` @ ``name.down``) added to it.
:func:`build_hybrid` makes the model from the Llama model's weights plus that file; rotary settings,
tied embeddings and every attention layer that stays are carried over exactly (``partial_rotary_factor``
is set to 1.0: Bamba's own default rotates half of each head).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ShedderError

log = logging.getLogger(__name__)

Z_BIAS = 1.0  # the gate's initial bias: silu(1) > 0 on every channel, normalised away by the gated norm
DT_RANGE = (1e-3, 1e-1)  # initial dt per head, log-spaced (Mamba's default range)
A_RANGE = (1.0, 16.0)  # initial -A per head, evenly spaced (Mamba's default range)
UP, DOWN = ".up", ".down"
FORMAT = "shedder-hybrid-delta/1"


# --- the architecture --------------------------------------------------------------------------

def hybrid_config(llama_config, mamba_layers: Sequence[int], chunk_size: int = 256):
    """The ``BambaConfig`` of ``llama_config`` with Mamba-2 mixers in ``mamba_layers``."""
    from transformers import BambaConfig

    n_layers = llama_config.num_hidden_layers
    mamba_layers = sorted(set(int(i) for i in mamba_layers))
    if mamba_layers and (mamba_layers[0] < 0 or mamba_layers[-1] >= n_layers):
        raise ShedderError(f"Mamba layers {mamba_layers} do not fit a model of {n_layers} layers.")
    heads, kv_heads = llama_config.num_attention_heads, llama_config.num_key_value_heads
    head_dim = getattr(llama_config, "head_dim", None) or llama_config.hidden_size // heads
    if heads * head_dim % llama_config.hidden_size or head_dim != llama_config.hidden_size // heads:
        raise ShedderError("Bamba's attention needs head_dim == hidden_size / num_attention_heads.")
    if getattr(llama_config, "attention_bias", False) or getattr(llama_config, "mlp_bias", False):
        raise ShedderError("Bamba has no attention or MLP biases; this Llama model has them.")
    rope = dict(llama_config.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise ShedderError(f"Only default rotary embeddings carry over to Bamba, not {rope.get('rope_type')!r}.")
    rope = {"rope_type": "default", "rope_theta": float(rope["rope_theta"]), "partial_rotary_factor": 1.0}
    return BambaConfig(
        vocab_size=llama_config.vocab_size, tie_word_embeddings=bool(llama_config.tie_word_embeddings),
        hidden_size=llama_config.hidden_size, intermediate_size=llama_config.intermediate_size,
        num_hidden_layers=n_layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        hidden_act=llama_config.hidden_act, rms_norm_eps=llama_config.rms_norm_eps,
        max_position_embeddings=llama_config.max_position_embeddings, rope_parameters=rope,
        attn_layer_indices=[i for i in range(n_layers) if i not in mamba_layers],
        mamba_n_heads=heads, mamba_d_head=head_dim, mamba_n_groups=heads, mamba_d_state=head_dim,
        mamba_expand=heads * head_dim // llama_config.hidden_size, mamba_d_conv=4, mamba_chunk_size=chunk_size,
        mamba_conv_bias=True, mamba_proj_bias=True, attention_bias=False, mlp_bias=False,
        bos_token_id=llama_config.bos_token_id, eos_token_id=llama_config.eos_token_id,
        pad_token_id=llama_config.pad_token_id,
    )


def mamba_layers_of(config) -> list[int]:
    attention = set(config.attn_layer_indices or [])
    return [i for i in range(config.num_hidden_layers) if i not in attention]


def _repeat_heads(weight: torch.Tensor, kv_heads: int, heads: int) -> torch.Tensor:
    """(kv_heads * d, hidden) -> (heads * d, hidden): key-value head j serves query heads j*g .. j*g+g-1."""
    d = weight.shape[0] // kv_heads
    return weight.view(kv_heads, d, -1).repeat_interleave(heads // kv_heads, dim=0).reshape(heads * d, -1)


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _llama_name(bamba_name: str) -> str | None:
    """The Llama tensor a Bamba tensor copies (None for the mixers')."""
    name = bamba_name.replace(".feed_forward.", ".mlp.").replace(".pre_ff_layernorm.", ".post_attention_layernorm.")
    name = name.replace("model.final_layernorm.", "model.norm.")
    return None if ".mamba." in name else name


def initial_state(llama_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """The Bamba state dict before training: Llama weights copied, each mixer from its layer's attention."""
    heads, kv_heads = config.mamba_n_heads, config.num_key_value_heads
    hidden, d_inner = config.hidden_size, config.mamba_n_heads * config.mamba_d_head
    state: dict[str, torch.Tensor] = {}
    for name, tensor in llama_state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        layer = _layer_of(name)
        if layer is not None and layer in mamba_layers_of(config) and ".self_attn." in name:
            continue
        name = name.replace(".mlp.", ".feed_forward.").replace(".post_attention_layernorm.", ".pre_ff_layernorm.")
        state[name.replace("model.norm.", "model.final_layernorm.")] = tensor.float()
    dt = torch.exp(torch.linspace(math.log(DT_RANGE[0]), math.log(DT_RANGE[1]), heads))
    for i in mamba_layers_of(config):
        attn, mixer = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mamba."
        q, k, v, o = (llama_state[attn + f"{p}_proj.weight"].float() for p in "qkvo")
        on = {"device": q.device}
        in_proj = torch.cat([torch.zeros(d_inner, hidden, **on), _repeat_heads(v, kv_heads, heads),
                             _repeat_heads(k, kv_heads, heads), q, torch.zeros(heads, hidden, **on)])
        in_bias = torch.zeros(in_proj.shape[0], **on)
        in_bias[:d_inner] = Z_BIAS
        conv = torch.zeros(3 * d_inner, 1, config.mamba_d_conv, **on)
        conv[..., -1] = 1.0
        state.update({
            mixer + "in_proj.weight": in_proj, mixer + "in_proj.bias": in_bias,
            mixer + "conv1d.weight": conv, mixer + "conv1d.bias": torch.zeros(3 * d_inner, **on),
            mixer + "dt_bias": _inverse_softplus(dt).to(q.device),
            mixer + "A_log": torch.log(torch.linspace(*A_RANGE, heads)).to(q.device),
            mixer + "D": torch.zeros(heads, **on), mixer + "norm.weight": torch.ones(d_inner, **on),
            mixer + "out_proj.weight": o, mixer + "out_proj.bias": torch.zeros(hidden, **on),
        })
    return state


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if len(parts) > 2 and parts[1] == "layers" else None


def bamba_from_state(config, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> nn.Module:
    """A ``BambaForCausalLM`` holding exactly ``state``."""
    from transformers import BambaForCausalLM

    with torch.device("meta"):
        model = BambaForCausalLM(config)
    expected = {k for k in model.state_dict() if not (k == "lm_head.weight" and config.tie_word_embeddings)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ShedderError(f"The hybrid's weights do not fit its config: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}.")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, buffer in list(model.named_buffers()):  # rotary frequencies are not in the state dict
        if buffer.is_meta:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            module._buffers[attr] = _rotary_buffer(module, attr, config)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise ShedderError(f"The hybrid was left with parameters without weights: {leftover[:4]}.")
    return model.eval()


def _rotary_buffer(module: nn.Module, attr: str, config) -> torch.Tensor:
    inv_freq, _ = module.compute_default_rope_parameters(config, device="cpu")
    if attr not in ("inv_freq", "original_inv_freq"):
        raise ShedderError(f"Unexpected buffer {attr!r} left on the meta device.")
    return inv_freq


# --- the delta: what the trained hybrid holds beyond the initial state ----------------------------

@dataclass
class HybridDelta:
    """A hybrid as the difference from its initial state (see the module docstring)."""

    config: object  # BambaConfig
    tensors: dict[str, torch.Tensor]  # full values ``name``, or ``name.up`` / ``name.down`` corrections
    info: dict  # the recipe's own record (base model, steps, measurements)

    @property
    def mamba_layers(self) -> list[int]:
        return mamba_layers_of(self.config)

    def apply(self, initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trained state: ``initial`` with every full value replaced and every correction added."""
        state = dict(initial)
        for name, tensor in self.tensors.items():
            if name.endswith(DOWN):
                continue
            if name.endswith(UP):
                base = name[: -len(UP)]
                down = self.tensors[base + DOWN].float()
                state[base] = initial[base] + (tensor.float() @ down).to(initial[base].device)
            else:
                if name not in initial:
                    raise ShedderError(f"The delta names {name!r}, which the hybrid does not have.")
                state[name] = tensor.float().to(initial[name].device)
        return state

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "config": json.dumps(self.config.to_dict()), "info": json.dumps(self.info)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sorted(self.tensors.items())}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> HybridDelta:
        from safetensors.torch import load_file

        meta = _metadata(path)
        return cls(config_from_json(meta["config"]), load_file(str(path)), json.loads(meta.get("info", "{}")))


def config_from_json(text: str):
    from transformers import BambaConfig

    raw = json.loads(text)
    for key in ("model_type", "transformers_version", "architectures"):
        raw.pop(key, None)
    return BambaConfig(**raw)


def _metadata(path: str | Path) -> dict:
    """A delta file's header (its config and the recipe's record), checked to be one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ShedderError(f"{path} is missing: the hybrid's delta file ships with the repository.")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ShedderError(f"{path} is not a hybrid delta ({FORMAT}).")
    return meta


def read_config(path: str | Path):
    """The Bamba config stored in a delta file (cheap: the header only)."""
    return config_from_json(_metadata(path)["config"])


def build_hybrid(llama: nn.Module, delta: HybridDelta, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The trained hybrid from the Llama model it was made from and its delta."""
    if llama.config.model_type != "llama":
        raise ShedderError(f"The hybrid is made from a Llama model, not {llama.config.model_type!r}.")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "intermediate_size"):
        if getattr(llama.config, key) != getattr(delta.config, key):
            raise ShedderError(f"The delta was made for a model with {key}={getattr(delta.config, key)}, "
                               f"not {getattr(llama.config, key)}.")
    check_group_norm()
    initial = initial_state(llama.state_dict(), delta.config)
    return bamba_from_state(delta.config, delta.apply(initial), dtype)


# --- training form: low-rank corrections as modules ----------------------------------------------

class LowRankLinear(nn.Module):
    """``base`` (frozen) + ``up @ down`` (trained) and a trained bias: a Linear during training."""

    def __init__(self, linear: nn.Linear, rank: int):
        super().__init__()
        out_features, in_features = linear.weight.shape
        self.register_buffer("base", linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None else None
        self.down = nn.Parameter(torch.randn(rank, in_features, device=linear.weight.device) / math.sqrt(in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank, device=linear.weight.device))

    @property
    def weight(self) -> torch.Tensor:
        return self.base + self.up @ self.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.base.to(x.dtype), self.bias)
        return y + nn.functional.linear(nn.functional.linear(x, self.down.to(x.dtype)), self.up.to(x.dtype))


def low_rank_mixers(model: nn.Module, layers: Sequence[int], rank: int) -> None:
    """Replace in_proj / out_proj of the mixers in ``layers`` by :class:`LowRankLinear` (in place)."""
    for i in layers:
        mixer = model.model.layers[i].mamba
        for attr in ("in_proj", "out_proj"):
            if not isinstance(getattr(mixer, attr), LowRankLinear):
                setattr(mixer, attr, LowRankLinear(getattr(mixer, attr), rank))


class GroupGatedRMSNorm(nn.Module):
    """The gated RMSNorm of a Mamba-2 mixer normalised per group (per head here), as mamba-ssm's kernels and
    transformers >= 5.23 do; older transformers normalise over all heads at once. Training uses this module
    so that the delta means the same on every version it is trained on."""

    def __init__(self, weight: torch.Tensor, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.group_size, self.eps = group_size, eps

    def forward(self, hidden_states: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.float()
        if gate is not None:
            x = x * nn.functional.silu(gate.float())
        groups = x.view(*x.shape[:-1], -1, self.group_size)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.view_as(x).to(dtype)


def group_norms(model: nn.Module, layers: Sequence[int]) -> None:
    """Give the mixers in ``layers`` a :class:`GroupGatedRMSNorm` (in place; same weights, same name)."""
    config = model.config
    for i in layers:
        mixer = model.model.layers[i].mamba
        if not isinstance(mixer.norm, GroupGatedRMSNorm):
            size = config.mamba_n_heads * config.mamba_d_head // config.mamba_n_groups
            mixer.norm = GroupGatedRMSNorm(mixer.norm.weight, size, mixer.norm.variance_epsilon)


def check_group_norm() -> None:
    """The hybrid needs transformers' per-group gated norm (transformers >= 5.23)."""
    import inspect

    from transformers.models.bamba import modeling_bamba

    if "group_size" not in inspect.signature(modeling_bamba.BambaRMSNormGated.__init__).parameters:
        import transformers

        raise ShedderError(f"transformers {transformers.__version__} normalises Bamba's gated norm over all heads "
                           "at once; this hybrid needs the per-head norm of transformers >= 5.23 "
                           "(pip install -r requirements.txt).")


def trainable_mixer_parameters(model: nn.Module, layers: Sequence[int]) -> list[nn.Parameter]:
    params = []
    for i in layers:
        for p in model.model.layers[i].mamba.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def delta_of(model: nn.Module, layers: Sequence[int], dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The delta tensors of a model trained with :func:`low_rank_mixers` (mixers of ``layers`` only): the
    low-rank factors in ``dtype``, the small full tensors (biases, convolution, per-head values, norm) in
    float32."""
    tensors = {}
    for i in layers:
        mixer = model.model.layers[i].mamba
        prefix = f"model.layers.{i}.mamba."
        for name, module in mixer.named_modules():
            if isinstance(module, LowRankLinear):
                tensors[prefix + name + ".weight" + UP] = module.up.detach().to("cpu", dtype)
                tensors[prefix + name + ".weight" + DOWN] = module.down.detach().to("cpu", dtype)
        for name, p in mixer.named_parameters():
            owner = name.rpartition(".")[0]
            if owner and isinstance(mixer.get_submodule(owner), LowRankLinear) and not name.endswith(".bias"):
                continue
            tensors[prefix + name] = p.detach().to("cpu", torch.float32)
    return tensors
