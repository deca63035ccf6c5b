"""Layer-wise class-token attention (LCA) of CeiT (Yuan et al., 2021): the class token of the
last layer attends over the class tokens that every layer produced."""
import torch
from einops import rearrange

from .attention import Attention
from .block import Block


class LayerClassAttention(Attention):
    """x: (B, L, D) -> (B, 1, D). Keys and values from all L tokens; the query from the last
    token only. Same qkv / proj parameters as :class:`Attention`, so the fused and explicit
    paths and the returned map (B, heads, 1, L) work as there."""

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                grid: tuple[int, int] | None = None):
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d',
                            three=3, h=self.num_heads)
        out, attn = self.attend(q[:, :, -1:], k, v, return_attention)
        out = self.proj_drop(self.proj(rearrange(out, 'b h n d -> b n (h d)')))
        return (out, attn) if return_attention else out


class LayerClassAttentionBlock(Block):
    """Class tokens of L layers (B, L, D) -> the updated last one (B, 1, D).

    t = x_L + attn(norm1(x)); t = t + mlp(norm2(t)): the residual stream is the last layer's
    class token, and the MLP runs on it alone.
    """

    def __init__(self, dim: int, num_heads: int, **kwargs):
        super().__init__(dim, num_heads, attn_layer=LayerClassAttention, **kwargs)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                return_attention: bool = False):
        if return_attention:
            y, attn = self.attn(self.norm1(x), return_attention=True)
        else:
            y, attn = self.attn(self.norm1(x)), None
        x = x[:, -1:] + self.drop_path1(self.ls1(y))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return (x, attn) if return_attention else x
