"""Pre-norm transformer encoder block shared by every family."""
from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import Attention
from .drop import DropPath
from .layer_scale import LayerScale
from .mlp import Mlp
from .window import window_merge, window_partition, window_shape

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


class Block(nn.Module):
    """x: (B, N, D) -> (B, N, D).

    x = x + drop_path(ls1(attn(norm1(x)))); x = x + drop_path(ls2(mlp(norm2(x)))).
    ``attn_layer`` and ``mlp_layer`` let a family swap in its own attention or feed-forward
    (talking heads, re-attention, LeFF, ...) while the residual structure stays here.
    ``grid`` (h, w) of the patch tokens is handed to both only when given: layers that work on
    the 2-D map (convolutional projections, LeFF) take it, the plain ones never see it.

    Two switches, off by default, set by the model (``set_window_attention``,
    ``set_grad_checkpointing``):

    * ``window_size`` w > 0: the attention runs within non-overlapping w x w windows of the
      grid (ViTDet; :mod:`zoo.layers.window`); x must then be the h*w patch tokens alone and
      ``grid`` given. The feed-forward still sees the whole grid.
    * ``grad_checkpointing``: in training, the block's activations are recomputed in backward
      instead of being kept (the gradients are the same).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, init_values: float | None = None,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=LayerNorm6,
                 attn_layer=Attention, mlp_layer=Mlp, fused_attn: bool | None = None):
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
        self.window_size = 0
        self.grad_checkpointing = False

    def mix_tokens(self, x: torch.Tensor, grid: tuple[int, int] | None,
                   return_attention: bool = False, valid: torch.Tensor | None = None):
        """The attention branch on normalised tokens x (B, N, D): global, or within windows
        when ``window_size`` is set; ``valid`` (B, N), False at padded tokens, masks them as
        keys. Returns (B, N, D) and the map (B [* windows], heads, n, n) or None."""
        kw = {} if grid is None else {'grid': grid}
        if self.window_size:
            if grid is None or x.shape[1] != grid[0] * grid[1]:
                raise ValueError('window attention needs the patch grid and the patch tokens alone '
                                 f'(got {x.shape[1]} tokens for grid {grid}): drop the class tokens '
                                 'first, as forward_feature_maps does')
            windows, key_mask = window_partition(x, grid, self.window_size, valid)
            kw['grid'] = window_shape(grid, self.window_size)  # the attention's grid is the window
            if key_mask is not None:
                kw['key_mask'] = key_mask
            y = self.attn(windows, return_attention=return_attention, **kw)
            y, attn = y if return_attention else (y, None)
            return window_merge(y, grid, self.window_size), attn
        if valid is not None:
            kw['key_mask'] = valid
        if return_attention:
            return self.attn(x, return_attention=True, **kw)
        return self.attn(x, **kw), None

    @staticmethod
    def mlp_kwargs(grid: tuple[int, int] | None, valid: torch.Tensor | None) -> dict:
        """What the feed-forward is handed: the grid and the padding mask, when known (a
        grid-aware feed-forward, LeFF, convolves the token map)."""
        if grid is None:
            return {}
        return {'grid': grid} if valid is None else {'grid': grid, 'valid': valid}

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                return_attention: bool = False, valid: torch.Tensor | None = None):
        """``valid`` (B, N): False at the padded tokens of a padded batch (None: none)."""
        if self.grad_checkpointing and not return_attention and torch.is_grad_enabled():
            return checkpoint(self.residual_forward, x, grid, False, valid, use_reentrant=False)
        return self.residual_forward(x, grid, return_attention, valid)

    def residual_forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                         return_attention: bool = False, valid: torch.Tensor | None = None):
        y, attn = self.mix_tokens(self.norm1(x), grid, return_attention, valid)
        x = x + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x), **self.mlp_kwargs(grid, valid))))
        return (x, attn) if return_attention else x
