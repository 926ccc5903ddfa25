"""``ssm_heads``: one Mamba-2 head; its slice of ``out_proj``'s input is zero.

What removing heads frees depends on the mixer: behind a gated RMSNorm (most Mamba-2 mixers) only their
``out_proj`` columns, since the norm normalises over all heads of its group and the removed heads still run.
Without it (Falcon-H1's ``mamba_rms_norm=False``) whole heads go, as long as the kept heads still split evenly
over the B/C groups (else nothing is freed); with the layer's ``ssm`` also removed their dt row and
``A_log``/``D``/``dt_bias`` entries are counted with the ``ssm``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

# the template file keeps its private name: changing its text would make earlier extractions "not our own"
from ..extraction.pruned_modeling.pruned_layers import has_gated_norm
from ..model.ssm_layout import mamba2_layout
from .base import Kind, kept, path_in, rows_params


@dataclass(frozen=True)
class SsmHeadCounts:
    heads: int
    groups: int  # B/C groups
    gated_norm: bool
    out_columns: int  # one head's columns of out_proj
    whole_head: int  # one head whole: z/x/dt rows of in_proj, x channels of conv1d, A/D/dt_bias, out_proj columns
    with_scan: int  # the part of whole_head that the ssm frees too: the dt row and A/D/dt_bias

    def freed(self, removed: set[int], removed_here: frozenset[str] = frozenset()) -> int:
        """Parameters freed by removing heads ``removed`` when the kinds ``removed_here`` go in the same layer."""
        if self.gated_norm:
            return len(removed) * self.out_columns
        if "ssm" in removed_here:  # B/C are gone, so any heads go whole
            return len(removed) * (self.whole_head - self.with_scan)
        per_group = self.heads // self.groups
        left = Counter(h // per_group for h in range(self.heads) if h not in removed)
        if len({left[g] for g in range(self.groups)}) != 1:
            return 0  # uneven over the B/C groups: the heads are only silenced
        return len(removed) * self.whole_head


def head_counts(parts) -> SsmHeadCounts:
    mixer = parts.ssm
    lay = mamba2_layout(mixer)
    hd = lay.head_dim
    conv_channel = mixer.conv1d.weight.shape[-1] + (1 if mixer.conv1d.bias is not None else 0)
    out_columns = mixer.out_proj.out_features * hd
    with_scan = rows_params(mixer.in_proj, 1) + 3
    return SsmHeadCounts(heads=lay.heads, groups=int(getattr(mixer, "n_groups", 1)),
                         gated_norm=bool(has_gated_norm(mixer)), out_columns=out_columns,
                         whole_head=rows_params(mixer.in_proj, 2 * hd) + hd * conv_channel + out_columns + with_scan,
                         with_scan=with_scan)


def entries(parts, counting):
    if parts.ssm is None or parts.ssm_version != 2:
        return []
    counts = counting.heads[("ssm_heads", parts.index)] = head_counts(parts)
    return [(h, counts.freed({h})) for h in range(counts.heads) if h not in parts.silenced_ssm_heads]


def columns(parts, index, grouping):
    return parts.ssm.out_proj.weight[:, mamba2_layout(parts.ssm).head(index)]


def mask(edits, parts, index, setting) -> None:
    edits.zero_columns(parts.ssm.out_proj, mamba2_layout(parts.ssm).head(index))


def ops(parts, indices, grouping) -> list[dict]:
    left = kept(mamba2_layout(parts.ssm).heads, set(indices), "SSM head", parts.index, "block")
    return [{"op": "ssm_heads", "module": path_in(parts.layer, parts.ssm), "kept": left}]


KIND = Kind("ssm_heads", "one Mamba-2 head: its slice of out_proj's input is zero", entries, mask, ops, columns,
            part="SSM")
