"""Re-attention of DeepViT (Zhou et al., 2021): the heads' attention maps are mixed by a learned
heads-to-heads transform so deep layers stop producing the same map."""
import torch
from torch import nn

from .attention import Attention, mix_heads, zero_masked_keys


class ReAttention(Attention):
    """Multi-head self-attention whose map is re-generated across heads.

    x: (B, N, D) -> (B, N, D). Map: softmax(q k^T * scale) -> attention dropout -> 1x1 Conv2d over
    the heads (with bias) -> BatchNorm2d(heads) -> times ``map_scale``, then @ v. The returned
    map (B, heads, N, N) is the re-generated one, the map that multiplies v; its rows need not
    sum to one.

    ``scale_map``: multiply by the q-k scale (head_dim^-0.5), as DeepViT-S does; otherwise by 1
    (DeepViT-L).
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 head_dim: int | None = None, fused: bool = False, scale_map: bool = False):
        # The map is changed after the softmax: no fused kernel can run it. Dropout acts before
        # the head mixing in the official code, so it is applied inside attention_map.
        super().__init__(dim, num_heads, qkv_bias, qk_scale, 0.0, proj_drop, head_dim, fused=False)
        self.map_drop = nn.Dropout(attn_drop)
        # A 1x1 convolution over the heads in the checkpoints; applied as mix_heads (same result,
        # no reorder into the convolution library's layout).
        self.head_mix = nn.Conv2d(num_heads, num_heads, kernel_size=1)
        self.head_norm = nn.BatchNorm2d(num_heads)
        self.map_scale = self.scale if scale_map else 1.0

    def attention_map(self, q: torch.Tensor, k: torch.Tensor,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, h, Nq, d), k: (B, h, Nk, d) -> re-generated map (B, h, Nq, Nk). Masked keys
        (``key_mask`` (B, Nk) False) get zero weight in the re-generated map as well: the head
        mixing's bias and the norm would otherwise give them some."""
        attn = self.map_drop(super().attention_map(q, k, key_mask))
        mixed = mix_heads(attn, self.head_mix.weight.flatten(1), self.head_mix.bias)
        return zero_masked_keys(self.head_norm(mixed) * self.map_scale, key_mask)
