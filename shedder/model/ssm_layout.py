"""Where the scan's own parameters sit inside a Mamba or Mamba-2 mixer, read off the weight shapes.

Mamba-1: ``x_proj`` rows are [dt (rank), B (N), C (N)]; ``A_log`` is (d_inner, N).
Mamba-2: ``in_proj`` rows are [z (d_inner), x (d_inner), B (G*N), C (G*N), dt (heads)] and
``conv1d`` channels are [x, B, C]; ``A_log``, ``D`` and ``dt_bias`` have one entry per head.
Reading shapes instead of attribute names makes one description serve every family's mixer copy.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ShedderError


@dataclass(frozen=True)
class Mamba1Layout:
    d_inner: int
    state: int
    dt_rank: int

    @property
    def c_rows(self) -> slice:
        """Rows of x_proj that produce C."""
        return slice(self.dt_rank + self.state, self.dt_rank + 2 * self.state)


@dataclass(frozen=True)
class Mamba2Layout:
    d_inner: int  # width of x, z and y
    heads: int
    group_state: int  # n_groups * d_state: width of B and of C

    @property
    def head_dim(self) -> int:
        return self.d_inner // self.heads

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.group_state

    @property
    def conv_b(self) -> slice:
        return slice(self.d_inner, self.d_inner + self.group_state)

    @property
    def conv_c(self) -> slice:
        """Channels of conv1d whose output is C."""
        return slice(self.d_inner + self.group_state, self.conv_dim)

    @property
    def in_proj_bc_dt(self) -> list[slice]:
        """Rows of in_proj that only the scan uses: B, C and dt."""
        start = 2 * self.d_inner
        return [slice(start, start + 2 * self.group_state + self.heads)]

    def head(self, h: int) -> slice:
        return slice(h * self.head_dim, (h + 1) * self.head_dim)


def mamba1_layout(mixer: nn.Module) -> Mamba1Layout:
    d_inner, state = mixer.A_log.shape
    dt_rank = mixer.x_proj.out_features - 2 * state
    return Mamba1Layout(d_inner=d_inner, state=state, dt_rank=dt_rank)


def mamba2_layout(mixer: nn.Module) -> Mamba2Layout:
    heads = mixer.A_log.shape[0]
    d_inner = mixer.out_proj.in_features
    conv_dim = mixer.conv1d.weight.shape[0]
    layout = Mamba2Layout(d_inner=d_inner, heads=heads, group_state=(conv_dim - d_inner) // 2)
    expected_rows = 2 * d_inner + 2 * layout.group_state + heads
    if mixer.in_proj.out_features != expected_rows or d_inner % heads:
        raise ShedderError(
            f"{type(mixer).__name__}: unexpected Mamba-2 layout (in_proj has {mixer.in_proj.out_features} rows, "
            f"expected {expected_rows})."
        )
    return layout
