"""Pre-norm transformer encoder block shared by every family."""
from functools import partial

import torch
from torch import nn

from .attention import Attention
from .drop import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


class Block(nn.Module):
    """x: (B, N, D) -> (B, N, D).

    x = x + drop_path(ls1(attn(norm1(x)))); x = x + drop_path(ls2(mlp(norm2(x)))).
    ``attn_layer`` and ``mlp_layer`` let a family swap in its own attention or feed-forward
    (talking heads, re-attention, LeFF, ...) while the residual structure stays here.
    ``grid`` (h, w) of the patch tokens is handed to both only when given: layers that work on
    the 2-D map (convolutional projections, LeFF) take it, the plain ones never see it.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, init_values: float | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=LayerNorm6,
                 attn_layer=Attention, mlp_layer=Mlp, fused_attn: bool = True):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn_layer(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                               attn_drop=attn_drop, proj_drop=drop, fused=fused_attn)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio),
                             act_layer=act_layer, drop=drop)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                return_attention: bool = False):
        kw = {} if grid is None else {'grid': grid}
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True, **kw)
        else:
            y, attn = self.attn(self.norm1(x), **kw), None
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x), **kw)))
        return (x, attn) if return_attention else x
