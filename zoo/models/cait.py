"""CaiT (Touvron et al., 2021, "Going deeper with image transformers").

A stack of self-attention blocks with talking heads and LayerScale runs over the patch tokens
alone; the class token joins only afterwards, in two class-attention blocks that update it and
leave the patches as they are. The official checkpoints (``model`` entry, ``module.`` prefix) are
converted by :func:`checkpoint_filter_fn`; timm's CaiT uses the official layout.
"""
import re
from functools import partial

import torch
from einops import repeat
from torch import nn

from ..layers import Block, LayerNorm6, PatchEmbed
from ..layers.class_attention import ClassAttentionBlock
from ..layers.talking_heads import TalkingHeadsAttention
from ..registry import register_model
from ..layers.padding import Padding
from ._base import (TokenBackbone, build, classifier_head, position_table, rename_keys,
                    resample_pos_embed_in, tokens_to_map)


class Cait(TokenBackbone):
    """CaiT over p x p patches.

    Self-attention stage: patch tokens (B, N, D) with a position table over the patches only.
    forward_feature_maps is :class:`TokenBackbone`'s: class attention never changes the patches,
    so the feature map is the patch rows of forward_features and the class-attention stage is
    skipped.
    Class-attention stage: the class token (B, 1, D) reads the patches; forward_features returns
    the normalised [cls, patches] (B, 1 + N, D). Inputs of any size whose sides are multiples of
    the patch size are accepted: the position table is resampled bicubically to the input's grid.
    ``fused_attn`` (None: the switch in :mod:`zoo.layers.config`) concerns the class-attention
    blocks: talking heads has no fused path.
    """
    classifier_keys = ('head',)
    num_prefix_tokens = 1

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 24,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, init_values: float = 1e-5,
                 depth_token_only: int = 2, mlp_ratio_token_only: float = 4.0,
                 fused_attn: bool | None = None, norm_layer=LayerNorm6):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        # Drop-path rate constant over depth (official cait_models.py), not DeiT's linear ramp.
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=drop_path_rate, init_values=init_values,
                  norm_layer=norm_layer, attn_layer=TalkingHeadsAttention)
            for _ in range(depth)])
        # The official model trains the class-attention blocks without any dropout or drop-path.
        self.blocks_token_only = nn.ModuleList([
            ClassAttentionBlock(embed_dim, num_heads, mlp_ratio_token_only, qkv_bias=qkv_bias,
                                init_values=init_values, norm_layer=norm_layer,
                                fused_attn=fused_attn)
            for _ in range(depth_token_only)])
        self.norm = norm_layer(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.feature_info = [dict(channels=embed_dim, stride=self.patch_embed.patch_size[0],
                                  module='norm')]
        self.init_weights()

    def embed(self, x: torch.Tensor, padding: Padding | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> patch tokens with position added (B, h*w, D), and the grid (h, w);
        in a padded batch each image's table follows its own grid (:func:`position_table`)."""
        x, grid = self.patch_embed(x)
        pos = position_table(self.pos_embed, grid, self.patch_embed.grid_size, 0, padding,
                             self.patch_stride)
        return self.pos_drop(x + pos), grid

    def run_class_blocks(self, x: torch.Tensor, return_attention: bool = False):
        """Patch tokens (B, N, D) -> the class token (B, 1, D) after the class-attention blocks,
        and their (B, heads, 1, 1 + N) maps (empty unless asked for)."""
        cls = repeat(self.cls_token, '1 n d -> b n d', b=x.shape[0])
        maps = []
        for block in self.blocks_token_only:
            if return_attention:
                cls, attn = block(x, cls, return_attention=True)
                maps.append(attn)
            else:
                cls = block(x, cls)
        return cls, maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised [cls, patches] (B, 1 + h*w, D)."""
        x, grid = self.embed(x)
        x = self.run_blocks(x, grid)[0]
        cls, _ = self.run_class_blocks(x)
        return self.norm(torch.cat([cls, x], dim=1))

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one map per block, explicit path: (B, heads, N, N) for each
        self-attention block (talking heads: the head-mixed map that multiplies v), then
        (B, heads, 1, 1 + N) for each class-attention block (the class token's softmax over
        [cls, patches])."""
        x, grid = self.embed(x)
        x, maps = self.run_blocks(x, grid, return_attention=True)
        return maps + self.run_class_blocks(x, return_attention=True)[1]


_LAYER_SCALE = re.compile(r'^(blocks(?:_token_only)?\.\d+)\.gamma_([12])$')


def checkpoint_filter_fn(state_dict: dict, model: Cait) -> dict:
    """Official CaiT / timm checkpoint -> this model's keys.

    ``blocks.{i}.gamma_{1,2}`` and ``blocks_token_only.{j}.gamma_{1,2}`` become the shared
    LayerScale's ``ls{1,2}.gamma``; every other key (talking heads ``attn.proj_l`` / ``proj_w``,
    class attention ``attn.q`` / ``k`` / ``v``) already has our name. The patch position table
    is resampled to the model's grid (fine-tuning at another resolution).
    """
    sd = rename_keys(state_dict, [(_LAYER_SCALE, r'\1.ls\2.gamma')])
    return resample_pos_embed_in(sd, model, model.patch_embed.grid_size, num_prefix_tokens=0)


# ---------------------------------------------------------------------------------------------
# Registered variants. Widths / depths / LayerScale init: official cait_models.py
# (facebookresearch/deit). LayerScale init 1e-5 for depth 24 and for XXS36, 1e-6 for S36 / M36.
# URLs: official cait_models.py / README_cait.md (XXS ones: cait_models.py, also timm's cfgs).
# Figures (params M, GMACs, top-1 of the distilled release): README_cait.md for S24, XS24, S36,
# M36 (params rounded to 1M there); the paper's table for the params / GMACs of the 224 models
# (rounded to 0.1M); timm's ImageNet results for the XXS top-1 (the README does not list them).

_CAIT = 'https://dl.fbaipublicfiles.com/deit/'
_SRC = 'CaiT README_cait.md / paper'
_SRC_XXS = 'CaiT paper (params, GMACs) / timm results (top-1)'


_cait = partial(build, Cait)
_xxs = partial(dict, patch_size=16, embed_dim=192, num_heads=4)
_xs = partial(dict, patch_size=16, embed_dim=288, num_heads=6)
_s = partial(dict, patch_size=16, embed_dim=384, num_heads=8)
_m = partial(dict, patch_size=16, embed_dim=768, num_heads=16)


@register_model(url=_CAIT + 'XXS24_224.pth', params=12.0, gmacs=2.5, top1=78.4,
                source=_SRC_XXS)
def cait_xxs24_224(**kwargs):
    return _cait(kwargs, **_xxs(img_size=224, depth=24, init_values=1e-5))


@register_model(url=_CAIT + 'XXS36_224.pth', params=17.3, gmacs=3.8, top1=79.7,
                source=_SRC_XXS)
def cait_xxs36_224(**kwargs):
    # 1e-5 although 36 deep: the official cait_XXS36_224 (and timm) use init_scale=1e-5 here.
    return _cait(kwargs, **_xxs(img_size=224, depth=36, init_values=1e-5))


@register_model(url=_CAIT + 'XS24_384.pth', input_size=(3, 384, 384), params=27, gmacs=19.3,
                top1=84.1, source=_SRC)
def cait_xs24_384(**kwargs):
    return _cait(kwargs, **_xs(img_size=384, depth=24, init_values=1e-5))


@register_model(url=_CAIT + 'S24_224.pth', params=46.9, gmacs=9.4, top1=83.5, source=_SRC)
def cait_s24_224(**kwargs):
    return _cait(kwargs, **_s(img_size=224, depth=24, init_values=1e-5))


@register_model(url=_CAIT + 'S24_384.pth', input_size=(3, 384, 384), params=47, gmacs=32.2,
                top1=85.1, source=_SRC)
def cait_s24_384(**kwargs):
    return _cait(kwargs, **_s(img_size=384, depth=24, init_values=1e-5))


@register_model(url=_CAIT + 'S36_384.pth', input_size=(3, 384, 384), params=68, gmacs=48.0,
                top1=85.4, source=_SRC)
def cait_s36_384(**kwargs):
    return _cait(kwargs, **_s(img_size=384, depth=36, init_values=1e-6))


@register_model(url=_CAIT + 'M36_384.pth', input_size=(3, 384, 384), params=271, gmacs=173.3,
                top1=86.1, source=_SRC)
def cait_m36_384(**kwargs):
    return _cait(kwargs, **_m(img_size=384, depth=36, init_values=1e-6))
