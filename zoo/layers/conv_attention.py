"""Convolutional-projection attention (CvT): q, k and v are taken from the token map through a
depthwise convolution before their linear projections; k and v on a coarser grid."""
from collections import OrderedDict

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .linear import linear
from .padding import valid_map, zero_outside


class ConvProjection(nn.Sequential):
    """Depthwise k x k convolution (no bias) -> BatchNorm on a map: (B, D, h, w) -> (B, D, h', w'),
    h' = ceil(h / stride) for k = 3, padding 1. Children are named ``conv`` and ``bn`` as in the
    official CvT checkpoints."""

    def __init__(self, dim: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(OrderedDict([
            ('conv', nn.Conv2d(dim, dim, kernel_size, stride, kernel_size // 2, groups=dim,
                               bias=False)),
            ('bn', nn.BatchNorm2d(dim)),
        ]))


class ConvProjectionAttention(Attention):
    """Multi-head attention whose q / k / v inputs pass through a :class:`ConvProjection` each.

    x: (B, P + h*w, D) with P prefix (class) tokens first; ``grid=(h, w)`` is required.
    Returns (B, P + h*w, D) and, with ``return_attention``, the map (B, heads, P + h*w, P + h'*w')
    where (h', w') is the grid after the k / v stride. Prefix tokens skip the convolutions and
    join the projected tokens unchanged. The three linear projections are the rows of the
    inherited ``qkv`` Linear (q, k, v stacked), applied to their three different inputs.

    The scale defaults to ``dim ** -0.5`` over the full width, not the head width: the official
    code does so (``self.scale = dim_out ** -0.5``) and its weights were trained with it.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 fused: bool | None = None, kernel_size: int = 3, stride_q: int = 1, stride_kv: int = 2,
                 num_prefix_tokens: int = 0):
        super().__init__(dim, num_heads, qkv_bias=qkv_bias,
                         qk_scale=dim ** -0.5 if qk_scale is None else qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, fused=fused)
        self.num_prefix_tokens = num_prefix_tokens
        self.conv_proj_q = ConvProjection(dim, kernel_size, stride_q)
        self.conv_proj_k = ConvProjection(dim, kernel_size, stride_kv)
        self.conv_proj_v = ConvProjection(dim, kernel_size, stride_kv)

    def project_inputs(self, x: torch.Tensor, grid: tuple[int, int],
                       real: torch.Tensor | None = None) -> list[torch.Tensor]:
        """(B, P + h*w, D) -> the q, k and v inputs, each (B, P + n, D) with n the tokens of
        its strided grid. ``real`` (B, 1, h, w), False at an image's padding, zeroes it before
        the convolutions (the border the image alone would give them)."""
        h, w = grid
        prefix, tokens = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        fmap = rearrange(tokens, 'b (h w) d -> b d h w', h=h, w=w)
        fmap = zero_outside(fmap, real)
        return [torch.cat([prefix, rearrange(proj(fmap), 'b d h w -> b (h w) d')], dim=1)
                for proj in (self.conv_proj_q, self.conv_proj_k, self.conv_proj_v)]

    def forward(self, x: torch.Tensor, grid: tuple[int, int], return_attention: bool = False,
                key_mask: torch.Tensor | None = None):
        """``key_mask`` (B, P + h*w), False at an image's padding in a padded batch: zeroed
        before the projections and masked as keys on the strided key / value grid, where cell
        j is real when cell stride * j of the grid is (the cell its kernel is centred on)."""
        weight, bias = self.qkv.operands(x)
        weights = weight.chunk(3)
        biases = bias.chunk(3) if bias is not None else (None,) * 3
        real = kv_mask = None
        if key_mask is not None:
            p = self.num_prefix_tokens
            real = valid_map(key_mask, grid)
            s = self.conv_proj_k.conv.stride
            kv_mask = torch.cat([key_mask[:, :p], real[:, 0, ::s[0], ::s[1]].flatten(1)], 1)
        q, k, v = [rearrange(linear(t, wt, bs, self.qkv.onednn, self.qkv.onednn_float32), 'b n (h d) -> b h n d',
                             h=self.num_heads)
                   for t, wt, bs in zip(self.project_inputs(x, grid, real), weights, biases)]
        out, attn = self.attend(q, k, v, return_attention, kv_mask)
        out = self.proj_drop(self.proj(rearrange(out, 'b h n d -> b n (h d)')))
        return (out, attn) if return_attention else out
