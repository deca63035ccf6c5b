"""Talking-heads attention (Shazeer et al., 2020) as CaiT uses it in its self-attention blocks."""
import torch
from einops import rearrange
from torch import nn

from .attention import Attention, mask_keys


class TalkingHeadsAttention(Attention):
    """Multi-head self-attention whose heads exchange information around the softmax.

    x: (B, N, D) -> (B, N, D). The logits q k^T * scale (B, h, N, N) pass a heads-to-heads
    Linear ``proj_l`` (with bias) before the softmax and another, ``proj_w``, after it; the result
    is what multiplies v. ``return_attention=True`` returns that mixed map (B, h, N, N): after
    ``proj_w`` its rows no longer sum to one.

    The map is changed between the two matrix products, so there is no fused path: ``fused`` is
    accepted (``Block`` passes it) and ignored.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 head_dim: int | None = None, fused: bool = False):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, head_dim=head_dim, fused=False)
        self.proj_l = nn.Linear(num_heads, num_heads)
        self.proj_w = nn.Linear(num_heads, num_heads)

    @staticmethod
    def _mix_heads(mix: nn.Linear, attn: torch.Tensor) -> torch.Tensor:
        """attn: (B, h, Nq, Nk) -> (B, h, Nq, Nk), each position a Linear over the h heads."""
        mixed = mix(rearrange(attn, 'b h i j -> b i j h'))
        return rearrange(mixed, 'b i j h -> b h i j')

    def attention_map(self, q: torch.Tensor, k: torch.Tensor,
                      key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, h, Nq, d), k: (B, h, Nk, d) -> proj_w(softmax(proj_l(q*scale @ k^T))),
        (B, h, Nq, Nk). Masked keys (``key_mask`` (B, Nk) False) are set to -inf after the
        first head mixing (before it, -inf would spread over every head) and to zero after the
        second, whose bias would otherwise give them weight."""
        # Scale q before the product, as the official code does, so fp32 results match it exactly.
        logits = self._mix_heads(self.proj_l, (q * self.scale) @ k.transpose(-2, -1))
        attn = self._mix_heads(self.proj_w, mask_keys(logits, key_mask).softmax(dim=-1))
        return attn if key_mask is None else attn * key_mask[:, None, None, :]
