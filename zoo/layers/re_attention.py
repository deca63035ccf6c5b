"""Re-attention of DeepViT (Zhou et al., 2021): the heads' attention maps are mixed by a learned
heads-to-heads transform so deep layers stop producing the same map."""
import torch
from torch import nn

from .attention import Attention, mix_heads, zero_masked_keys


def masked_batch_norm(x: torch.Tensor, valid: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``bn`` on x (B, C, H, W) whose batch statistics count only the entries ``valid`` (bool,
    broadcastable to (B, 1, H, W), the same entries for every channel).

    Padding (masked keys, padded queries) is no data: counted, it would shift the batch mean and
    variance that normalise the real entries and, through them, the running statistics that eval
    uses. Per channel, the biased mean and variance over the valid entries normalise x, with
    gradients through both as in batch norm; in training the running statistics move towards
    them (the variance unbiased) exactly as ``bn`` itself would move them. Returns (B, C, H, W),
    zero at the entries that are not valid; nothing outside ``valid`` (not even a NaN) reaches
    the statistics, the output or the gradients. Where ``bn`` uses its running statistics (eval)
    no entry depends on another: the result is ``bn(x)``, invalid entries included."""
    if not bn.training and bn.running_mean is not None:
        return bn(x)
    dims = (0, 2, 3)
    # Statistics of a half-precision map in float32, as batch norm keeps them.
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    # Counted as an integer: a float32 count is inexact beyond 2^24 entries (one 4096-token map).
    count = valid.expand(x.shape[0], 1, *x.shape[2:]).sum().to(acc)
    n = count.clamp(min=1)  # a batch of padding only: no statistics, and no division by zero
    mean = x.where(valid, 0).sum(dims, keepdim=True, dtype=acc) / n
    centred = (x - mean).where(valid, 0)
    var = centred.square().sum(dims, keepdim=True) / n
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.view(1, -1, 1, 1)
    out = centred * scale
    if bn.bias is not None:
        out = out + bn.bias.view(1, -1, 1, 1)
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            # Fewer than two valid entries give no unbiased variance (batch norm refuses such a
            # batch): the running statistics then stay as they are.
            step = momentum * (count > 1).to(bn.running_mean.dtype)
            bn.running_mean.lerp_(mean.flatten().to(bn.running_mean.dtype), step)
            unbiased = var.flatten() * count / (count - 1).clamp(min=1)
            bn.running_var.lerp_(unbiased.to(bn.running_var.dtype), step)
    return out.where(valid, 0).to(x.dtype)


class ReAttention(Attention):
    """Multi-head self-attention whose map is re-generated across heads.

    x: (B, N, D) -> (B, N, D). Map: softmax(q k^T * scale) -> attention dropout -> 1x1 Conv2d over
    the heads (with bias) -> BatchNorm2d(heads) -> times ``map_scale``, then @ v. The returned
    map (B, heads, N, N) is the re-generated one, the map that multiplies v; its rows need not
    sum to one.

    With a ``key_mask`` in training, the batch norm's statistics count the real (query, key)
    pairs only (:func:`masked_batch_norm`): padding changes neither the real entries' map nor
    the running statistics.

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

    def attention_map(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, h, Nq, d), k: (B, h, Nk, d) -> re-generated map (B, h, Nq, Nk). Masked keys
        (``key_mask`` (B, Nk) False) get zero weight in the re-generated map as well: the head
        mixing's bias and the norm would otherwise give them some. In training, the norm's
        statistics count the pairs of a real query (when Nq == Nk the queries are the keys'
        tokens; otherwise every query row counts) and a real key."""
        attn = self.map_drop(super().attention_map(q, k, key_mask, bias))
        mixed = mix_heads(attn, self.head_mix.weight.flatten(1), self.head_mix.bias)
        if key_mask is None or not self.head_norm.training:
            return zero_masked_keys(self.head_norm(mixed) * self.map_scale, key_mask)
        valid = key_mask[:, None, None, :]
        if q.shape[2] == k.shape[2]:
            valid = valid & key_mask[:, None, :, None]
        # Zero at every invalid pair, masked keys included.
        return masked_batch_norm(mixed, valid, self.head_norm) * self.map_scale
