"""Multi-head self-attention with a fused path and an explicit path that exposes the attention map."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import needs_plain_ops, use_explicit_bf16_attn, use_fused_attn
from .helpers import to_2tuple
from .linear import Linear
from .rel_pos import RelPosBias, resize_rel_pos_table


def softmax_key_mask(key_mask: torch.Tensor) -> torch.Tensor:
    """``key_mask`` (B, Nk) with rows that mask every key (a window wholly on an image's
    padding) opened up: their softmax would be 0/0 = NaN, and a NaN stays NaN through a zero
    weight. Only padding queries read such rows, and nothing real reads those queries."""
    return key_mask | ~key_mask.any(-1, keepdim=True)


def mask_keys(logits: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """logits (B, h, Nq, Nk) with -inf at the keys ``key_mask`` (B, Nk) marks False."""
    if key_mask is None:
        return logits
    return logits.masked_fill(~softmax_key_mask(key_mask)[:, None, None, :], float('-inf'))


def zero_masked_keys(attn: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """A map (B, h, Nq, Nk) changed after its softmax (head mixing, norms) with zero weight at
    the keys ``key_mask`` (B, Nk) marks False: the change's biases would otherwise give them some."""
    return attn if key_mask is None else attn * key_mask[:, None, None, :]


# Largest map (B * heads * Nq * Nk elements) the CPU bfloat16 inference path materialises: 128 MiB
# in bfloat16. Global attention over a detection-size grid (4,200 tokens) stays on the fused kernel.
_EXPLICIT_MAP_LIMIT = 1 << 26


def explicit_is_faster(q: torch.Tensor, k: torch.Tensor, explicit_bf16: bool = True) -> bool:
    """Whether q k^T, softmax, @ v beats ``F.scaled_dot_product_attention`` for this call.

    On a CPU without AMX in bfloat16 without autograd, yes: the CPU flash kernel runs bfloat16 at
    about float32's speed, while the explicit products run on oneDNN's bfloat16 kernels. With AMX
    the flash kernel is the faster one (docs/benchmarks.md, "bfloat16 on a CPU"): ``explicit_bf16``
    is the layer's ``explicit_bf16_attn`` setting (:mod:`zoo.layers.config`, decided from the CPU).
    In training the map would be kept for backward, so the fused kernel stays there; very large
    maps stay fused too. q: (B, h, Nq, d), k: (B, h, Nk, d)."""
    return (explicit_bf16 and q.device.type == 'cpu' and q.dtype == torch.bfloat16 and not torch.is_grad_enabled()
            and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= _EXPLICIT_MAP_LIMIT)


def scaled_product(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * (a @ b) in one product: a (..., n, k), b (..., k, m) -> (..., n, m)."""
    lead = a.shape[:-2]
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    # beta=0: the (broadcast, uninitialised) input is ignored, not read.
    out = torch.baddbmm(a3.new_empty(()).expand(a3.shape[0], a3.shape[1], b3.shape[2]), a3, b3,
                        beta=0, alpha=scale)
    return out.view(*lead, *out.shape[-2:])


def mix_heads(attn: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A learned heads-to-heads transform of an attention map (talking heads, re-attention).

    attn: (B, h, Nq, Nk), weight: (g, h), bias: (g,) -> (B, g, Nq, Nk): at each (query, key),
    out[g] = sum_h weight[g, h] * attn[h] + bias[g]. One batched product weight @ map (h, Nq*Nk)
    per image, in the map's own layout: a Linear on the last axis would first copy the map to
    heads-last and back (copies of the whole map, twice per block in CaiT; docs/benchmarks.md,
    "Where the CPU speed comes from"), and a 1x1 convolution reorders it into the convolution
    library's blocked layout."""
    b, h = attn.shape[:2]
    flat = rearrange(attn, 'b h i j -> b h (i j)')
    weight = weight.expand(b, *weight.shape)
    mixed = torch.bmm(weight, flat) if bias is None else torch.baddbmm(bias[None, :, None], weight, flat)
    return mixed.view(b, -1, *attn.shape[2:])


class Attention(nn.Module):
    """Multi-head self-attention.

    x: (B, N, D) -> (B, N, D). With ``return_attention=True`` the explicit path runs and the
    softmax-normalised map (B, heads, N, N) is returned as well; otherwise
    ``F.scaled_dot_product_attention`` runs when ``fused`` is set. ``fused=None`` takes the
    ``fused_attn`` switch as it is when the layer is built (:mod:`zoo.layers.config`), and
    ``explicit_bf16`` the ``explicit_bf16_attn`` switch.

    Subclasses that change the map (talking heads, re-attention) override :meth:`attention_map`
    and set ``fused = False``: the map cannot be changed inside a fused kernel.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 head_dim: int | None = None, fused: bool | None = None):
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f'dim {dim} is not divisible by num_heads {num_heads}')
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = qk_scale if qk_scale is not None else head_dim ** -0.5
        self.fused = use_fused_attn() if fused is None else fused
        self.explicit_bf16 = use_explicit_bf16_attn()
        inner_dim = num_heads * head_dim
        self.qkv = Linear(dim, 3 * inner_dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(inner_dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.rel_pos_h = self.rel_pos_w = None

    def set_rel_pos(self, size) -> None:
        """Add ViTDet's decomposed relative position bias (:mod:`zoo.layers.rel_pos`): zero
        tables ``rel_pos_h`` / ``rel_pos_w`` (2S - 1, head_dim) for offsets up to S - 1 along
        each axis (``size`` S, or (S_h, S_w)); a falsy ``size`` removes them. The attention then
        needs the token grid, with no prefix tokens (detection mode)."""
        if not size:
            self.rel_pos_h = self.rel_pos_w = None
            return
        weight = self.qkv.weight
        self.rel_pos_h, self.rel_pos_w = (
            nn.Parameter(torch.zeros(2 * s - 1, self.head_dim, device=weight.device, dtype=weight.dtype))
            for s in to_2tuple(size))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint without the tables (a classifier, a detector saved before they existed)
        # loads with them at their zero init; one trained at another size is resampled.
        for name in ('rel_pos_h', 'rel_pos_w'):
            table = getattr(self, name)
            if table is not None:
                key = prefix + name
                state_dict[key] = (torch.zeros_like(table) if key not in state_dict
                                   else resize_rel_pos_table(state_dict[key], table.shape[0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def rel_pos_bias(self, q: torch.Tensor, grid: tuple[int, int] | None) -> RelPosBias | None:
        """The relative position bias of queries q (B, h, N, d) on ``grid``, or None when off."""
        if self.rel_pos_h is None:
            return None
        if grid is None or q.shape[2] != grid[0] * grid[1]:
            raise ValueError(f'relative position bias needs the patch grid and the patch tokens alone '
                             f'(got {q.shape[2]} tokens for grid {grid}): it is for detection mode '
                             '(forward_feature_maps), where the class tokens are dropped')
        return RelPosBias(q, self.rel_pos_h, self.rel_pos_w, grid)

    def attention_map(self, q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
        """q: (B, h, Nq, d), k: (B, h, Nk, d) -> softmax(q k^T * scale + bias): (B, h, Nq, Nk).
        ``key_mask`` (B, Nk), False at keys no query may attend to (window or image padding);
        ``bias`` (B, h, Nq, Nk) or None (the relative position bias)."""
        if torch.is_grad_enabled() or needs_plain_ops():
            logits = (q * self.scale) @ k.transpose(-2, -1)
            return mask_keys(logits if bias is None else logits + bias, key_mask).softmax(dim=-1)
        # Without autograd: the scale inside the product and the softmax in place, two passes
        # over the map fewer.
        logits = scaled_product(q, k.transpose(-2, -1), self.scale)
        if bias is not None:
            logits += bias
        logits = mask_keys(logits, key_mask)
        return torch.softmax(logits, dim=-1, out=logits)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               return_attention: bool = False, key_mask: torch.Tensor | None = None,
               bias: RelPosBias | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q, k, v: (B, h, N, d) -> (B, h, Nq, d) and the map (B, h, Nq, Nk) or None."""
        if self.fused and not return_attention and not explicit_is_faster(q, k, self.explicit_bf16):  # fused kernel
            if bias is not None:  # an additive float mask: the bias, -inf at masked keys
                mask = mask_keys(bias.rows(), key_mask)
            else:
                mask = None if key_mask is None else softmax_key_mask(key_mask)[:, None, None, :]
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                scale=self.scale)
            return out, None
        attn = self.attention_map(q, k, key_mask, None if bias is None else bias.rows())
        return self.attn_drop(attn) @ v, attn

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                grid: tuple[int, int] | None = None, key_mask: torch.Tensor | None = None):
        """``grid`` is accepted and ignored so Block can hand the patch grid to a grid-aware
        feed-forward (LeFF) next to a plain attention. ``key_mask`` (B, N): False at tokens
        that are no key (window or image padding)."""
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d',
                            three=3, h=self.num_heads).unbind(0)
        out, attn = self.attend(q, k, v, return_attention, key_mask, self.rel_pos_bias(q, grid))
        out = self.proj_drop(self.proj(rearrange(out, 'b h n d -> b n (h d)')))
        return (out, attn) if return_attention else out
