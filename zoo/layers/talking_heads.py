"""Talking-heads attention (Shazeer et al., 2020) as CaiT uses it in its self-attention blocks."""
import torch
from torch.utils.checkpoint import checkpoint

from .attention import Attention, mask_keys, mix_heads, zero_masked_keys
from .linear import Linear
from .rel_pos import RelPosBias


class TalkingHeadsAttention(Attention):
    """Multi-head self-attention whose heads exchange information around the softmax.

    x: (B, N, D) -> (B, N, D). The logits q k^T * scale (B, h, N, N) pass a heads-to-heads
    Linear ``proj_l`` (with bias) before the softmax and another, ``proj_w``, after it; the result
    is what multiplies v. ``return_attention=True`` returns that mixed map (B, h, N, N): after
    ``proj_w`` its rows no longer sum to one.

    The map is changed between the two matrix products, so there is no fused path: ``fused`` is
    accepted (``Block`` passes it) and ignored. Every step is local to a query row, though, so a
    large map (global blocks at detection resolution: 4,200 tokens make a 4200 x 4200 map per
    head) is computed ``max_map_elements`` at a time over the query rows, each chunk recomputed
    in backward instead of kept: the memory of one chunk instead of the whole map, for the price
    of a second forward of the attention. Results equal the one-piece computation.
    """
    max_map_elements = 2 ** 22  # 16 MiB of float32 per chunk: reused by the allocator, not mapped anew

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 head_dim: int | None = None, fused: bool = False):
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         attn_drop=attn_drop, proj_drop=proj_drop, head_dim=head_dim, fused=False)
        self.proj_l = Linear(num_heads, num_heads)
        self.proj_w = Linear(num_heads, num_heads)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               return_attention: bool = False, key_mask: torch.Tensor | None = None,
               bias: RelPosBias | None = None):
        b, h, nq, nk = *q.shape[:3], k.shape[-2]
        if return_attention or b * h * nq * nk <= self.max_map_elements:
            return super().attend(q, k, v, return_attention, key_mask, bias)
        rows = max(1, self.max_map_elements // (b * h * nk))
        recompute = torch.is_grad_enabled()

        def attend_rows(q_rows, start):
            rows_bias = None if bias is None else bias.rows(start, start + q_rows.shape[2])
            return self.attn_drop(self.attention_map(q_rows, k, key_mask, rows_bias)) @ v
        outs = [checkpoint(attend_rows, q_rows, i * rows, use_reentrant=False) if recompute
                else attend_rows(q_rows, i * rows)
                for i, q_rows in enumerate(q.split(rows, dim=2))]
        return torch.cat(outs, dim=2), None

    def attention_map(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, h, Nq, d), k: (B, h, Nk, d) -> proj_w(softmax(proj_l(q*scale @ k^T))),
        (B, h, Nq, Nk). Masked keys (``key_mask`` (B, Nk) False) are set to -inf after the
        first head mixing (before it, -inf would spread over every head) and to zero after the
        second, whose bias would otherwise give them weight."""
        # Scale q before the product, as the official code does, so fp32 results match it exactly.
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:  # position enters with the logits, before the heads talk
            logits = logits + bias
        logits = mix_heads(logits, self.proj_l.weight, self.proj_l.bias)
        attn = mask_keys(logits, key_mask).softmax(dim=-1)
        return zero_masked_keys(mix_heads(attn, self.proj_w.weight, self.proj_w.bias), key_mask)
