"""DETR's multi-head attention: ``nn.MultiheadAttention`` (same parameters, same state dict, same
results) whose forward is faster on a CPU, for two reasons:

* Attention dropout. PyTorch's CPU attention kernel has no dropout, so with ``dropout > 0`` every
  encoder layer falls back to materialising the (B, 8, L, S) map and draws its dropout mask with
  ``bernoulli_``, one generator call per element. Here the mask is cut from 64-bit draws, four
  16-bit words each (:func:`dropout_keep_mask`), and applied with ``masked_fill``.
* The projections run on ``torch.mm`` (MKL's AVX2 path on AMD); here they are
  :func:`zoo.layers.linear.linear`, on oneDNN like every other Linear of the project (in float32
  where the ``onednn_float32`` switch is on: by default, not on Intel CPUs).

Measured costs and gains: docs/benchmarks.md, "Detectors at detection resolution (CPU)".

Everything else (CUDA, evaluation, ``dropout=0``) is ``F.scaled_dot_product_attention``. Maps
under a million elements (B x heads x L x S: the decoder's, and every map of the built-in demo's
96-pixel images) take ``nn.MultiheadAttention.forward`` itself: there the savings are
negligible, and small-input training keeps the exact random stream and sums of the stock module
(the demo's seed tables stay reproducible). So do calls that ask for the attention weights
(``need_weights=True``: ``detection.analysis`` does), float masks, and options DETR does not use.
The ``fast_mha`` switch (:mod:`zoo.layers.config`, read when a layer is built) sends every call
to the stock forward.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.layers.config import use_fast_mha, use_onednn, use_onednn_float32
from zoo.layers.linear import linear

_WORD = 1 << 16  # the mask's resolution: dropout probability in steps of 1/65536
FAST_PATH_MIN_MAP = 1 << 20  # smallest map (elements) that takes the faster forward


def dropout_keep_mask(shape: tuple[int, ...], p: float, device=None) -> tuple[torch.Tensor, float]:
    """A dropout keep mask (bool, ``shape``), True with probability 1 - p', and the factor
    1 / (1 - p') that keeps expectations; p' = round(p * 65536) / 65536, within 1/131072 of p
    (0.1 -> 0.1000061). Each 64-bit draw of torch's generator gives four independent uniform
    16-bit words: a quarter of ``bernoulli_``'s generator calls."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f'dropout probability must be in [0, 1), got {p}')
    n = math.prod(shape)
    draws = torch.empty(-(-n // 4), dtype=torch.int64, device=device).random_(-2 ** 63, None)
    dropped = round(p * _WORD)
    # int16 words are uniform over [-32768, 32767]: 65536 - dropped of them are >= the threshold
    keep = draws.view(torch.int16)[:n].view(shape) >= dropped - _WORD // 2
    return keep, _WORD / (_WORD - dropped)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None,
              dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) @ v with dropout on the map: q (B, h, L, d), k and v (B, h, S, d),
    ``allowed`` bool broadcastable to (B, h, L, S), False where a query may not attend
    -> (B, h, L, d). On a CPU with dropout the map is explicit (see the module docstring)."""
    if dropout_p == 0.0 or q.device.type != 'cpu':
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float('-inf'))
    keep, scale = dropout_keep_mask(logits.shape, dropout_p, logits.device)
    # The 1 / (1 - p) goes on the (B, h, L, d) output, not on the (B, h, L, S) map.
    return (logits.softmax(dim=-1).masked_fill(~keep, 0.0) @ v) * scale


class MultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` for DETR's layers (``batch_first=True``): query (B, L, D),
    key and value (B, S, D), ``key_padding_mask`` (B, S) True at padding, ``attn_mask`` (L, S)
    bool True where blocked -> ((B, L, D), None). Parameters and state dict are the stock
    module's; see the module docstring for what runs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Decided once: the faster forward serves DETR's layout only, with the switches as they are now.
        self.fast_forward = (use_fast_mha() and self.batch_first and self._qkv_same_embed_dim
                             and self.bias_k is None and not self.add_zero_attn)
        self.onednn, self.onednn_float32 = use_onednn(), use_onednn_float32()

    def takes_fast_forward(self, query, key, key_padding_mask, need_weights, attn_mask, is_causal) -> bool:
        """Whether this call takes the faster forward: a large map (:data:`FAST_PATH_MIN_MAP`), no
        attention weights asked for, not causal, and bool masks (``attn_mask`` 2-D)."""
        return (self.fast_forward and not need_weights and not is_causal
                and query.shape[0] * self.num_heads * query.shape[1] * key.shape[1] >= FAST_PATH_MIN_MAP
                and (attn_mask is None or (attn_mask.dtype == torch.bool and attn_mask.dim() == 2))
                and (key_padding_mask is None or key_padding_mask.dtype == torch.bool))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if not self.takes_fast_forward(query, key, key_padding_mask, need_weights, attn_mask, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights, is_causal=is_causal)
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        q, k, v = (rearrange(linear(x, w, b, self.onednn, self.onednn_float32), 'b l (h d) -> b h l d',
                             h=self.num_heads)
                   for x, w, b in ((query, w_q, b_q), (key, w_k, b_k), (value, w_v, b_v)))
        allowed = None
        if key_padding_mask is not None:
            allowed = ~key_padding_mask[:, None, None, :]
        if attn_mask is not None:
            allowed = ~attn_mask if allowed is None else allowed & ~attn_mask
        out = attention(q, k, v, allowed, self.dropout if self.training else 0.0)
        out = linear(rearrange(out, 'b h l d -> b l (h d)'), self.out_proj.weight, self.out_proj.bias,
                     self.onednn, self.onednn_float32)
        return out, None
