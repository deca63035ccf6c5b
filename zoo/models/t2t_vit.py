"""T2T-ViT (Yuan et al., ICCV 2021): a Tokens-to-Token stem (soft splits + token transformer or
performer layers) in front of a deep-narrow ViT backbone with a frozen sinusoid position table.

Official code and weights: https://github.com/yitu-opensource/T2T-ViT. Its ``.pth.tar`` files
(``state_dict`` / ``state_dict_ema``, possibly ``module.``-prefixed) are converted by
:func:`checkpoint_filter_fn`.
"""
import re
from functools import partial

import torch
from torch import nn

from ..layers import (Attention, Block, check_image, drop_path_rates, prepend_tokens,
                      sinusoid_pos_embed, to_2tuple)
from ..layers.squeeze_excite import SEAttention
from ..layers.tokens_to_token import TokensToToken
from ..registry import register_model
from ..layers.padding import Padding
from ._base import (TokenBackbone, build, classifier_head, position_table, rename_keys,
                    resample_pos_embed_in)


class T2TViT(TokenBackbone):
    """Token sequence [cls, token_1 .. token_N] (B, 1 + N, D), N = H/16 * W/16.

    Inputs of any size whose sides are multiples of 16 are accepted; the sinusoid table built for
    ``img_size`` is resampled bicubically to other grids. LayerNorm eps is PyTorch's 1e-5, as in
    the official code. Blocks, feature map and attention maps are :class:`TokenBackbone`'s.
    """
    classifier_keys = ('head',)
    # The sinusoid pos_embed is frozen: exempt from weight decay, not re-initialised.
    token_params = ('cls_token', 'pos_embed')
    stem_modules = ('tokens_to_token',)

    def __init__(self, img_size=224, tokens_type: str = 'performer', in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, token_dim: int = 64,
                 attn_layer=Attention, fused_attn: bool | None = None, norm_layer=nn.LayerNorm):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.in_chans = in_chans
        self.num_prefix_tokens = 1
        self.img_size = to_2tuple(img_size)
        self.stride = TokensToToken.stride
        if self.img_size[0] % self.stride or self.img_size[1] % self.stride:
            raise ValueError(f'img_size {self.img_size} must have sides that are multiples of '
                             f'{self.stride}, the stride of the three soft splits (4 * 2 * 2)')
        self.grid_size = (self.img_size[0] // self.stride, self.img_size[1] // self.stride)

        self.tokens_to_token = TokensToToken(tokens_type, in_chans, embed_dim, token_dim,
                                             fused_attn=fused_attn)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Frozen, yet a parameter as in the official code, so checkpoints carry it.
        self.pos_embed = nn.Parameter(
            sinusoid_pos_embed(1 + self.grid_size[0] * self.grid_size[1], embed_dim),
            requires_grad=False)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr, norm_layer=norm_layer,
                  attn_layer=attn_layer, fused_attn=fused_attn)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.feature_info = [dict(channels=embed_dim, stride=self.stride, module='norm')]
        self.init_weights()

    def embed(self, x: torch.Tensor, padding: Padding | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens with position added (B, 1 + h*w, D), and the grid (h, w); in a
        padded batch (``padding``) the soft splits mask the padding and each image's table
        follows its own grid (:func:`position_table`)."""
        check_image(x, self.in_chans, self.stride)
        x, grid = self.tokens_to_token(x, padding)
        pos = position_table(self.pos_embed, grid, self.grid_size, self.num_prefix_tokens,
                             padding, self.stride)
        return self.pos_drop(prepend_tokens(x, self.cls_token) + pos), grid

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + N, D) -> logits (B, num_classes) from the class token (no dropout
        before the head, as in the official code)."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)


# Official key -> zoo key. The performer's MLP is an nn.Sequential there (mlp.0 / mlp.2), and the
# SE excitation of T2T-ViT-SE is se_layer.fc.{0,2}; both are zoo Mlp modules here.
_RENAMES = (
    (re.compile(r'^module\.'), ''),
    (re.compile(r'^(tokens_to_token\.attention\d)\.mlp\.0\.'), r'\1.mlp.fc1.'),
    (re.compile(r'^(tokens_to_token\.attention\d)\.mlp\.2\.'), r'\1.mlp.fc2.'),
    (re.compile(r'^(blocks\.\d+\.attn)\.se_layer\.fc\.0\.'), r'\1.se.excite.fc1.'),
    (re.compile(r'^(blocks\.\d+\.attn)\.se_layer\.fc\.2\.'), r'\1.se.excite.fc2.'),
)


def checkpoint_filter_fn(state_dict: dict, model: T2TViT) -> dict:
    """Official T2T-ViT state dict (unwrapped) -> this model's keys; the position table is
    resampled to the model's grid as the official ``load_for_transfer_learning`` does (bicubic,
    no antialiasing), e.g. for the 384 x 384 T2T-ViT-14 release loaded at 224."""
    sd = rename_keys(state_dict, _RENAMES)
    return resample_pos_embed_in(sd, model, model.grid_size, model.num_prefix_tokens,
                                 antialias=False)


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: the official T2T-ViT README; paper Tab. 6 for the ResNeXt-like,
# wide and SE variants, which have no released weights.

_RELEASE = 'https://github.com/yitu-opensource/T2T-ViT/releases/download/main/'
_SOURCE = 'T2T-ViT README'


# The attention scale follows the weights, as in the official builders: from scratch
# head_dim ** -0.5 (the official Attention's default); with weights (``pretrained=True`` or a
# checkpoint path) embed_dim ** -0.5, the scale the released weights were trained with, which the
# official builders set only when ``pretrained`` (``weights_arch``, applied by create_model). An
# explicit ``qk_scale`` wins either way: a checkpoint trained here from scratch loads with
# ``qk_scale=None``; one fine-tuned from the released weights and loaded into a model built
# without ``pretrained`` (e.g. a distillation teacher) needs the embed_dim scale passed.
_t2t = partial(build, T2TViT)


def _weights_scale(dim: int) -> dict:
    return dict(weights_arch=dict(qk_scale=dim ** -0.5))


@register_model(url=_RELEASE + '71.7_T2T_ViT_7.pth.tar', params=4.3, gmacs=1.1, top1=71.7,
                source=_SOURCE, **_weights_scale(256))
def t2t_vit_7(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=256, depth=7, num_heads=4,
                mlp_ratio=2.0)


@register_model(url=_RELEASE + '75.2_T2T_ViT_10.pth.tar', params=5.9, gmacs=1.5, top1=75.2,
                source=_SOURCE, **_weights_scale(256))
def t2t_vit_10(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=256, depth=10, num_heads=4,
                mlp_ratio=2.0)


@register_model(url=_RELEASE + '76.5_T2T_ViT_12.pth.tar', params=6.9, gmacs=1.8, top1=76.5,
                source=_SOURCE, **_weights_scale(256))
def t2t_vit_12(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=256, depth=12, num_heads=4,
                mlp_ratio=2.0)


@register_model(url=_RELEASE + '81.5_T2T_ViT_14.pth.tar', params=21.5, gmacs=4.8, top1=81.5,
                source=_SOURCE, **_weights_scale(384))
def t2t_vit_14(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=384, depth=14, num_heads=6,
                mlp_ratio=3.0)


@register_model(url=_RELEASE + '81.9_T2T_ViT_19.pth.tar', params=39.2, gmacs=8.5, top1=81.9,
                source=_SOURCE, **_weights_scale(448))
def t2t_vit_19(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=448, depth=19, num_heads=7,
                mlp_ratio=3.0)


@register_model(url=_RELEASE + '82.3_T2T_ViT_24.pth.tar', params=64.1, gmacs=13.8, top1=82.3,
                source=_SOURCE, **_weights_scale(512))
def t2t_vit_24(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=512, depth=24, num_heads=8,
                mlp_ratio=3.0)


@register_model(url=_RELEASE + '81.7_T2T_ViTt_14.pth.tar', params=21.5, gmacs=6.1, top1=81.7,
                source=_SOURCE, **_weights_scale(384))
def t2t_vit_t_14(**kwargs):
    return _t2t(kwargs, tokens_type='transformer', embed_dim=384, depth=14, num_heads=6,
                mlp_ratio=3.0)


@register_model(url=_RELEASE + '82.4_T2T_ViTt_19.pth.tar', params=39.2, gmacs=9.8, top1=82.4,
                source=_SOURCE, **_weights_scale(448))
def t2t_vit_t_19(**kwargs):
    return _t2t(kwargs, tokens_type='transformer', embed_dim=448, depth=19, num_heads=7,
                mlp_ratio=3.0)


@register_model(url=_RELEASE + '82.6_T2T_ViTt_24.pth.tar', params=64.1, gmacs=15.0, top1=82.6,
                source=_SOURCE, **_weights_scale(512))
def t2t_vit_t_24(**kwargs):
    return _t2t(kwargs, tokens_type='transformer', embed_dim=512, depth=24, num_heads=8,
                mlp_ratio=3.0)


@register_model(url=None, params=21.5, gmacs=4.8, top1=81.5, source='T2T-ViT paper Tab. 6',
                **_weights_scale(384))
def t2t_vit_14_resnext(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=384, depth=14, num_heads=32,
                mlp_ratio=3.0)


@register_model(url=None, params=25.2, gmacs=5.0, top1=77.9, source='T2T-ViT paper Tab. 6',
                **_weights_scale(512))
def t2t_vit_14_wide(**kwargs):
    # Depth 4, and with weights qk_scale 512 ** -0.5 (not 768 ** -0.5), as the official builder.
    return _t2t(kwargs, tokens_type='performer', embed_dim=768, depth=4, num_heads=12,
                mlp_ratio=3.0)


@register_model(url=None, params=21.9, gmacs=4.9, top1=81.6, source='T2T-ViT paper Tab. 6',
                **_weights_scale(384))
def t2t_vit_14_se(**kwargs):
    return _t2t(kwargs, tokens_type='performer', embed_dim=384, depth=14, num_heads=6,
                mlp_ratio=3.0, attn_layer=partial(SEAttention, se_reduction=16))
