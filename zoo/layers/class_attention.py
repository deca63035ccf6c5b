"""Class attention (CaiT): the class token alone attends to the frozen patch tokens."""
import torch
from einops import rearrange

from .attention import Attention
from .block import Block
from .linear import Linear


class ClassAttention(Attention):
    """Attention whose only query is the class token.

    x: (B, 1 + N, D), [cls, patches] -> the class token's update (B, 1, D); with
    ``return_attention=True`` also the map (B, heads, 1, 1 + N).
    The released checkpoints keep separate q, k and v projections, so the fused ``qkv`` Linear
    of :class:`Attention` is replaced; the fused / explicit attention core is inherited.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 head_dim: int | None = None, fused: bool | None = None):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, head_dim=head_dim, fused=fused)
        del self.qkv
        inner_dim = self.num_heads * self.head_dim
        self.q = Linear(dim, inner_dim, bias=qkv_bias)
        self.k = Linear(dim, inner_dim, bias=qkv_bias)
        self.v = Linear(dim, inner_dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, return_attention: bool = False):
        split = 'b n (h d) -> b h n d'
        q = rearrange(self.q(x[:, :1]), split, h=self.num_heads)
        k = rearrange(self.k(x), split, h=self.num_heads)
        v = rearrange(self.v(x), split, h=self.num_heads)
        out, attn = self.attend(q, k, v, return_attention)
        out = self.proj_drop(self.proj(rearrange(out, 'b h n d -> b n (h d)')))
        return (out, attn) if return_attention else out


class ClassAttentionBlock(Block):
    """CaiT's class-attention block: updates the class token only.

    x: patch tokens (B, N, D), left unchanged; cls: (B, 1, D) -> new cls (B, 1, D).
    cls = cls + drop_path(ls1(attn(norm1([cls, x])))); cls = cls + drop_path(ls2(mlp(norm2(cls)))).
    The MLP runs on the class token alone, which keeps the block cheap at any sequence length.
    Layers as :class:`Block`'s (every other argument is Block's), with class attention and
    LayerScale (init 1e-5) by default.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *,
                 init_values: float | None = 1e-5, attn_layer=ClassAttention, **kwargs):
        super().__init__(dim, num_heads, mlp_ratio, init_values=init_values,
                         attn_layer=attn_layer, **kwargs)

    def forward(self, x: torch.Tensor, cls: torch.Tensor, return_attention: bool = False):
        tokens = self.norm1(torch.cat([cls, x], dim=1))
        if return_attention:
            y, attn = self.attn(tokens, return_attention=True)
        else:
            y, attn = self.attn(tokens), None
        cls = cls + self.drop_path1(self.ls1(y))
        cls = cls + self.drop_path2(self.ls2(self.mlp(self.norm2(cls))))
        return (cls, attn) if return_attention else cls
