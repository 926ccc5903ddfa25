"""Hand computations of Mamba-Shedder's SSM removal, written from the definitions, for the tests."""
import torch
import torch.nn.functional as F


def conv_silu(mixer, xbc: torch.Tensor) -> torch.Tensor:
    """The depthwise causal conv1d plus SiLU: (batch, len, channels) -> same."""
    length = xbc.shape[1]
    weight, bias = mixer.conv1d.weight, mixer.conv1d.bias
    out = F.conv1d(xbc.transpose(1, 2), weight, bias, padding=weight.shape[-1] - 1, groups=xbc.shape[-1])
    return F.silu(out[..., :length]).transpose(1, 2)


def mamba2_without_scan(mixer, hidden: torch.Tensor) -> torch.Tensor:
    """Mamba-2 mixer with y = x: in_proj, conv + SiLU, then gated norm with z and out_proj; no D term."""
    d_inner, heads = mixer.out_proj.in_features, mixer.A_log.shape[0]
    conv_dim = mixer.conv1d.weight.shape[0]
    z, xbc, _dt = mixer.in_proj(hidden).split([d_inner, conv_dim, heads], dim=-1)
    x = conv_silu(mixer, xbc)[..., :d_inner]
    return mixer.out_proj(mixer.norm(x, z))


def mamba1_without_scan(mixer, hidden: torch.Tensor) -> torch.Tensor:
    """Mamba-1 mixer with the scan removed: y = x * silu(z), then out_proj."""
    x, z = mixer.in_proj(hidden).chunk(2, dim=-1)
    return mixer.out_proj(conv_silu(mixer, x) * F.silu(z))
