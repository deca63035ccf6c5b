"""Tokens-to-Token module of T2T-ViT (Yuan et al., 2021): soft splits (overlapping unfolds)
alternating with a small transformer or performer layer that re-structures the tokens.

Both token layers map the unfolded width ``dim`` (C*k*k) to a narrow ``out_dim`` (64), so there is
no residual around the attention: its value projection v (B, N, out_dim) takes that place.
"""
import math

import torch
from einops import rearrange
from torch import nn

from .attention import Attention
from .drop import DropPath
from .linear import Linear
from .mlp import Mlp
from .padding import Padding, zero_padded_tokens


class TokenAttention(Attention):
    """Attention from ``dim`` to ``out_dim`` channels with v as the residual.

    x: (B, N, dim) -> v + proj(softmax(q k^T * scale) v): (B, N, out_dim).
    The scale defaults to ``dim ** -0.5`` (the input width, as the official code has it), not the
    head width; qkv has no bias and proj is out_dim -> out_dim.
    """

    def __init__(self, dim: int, out_dim: int = 64, num_heads: int = 1, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 fused: bool | None = None):
        if out_dim % num_heads:
            raise ValueError(f'out_dim {out_dim} is not divisible by num_heads {num_heads}')
        super().__init__(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                         qk_scale=qk_scale if qk_scale is not None else dim ** -0.5,
                         attn_drop=attn_drop, proj_drop=proj_drop,
                         head_dim=out_dim // num_heads, fused=fused)
        self.proj = Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                key_mask: torch.Tensor | None = None):
        """``key_mask`` (B, N): False at an image's padding, which no query attends to."""
        q, k, v = rearrange(self.qkv(x), 'b n (three h d) -> three b h n d',
                            three=3, h=self.num_heads)
        out, attn = self.attend(q, k, v, return_attention, key_mask)
        out = self.proj_drop(self.proj(rearrange(out, 'b h n d -> b n (h d)')))
        out = rearrange(v, 'b h n d -> b n (h d)') + out
        return (out, attn) if return_attention else out


class TokenTransformer(nn.Module):
    """x: (B, N, dim) -> (B, N, out_dim): x = attn(norm1(x)); x = x + drop_path(mlp(norm2(x)))."""

    def __init__(self, dim: int, out_dim: int = 64, num_heads: int = 1, mlp_ratio: float = 1.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=nn.LayerNorm,
                 fused_attn: bool | None = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = TokenAttention(dim, out_dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                   attn_drop=attn_drop, proj_drop=drop, fused=fused_attn)
        self.norm2 = norm_layer(out_dim)
        self.mlp = Mlp(out_dim, int(out_dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                valid: torch.Tensor | None = None):
        """``valid`` (B, N): False at an image's padding (masked as keys)."""
        if return_attention:
            x, attn = self.attn(self.norm1(x), return_attention=True, key_mask=valid)
        else:
            x, attn = self.attn(self.norm1(x), key_mask=valid), None
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, attn) if return_attention else x


class TokenPerformer(nn.Module):
    """Performer layer (linear attention through positive random features), one head.

    x: (B, N, dim) -> (B, N, out_dim). kqv is split in the order k, q, v. The random matrix ``w``
    (m, out_dim), m = out_dim * kernel_ratio, is drawn once (orthogonal rows of norm sqrt(m)) and
    kept as a frozen parameter, so it is saved in and restored from checkpoints.

    The kernel features exp(w x - |x|^2 / 2) and the normaliser (with epsilon 1e-8) run in
    float32 even under autocast: in float16 they underflow to 0 and 1e-8 itself is 0, giving 0/0.
    """

    def __init__(self, dim: int, out_dim: int = 64, kernel_ratio: float = 0.5,
                 proj_drop: float = 0.1, mlp_drop: float = 0.1, epsilon: float = 1e-8,
                 act_layer: type[nn.Module] = nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.out_dim = out_dim
        self.epsilon = epsilon
        self.num_features = int(out_dim * kernel_ratio)
        self.norm1 = norm_layer(dim)
        self.kqv = Linear(dim, 3 * out_dim)
        self.proj = Linear(out_dim, out_dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.norm2 = norm_layer(out_dim)
        # The official MLP drops out after its output only, hence no dropout inside Mlp.
        self.mlp = Mlp(out_dim, out_dim, act_layer=act_layer)
        self.mlp_drop = nn.Dropout(mlp_drop)
        self.w = nn.Parameter(self.draw_features(self.num_features, out_dim), requires_grad=False)

    @staticmethod
    def draw_features(num_features: int, dim: int) -> torch.Tensor:
        """(m, dim) random matrix with orthogonal rows scaled to norm sqrt(m)."""
        w = torch.empty(num_features, dim)
        if w.device.type == 'meta':  # shape only (parameter counting)
            return w
        return nn.init.orthogonal_(w).mul_(math.sqrt(num_features))

    def kernel_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, d) float32 -> exp(w x - |x|^2 / 2) / sqrt(m): (B, N, m)."""
        half_sq_norm = x.square().sum(dim=-1, keepdim=True) / 2
        return torch.exp(x @ self.w.float().t() - half_sq_norm) / math.sqrt(self.num_features)

    def attend(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, dim) normalised -> v + proj(linear attention): (B, N, out_dim). Padded
        tokens (``valid`` (B, N) False) are no keys: their kernel features are zeroed, so they
        add nothing to the context or the normaliser."""
        k, q, v = torch.split(self.kqv(x), self.out_dim, dim=-1)
        # Autocast knows real devices only; meta tensors (shape-only analysis) run without it.
        autocast_device = x.device.type if x.device.type != 'meta' else 'cpu'
        with torch.autocast(device_type=autocast_device, enabled=False):
            kp, qp = self.kernel_features(k.float()), self.kernel_features(q.float())
            if valid is not None:
                kp = kp * valid[..., None]
            normaliser = torch.einsum('bnm,bm->bn', qp, kp.sum(dim=1))
            context = torch.einsum('bnm,bnd->bmd', kp, v.float())
            y = torch.einsum('bnm,bmd->bnd', qp, context)
            y = y / (rearrange(normaliser, 'b n -> b n 1') + self.epsilon)
        return v + self.proj_drop(self.proj(y.to(v.dtype)))

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attend(self.norm1(x), valid)
        return x + self.mlp_drop(self.mlp(self.norm2(x)))


def _unfolded_size(size: int, unfold: nn.Unfold) -> int:
    return (size + 2 * unfold.padding - unfold.kernel_size) // unfold.stride + 1


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands a contiguous gradient on. The gradient reaching a token layer
    from the (B, C, H, W) re-layout is a transposed view; torch.compile's generated backward
    (torch 2.15) views it through the layer's dropout and Linear where eager reshapes, and fails
    ("view size is not compatible"). Eager results are unchanged."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class TokensToToken(nn.Module):
    """(B, C, H, W) -> tokens (B, H/16 * W/16, embed_dim) and their grid (H/16, W/16).

    soft split (7, stride 4, pad 2) -> token layer -> soft split (3, 2, 1) -> token layer ->
    soft split (3, 2, 1) -> Linear(token_dim * 9, embed_dim). Unfolded channels are ordered
    (c kh kw), as ``nn.Unfold`` lays them out. Any H, W that are multiples of 16 work.
    """
    stride = 16

    def __init__(self, tokens_type: str = 'performer', in_chans: int = 3, embed_dim: int = 768,
                 token_dim: int = 64, fused_attn: bool | None = None):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        dims = (in_chans * 7 * 7, token_dim * 3 * 3)
        if tokens_type == 'performer':
            self.attention1, self.attention2 = (
                TokenPerformer(d, token_dim, kernel_ratio=0.5) for d in dims)
        elif tokens_type == 'transformer':
            self.attention1, self.attention2 = (
                TokenTransformer(d, token_dim, num_heads=1, mlp_ratio=1.0, fused_attn=fused_attn)
                for d in dims)
        else:
            raise ValueError(f"tokens_type must be 'performer' or 'transformer', got {tokens_type!r}")
        self.project = Linear(token_dim * 3 * 3, embed_dim)

    @staticmethod
    def split(x: torch.Tensor, unfold: nn.Unfold) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> overlapping patches (B, h*w, C*k*k) and their grid (h, w)."""
        grid = (_unfolded_size(x.shape[-2], unfold), _unfolded_size(x.shape[-1], unfold))
        return rearrange(unfold(x), 'b ckk l -> b l ckk'), grid

    def forward(self, x: torch.Tensor, padding: Padding | None = None
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``padding``: the images' real extents in a padded batch. Each token layer then masks
        the padded tokens as keys, and they are zeroed before the next soft split reads them,
        so an image's real tokens are those it would get alone."""
        x, (h, w) = self.split(x, self.soft_split0)
        stride = self.soft_split0.stride
        for layer, unfold in ((self.attention1, self.soft_split1),
                              (self.attention2, self.soft_split2)):
            if padding is None:
                x = layer(x)
            else:
                valid = padding.token_mask(stride, (h, w))
                x = zero_padded_tokens(layer(x, valid=valid), valid)
            x = rearrange(_ContiguousGrad.apply(x), 'b (h w) c -> b c h w', h=h, w=w)
            x, (h, w) = self.split(x, unfold)
            stride *= unfold.stride
        return self.project(x), (h, w)
