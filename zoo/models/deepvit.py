"""DeepViT (Zhou et al., 2021): a deeper ViT whose last blocks use re-attention, with a small
CNN stem, as in the official code (github.com/zhoudaquan/dvit_repo).

Follows the official code rather than the paper where they differ: DeepViT-S has 16 blocks of
width 396 and DeepViT-L 32 blocks of width 420 (27.3 M and 58.9 M parameters; the paper reports
27 M and 55 M), and every block runs its branches on half-scaled input (``branch_scale`` 0.5).
"""
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..layers.attention import Attention
from ..layers.block import LayerNorm6
from ..layers.drop import drop_path_rates
from ..layers.helpers import check_image, to_2tuple
from ..layers.padding import Padding
from ..layers.re_attention import ReAttention
from ..layers.scaled_residual_block import ScaledResidualBlock
from ..registry import register_model
from ._base import TokenBackbone, build, classifier_head, rename_keys, resample_pos_embed_in


class ConvStemPatchEmbed(nn.Module):
    """DeepViT's stem: (B, C, H, W) -> tokens (B, H/p * W/p, D) and the grid (H/p, W/p).

    conv 7x7 stride 2 (64, no bias) -> BN -> ReLU -> conv 3x3 (64, no bias) -> BN -> ReLU ->
    (p/2) x (p/2) stride-(p/2) conv to D channels.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, stem_chans: int = 64):
        super().__init__()
        if patch_size % 2:
            raise ValueError(f'patch_size must be even (stride-2 stem), got {patch_size}')
        self.in_chans = in_chans
        self.patch_size = to_2tuple(patch_size)
        img_size = to_2tuple(img_size)
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv1 = nn.Conv2d(in_chans, stem_chans, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chans)
        self.conv2 = nn.Conv2d(stem_chans, stem_chans, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(stem_chans)
        self.relu = nn.ReLU()
        self.proj = nn.Conv2d(stem_chans, embed_dim, patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor, padding: Padding | None = None
                ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``padding``: a padded batch's real extents. The 3x3 conv then reads zeros on the
        stride-2 map's padding, as past the border of an image alone (batch norm and ReLU make
        padded cells nonzero)."""
        check_image(x, self.in_chans, self.patch_size)
        x = self.relu(self.bn1(self.conv1(x)))
        if padding is not None:
            x = padding.zero(x, self.conv1.stride[0])
        x = self.proj(self.relu(self.bn2(self.conv2(x))))
        grid = (x.shape[-2], x.shape[-1])
        return rearrange(x, 'b d h w -> b (h w) d'), grid


class DeepViT(TokenBackbone):
    """ViT with a CNN stem; the last ``num_reattention_blocks`` blocks use :class:`ReAttention`.

    Token sequence: [cls, patch_1 .. patch_N] (B, 1 + N, D). Inputs of any size whose sides are
    multiples of 16 are accepted; the position table is resampled to the input's grid.
    Embedding, forward passes, feature map and attention maps are :class:`TokenBackbone`'s; in
    re-attention blocks the attention map is the re-generated one (the map that multiplies v).
    """
    classifier_keys = ('head',)
    num_prefix_tokens = 1

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 396, depth: int = 16,
                 num_heads: int = 12, mlp_ratio: float = 3.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 num_reattention_blocks: int = 5, scale_reattention_map: bool = False,
                 branch_scale: float = 0.5, fused_attn: bool | None = None, norm_layer=LayerNorm6):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.patch_embed = ConvStemPatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        first_reattention = depth - min(num_reattention_blocks, depth)
        reattention = partial(ReAttention, scale_map=scale_reattention_map)
        self.blocks = nn.Sequential(*[
            ScaledResidualBlock(
                embed_dim, num_heads, branch_scale=branch_scale, mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate, attn_drop=attn_drop_rate,
                drop_path=dpr, norm_layer=norm_layer, fused_attn=fused_attn,
                attn_layer=reattention if i >= first_reattention else Attention)
            for i, dpr in enumerate(drop_path_rates(drop_path_rate, depth))])
        self.norm = norm_layer(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.feature_info = [dict(channels=embed_dim, stride=patch_size, module='norm')]
        self.init_weights()


# Official ReAttention names -> ours.
_RENAMES = (('.attn.reatten_matrix.', '.attn.head_mix.'), ('.attn.var_norm.', '.attn.head_norm.'))


def checkpoint_filter_fn(state_dict: dict, model: DeepViT) -> dict:
    """Official DeepViT checkpoint (timm training script: ``state_dict`` / ``state_dict_ema``,
    keys patch_embed.{conv1, bn1, conv2, bn2, proj}, blocks.{i}.{norm1, attn.qkv,
    attn.reatten_matrix, attn.var_norm, attn.proj, norm2, mlp.fc1, mlp.fc2}, cls_token,
    pos_embed, norm, head) -> this model's keys, the position table resampled to its grid."""
    sd = rename_keys(state_dict, _RENAMES)
    return resample_pos_embed_in(sd, model, model.patch_embed.grid_size, num_prefix_tokens=1)


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: DeepViT README / paper; params counted on the official code.
# The official weights are Google Drive links (no direct download): url=None.

_deepvit = partial(build, DeepViT)


@register_model(url=None, params=27.3, gmacs=6.2, top1=82.3,
                source='DeepViT README (DeepViT-16, CNN patch); params of the official code')
def deepvit_s(**kwargs):
    return _deepvit(kwargs, embed_dim=396, depth=16, num_heads=12, mlp_ratio=3.0,
                    num_reattention_blocks=5, scale_reattention_map=True)


@register_model(url=None, params=58.9, gmacs=12.5, top1=83.1,
                source='DeepViT README (DeepViT-32, CNN patch); params of the official code')
def deepvit_l(**kwargs):
    return _deepvit(kwargs, embed_dim=420, depth=32, num_heads=12, mlp_ratio=3.0,
                    num_reattention_blocks=12, scale_reattention_map=False)
