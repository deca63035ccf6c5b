"""Pre-norm block whose branches see a down-scaled input and are scaled back up (DeepViT)."""
import torch

from .block import Block


class ScaledResidualBlock(Block):
    """x: (B, N, D) -> (B, N, D).

    x = x + drop_path(ls1(attn(norm1(s x)))) / s; x = x + drop_path(ls2(mlp(norm2(s x)))) / s,
    with s = ``branch_scale``. The official DeepViT code trains with s = 0.5; since LayerNorm is
    nearly scale-invariant this mostly doubles each branch, but the LayerNorm epsilon sees the
    scaled input, so the scaling is kept exactly to reproduce released weights.
    Everything else (attention / MLP choice, LayerScale, drop-path) is :class:`Block`'s.
    """

    def __init__(self, dim: int, num_heads: int, branch_scale: float = 0.5, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        self.branch_scale = branch_scale

    def residual_forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                         return_attention: bool = False, valid: torch.Tensor | None = None):
        s = self.branch_scale
        kw = self.mlp_kwargs(grid, valid)
        y, attn = self.mix_tokens(self.norm1(x * s), grid, return_attention, valid)
        x = x + self.drop_path1(self.ls1(y)) / s
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x * s), **kw))) / s
        return (x, attn) if return_attention else x
