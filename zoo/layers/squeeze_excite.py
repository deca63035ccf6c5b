"""Squeeze-and-excitation (Hu et al., 2018) over channels-last features, and an attention layer
that gates its output with it (T2T-ViT-SE)."""
import torch
from torch import nn

from .attention import Attention
from .mlp import Mlp


class SqueezeExcite(nn.Module):
    """Channel gating: x * sigmoid(excite(mean of x over every position)).

    x: (B, ..., C), channels last, e.g. tokens (B, N, C) or a map (B, H, W, C) -> same shape.
    The excitation is a bias-free bottleneck MLP C -> C / reduction -> C with ReLU.
    """

    def __init__(self, channels: int, reduction: int = 16, hidden_channels: int | None = None):
        super().__init__()
        hidden_channels = hidden_channels or channels // reduction
        self.excite = Mlp(channels, hidden_channels, act_layer=nn.ReLU, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (B, N) for tokens (B, N, C): the mean runs over the True positions only
        (window padding is no part of the image)."""
        if mask is None:
            squeezed = x.mean(dim=tuple(range(1, x.ndim - 1)), keepdim=True)  # (B, 1, ..., C)
        else:
            weights = mask[..., None].to(x.dtype)
            squeezed = (x * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True)
        return x * self.excite(squeezed).sigmoid()


class SEAttention(Attention):
    """Multi-head self-attention whose projected output is gated by :class:`SqueezeExcite`.

    x: (B, N, D) -> (B, N, D). Order as in the official T2T-ViT-SE: proj -> SE -> dropout, so the
    projection dropout moves behind the gate. The attention map itself is unchanged, so the fused
    path stays available.
    """

    def __init__(self, dim: int, num_heads: int = 8, proj_drop: float = 0.0,
                 se_reduction: int = 16, **kwargs):
        super().__init__(dim, num_heads=num_heads, proj_drop=0.0, **kwargs)
        self.se = SqueezeExcite(dim, se_reduction)
        self.se_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                grid: tuple[int, int] | None = None, key_mask: torch.Tensor | None = None):
        out = super().forward(x, return_attention, grid, key_mask)
        out, attn = out if return_attention else (out, None)
        out = self.se_drop(self.se(out, key_mask))
        return (out, attn) if return_attention else out
