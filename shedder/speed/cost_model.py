"""Analytic per-token cost of a model under a plan: the *ideal* speedup a removal implies (an estimate).

Two budgets, counted per layer from the dense model's shapes and the plan's removal semantics:

- **Decode reads bytes** (batch-1 decode is memory-bound). One decode step reads every weight once,
  plus, per sequence in the batch, each Mamba layer's recurrent state (float32, as transformers keeps
  it) and conv state, both read and written back, and each attention layer's K/V cache up to the
  current context. The input embedding table counts only when it is tied to the output head (only
  one row per token is read otherwise). Ideal decode speedup = dense bytes / pruned bytes.
- **Prefill spends FLOPs.** Per prompt token: 2 x every weight a token passes through (the output
  head only once per prompt, as ``generate`` computes logits for the last position only), plus the
  mixing terms the weights do not show, at prompt length T:

  - Mamba-2 (SSD, chunked): ``2*Q*(G*N + d_inner)`` for the intra-chunk scores ``C B^T`` and their
    product with ``x`` (chunk size Q = min(chunk_size, T)), plus ``4*d_inner*N`` to build each
    chunk's state and read it out (N = d_state, G*N = width of B and of C);
  - Mamba-1 (selective scan): ``7*d_inner*N`` per token (discretise, ``dA*h + dB*x``, ``C*h``);
  - attention: ``2*heads*head_dim*(T+1)`` (``QK^T`` and ``AV`` over the causal half on average).

  Ideal prefill speedup = dense FLOPs / pruned FLOPs.

Removal semantics (the README's "Supported models" table), as extraction realises them: a removed block costs nothing; a removed
SSM keeps its gate, gated norm, conv on ``x`` and ``out_proj`` but loses its state, its scan term and
the weights only the scan used; removed Mamba-2 heads shrink the state and scan terms only where
extraction drops them whole (not behind a gated norm, which still runs them); removed attention heads
shrink the attention term to the query heads and K/V heads extraction keeps (grouped-query attention
keeps equal groups); removed attention / MLP sub-blocks and channel groups cost their weights. Freed
weights are the catalogue's count for the whole removed set, so "pruned bytes" is exactly what
extraction deletes. Not modelled: MoE experts (counted as if every expert ran), Zamba2's shared block
(its weights once, its mixing term per use), activations, and kernel efficiency.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..extraction.pruned_modeling.pruned_layers import attention_head_slots
from ..families import LayerParts, describe_model
from ..model.ssm_layout import mamba2_layout
from ..plan import Plan, as_plan
from ..removal.catalogue import Component, catalogue_of

RECURRENT_STATE_BYTES = 4  # transformers keeps SSM states in float32 whatever the weights' dtype


@dataclass(frozen=True)
class LayerCost:
    """What one kept layer costs per token / per sequence."""

    state_bytes: int = 0  # recurrent + conv state of one sequence
    kv_bytes_per_token: int = 0  # K and V of one context token of one sequence
    scan_flops: dict | None = None  # Mamba terms: {"version", "d_inner", "state", "group_state", "chunk"}
    attn_width: int = 0  # heads * head_dim of the query side, for the context term


@dataclass(frozen=True)
class ModelCost:
    weight_bytes: int  # weights read once per decode step
    matmul_params: int  # weights a prompt token passes through (excluding the output head)
    head_params: int  # output head (computed once per prompt)
    layers: tuple[LayerCost, ...]

    def decode_bytes_per_step(self, batch: int, context: int) -> int:
        per_sequence = sum(2 * layer.state_bytes + layer.kv_bytes_per_token * context for layer in self.layers)
        return self.weight_bytes + batch * per_sequence

    def prefill_flops_per_token(self, prompt_len: int) -> float:
        mixing = sum(_mixing_flops(layer, prompt_len) for layer in self.layers)
        return 2 * self.matmul_params + mixing + 2 * self.head_params / prompt_len

    def to_dict(self, prompt_len: int, batch_sizes: list[int], context: int) -> dict:
        return {
            "weight_bytes": self.weight_bytes,
            "state_bytes_per_sequence": sum(layer.state_bytes for layer in self.layers),
            "kv_bytes_per_token": sum(layer.kv_bytes_per_token for layer in self.layers),
            "prefill_flops_per_token": round(self.prefill_flops_per_token(prompt_len)),
            "decode_bytes_per_step": {str(b): self.decode_bytes_per_step(b, context) for b in batch_sizes},
        }


def _mixing_flops(layer: LayerCost, prompt_len: int) -> float:
    flops = 2 * layer.attn_width * (prompt_len + 1)
    scan = layer.scan_flops
    if scan is None:
        return flops
    if scan["version"] == 1:
        return flops + 7 * scan["d_inner"] * scan["state"]
    chunk = min(scan["chunk"], prompt_len)
    return flops + 2 * chunk * (scan["group_state"] + scan["d_inner"]) + 4 * scan["d_inner"] * scan["state"]


def _attention_shape(attn: nn.Module) -> tuple[int, int, int] | None:
    """(query heads, key/value heads, head_dim) of the first attention inside ``attn``."""
    for module in attn.modules():
        q, k, head_dim = getattr(module, "q_proj", None), getattr(module, "k_proj", None), getattr(module, "head_dim", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and head_dim:
            return q.out_features // head_dim, k.out_features // head_dim, head_dim
    return None


def _attention_cost(parts: LayerParts, heads_removed: set[int], dtype_bytes: int) -> tuple[int, int]:
    """(K/V bytes per context token, query width) of the attention that extraction keeps."""
    shape = _attention_shape(parts.attn)
    if shape is None:
        return 0, 0
    n_query, n_kv, head_dim = shape
    if heads_removed:
        kept = [h for h in range(n_query) if h not in heads_removed]
        if not kept:
            return 0, 0
        slots, kv_heads = attention_head_slots(n_query, n_kv, kept)
        n_query, n_kv = len(slots), len(kv_heads)
    return 2 * n_kv * head_dim * dtype_bytes, n_query * head_dim


def _ssm_cost(parts: LayerParts, ssm_removed: bool, heads_dropped: int, dtype_bytes: int) -> tuple[int, dict | None]:
    """(state bytes of one sequence, scan terms or None) of a Mamba mixer under the plan."""
    mixer = parts.ssm
    kernel = mixer.conv1d.weight.shape[-1]
    if parts.ssm_version == 1:
        a_log = mixer.A_log[0] if isinstance(mixer.A_log, nn.ParameterList) else mixer.A_log  # Hymba keeps a list
        d_inner, state = a_log.shape
        conv_channels, group_state, chunk = d_inner, 0, 0
    else:
        layout = mamba2_layout(mixer)
        d_inner = layout.d_inner - heads_dropped * layout.head_dim
        state, group_state, chunk = mixer.ssm_state_size, layout.group_state, mixer.chunk_size
        conv_channels = d_inner + (0 if ssm_removed else 2 * group_state)  # B/C channels go with the scan
    conv_bytes = conv_channels * kernel * dtype_bytes
    if ssm_removed:
        return conv_bytes, None
    scan = {"version": parts.ssm_version, "d_inner": d_inner, "state": state, "group_state": group_state,
            "chunk": chunk}
    return conv_bytes + d_inner * state * RECURRENT_STATE_BYTES, scan


def _ssm_heads_dropped(catalogue, layer: int, heads: set[int], kinds_here: set[str]) -> int:
    """How many of the removed Mamba-2 heads extraction drops whole (the rest still run)."""
    counts = catalogue.heads.get(("ssm_heads", layer)) if heads else None
    if counts is None or counts.gated_norm or counts.freed(heads, frozenset(kinds_here)) == 0:
        return 0
    return len(heads)


def model_cost(model: nn.Module, plan: Plan | list[Component] = ()) -> ModelCost:
    """The analytic cost of ``model`` with the plan's components physically taken out (see the module docstring)."""
    plan = as_plan(plan)
    removed = list(plan.removed)
    catalogue = catalogue_of(model, plan.channel_group_size)
    freed = catalogue.params_of(removed) if removed else 0
    params = list({id(p): p for p in model.parameters()}.values())
    dtype_bytes = params[0].element_size()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding
    head_params = head.weight.numel() if head is not None else 0
    total = sum(p.numel() for p in params)
    weight_bytes = sum(p.numel() * p.element_size() for p in params) - freed * dtype_bytes
    if not tied:
        weight_bytes -= embedding.numel() * embedding.element_size()
    matmul_params = total - freed - embedding.numel() - (0 if tied else head_params)

    kinds_at: dict[int, list[Component]] = {}
    for c in removed:
        kinds_at.setdefault(c.layer, []).append(c)
    _, layers = describe_model(model)
    costs = []
    for parts in layers:
        here = kinds_at.get(parts.index, [])
        kinds = {c.kind for c in here}
        if "block" in kinds:
            continue
        state_bytes, scan = 0, None
        if parts.ssm is not None:
            heads = {c.index for c in here if c.kind == "ssm_heads"}
            dropped = _ssm_heads_dropped(catalogue, parts.index, heads, kinds)
            state_bytes, scan = _ssm_cost(parts, "ssm" in kinds, dropped, dtype_bytes)
        kv_bytes, attn_width = 0, 0
        if parts.attn is not None and "attn" not in kinds:
            heads = {c.index for c in here if c.kind == "attn_heads"}
            kv_bytes, attn_width = _attention_cost(parts, heads, dtype_bytes)
        costs.append(LayerCost(state_bytes, kv_bytes, scan, attn_width))
    return ModelCost(weight_bytes, matmul_params, head_params, tuple(costs))


def ideal_speedups(dense: ModelCost, pruned: ModelCost, prompt_len: int, batch_sizes: list[int],
                   context: int) -> dict:
    """Dense cost / pruned cost: prefill (FLOPs at ``prompt_len``), decode (bytes per step at ``context``
    for each batch size) and the weights alone."""
    return {
        "prefill_flops": dense.prefill_flops_per_token(prompt_len) / pruned.prefill_flops_per_token(prompt_len),
        "decode_bytes": {str(b): dense.decode_bytes_per_step(b, context) / pruned.decode_bytes_per_step(b, context)
                         for b in batch_sizes},
        "weight_bytes": dense.weight_bytes / pruned.weight_bytes,
    }
