"""``attn_heads``: one attention (query) head; its slice of the output projection's input is zero.

Under grouped-query attention every key/value group keeps as many query heads as the fullest one
(``attention_head_slots``), so one head alone frees nothing unless each key/value head has one query head; a
key/value head goes (its k/v rows freed) only with its whole group.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..extraction.pruned_modeling.pruned_layers import attention_head_slots
from .base import Kind, kept, path_in, rows_params


@dataclass(frozen=True)
class AttnHeadCounts:
    n_query: int
    n_kv: int
    query_head: int  # one query head's rows of q_proj and columns of o_proj
    kv_head: int  # one key/value head's rows of k_proj and v_proj

    def freed(self, removed: set[int], removed_here: frozenset[str] = frozenset()) -> int:
        left = [h for h in range(self.n_query) if h not in removed]
        if not left:
            return self.n_query * self.query_head + self.n_kv * self.kv_head
        slots, kv_heads = attention_head_slots(self.n_query, self.n_kv, left)
        return (self.n_query - len(slots)) * self.query_head + (self.n_kv - len(kv_heads)) * self.kv_head


def head_counts(parts) -> AttnHeadCounts:
    hd = parts.attn_head_dim
    attn = parts.attn
    return AttnHeadCounts(n_query=attn.o_proj.in_features // hd, n_kv=attn.k_proj.out_features // hd,
                          query_head=rows_params(attn.q_proj, hd) + attn.o_proj.out_features * hd,
                          kv_head=rows_params(attn.k_proj, hd) + rows_params(attn.v_proj, hd))


def entries(parts, counting):
    if parts.attn is None or not parts.attn_head_dim:
        return []
    counts = counting.heads[("attn_heads", parts.index)] = head_counts(parts)
    return [(h, counts.freed({h})) for h in range(counts.n_query) if h not in parts.silenced_attn_heads]


def _head(parts, index) -> slice:
    hd = parts.attn_head_dim
    return slice(index * hd, (index + 1) * hd)


def columns(parts, index, grouping):
    return parts.attn.o_proj.weight[:, _head(parts, index)]


def mask(edits, parts, index, setting) -> None:
    edits.zero_columns(parts.attn.o_proj, _head(parts, index))


def ops(parts, indices, grouping) -> list[dict]:
    n_heads = parts.attn.o_proj.in_features // parts.attn_head_dim
    left = kept(n_heads, set(indices), "attention head", parts.index, "attn")
    return [{"op": "attn_heads", "module": path_in(parts.layer, parts.attn), "kept": left}]


KIND = Kind("attn_heads", "one attention head: its slice of the output projection's input is zero", entries, mask,
            ops, columns, part="attention")
