"""CeiT (Yuan et al., 2021, "Incorporating Convolution Designs into Visual Transformers"), as in
the official code (github.com/coeusguo/ceit): an Image-to-Tokens conv stem, locally-enhanced
feed-forward (LeFF) in every block, and layer-wise class-token attention (LCA) before the head.
"""
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..layers.block import Block, LayerNorm6
from ..layers.drop import drop_path_rates
from ..layers.helpers import prepend_tokens
from ..layers.image_to_tokens import ImageToTokens
from ..layers.layer_class_attention import LayerClassAttentionBlock
from ..layers.leff import LocallyEnhancedFeedForward
from ..layers.padding import Padding
from ..registry import register_model
from ._base import (TokenBackbone, apply_blocks, block_kwargs, build, classifier_head,
                    position_table, rename_keys, resample_pos_embed_in, tokens_to_map,
                    zero_padded_pixels)


class CeiT(TokenBackbone):
    """Token sequence [cls, patch_1 .. patch_N] (B, 1 + N, D) over a stride-16 grid.

    Each block's class token is collected; the L class tokens (plus a layer position table)
    go through one LCA block whose output, normalised, feeds the head. Inputs of any size whose
    sides are multiples of 16 are accepted: the position table is resampled and LeFF runs on the
    input's real (h, w) grid.

    As in the official model, LeFF leaves class tokens unchanged, so the last block's LeFF
    shapes only the feature map (forward_feature_maps), never the logits.
    """
    classifier_keys = ('head',)
    num_prefix_tokens = 1
    stem_modules = ('i2t',)

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, leff_kernel_size: int = 3,
                 fused_attn: bool | None = None, norm_layer=LayerNorm6):
        super().__init__()
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.i2t = ImageToTokens(img_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.i2t.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                      attn_drop=attn_drop_rate, norm_layer=norm_layer, fused_attn=fused_attn)
        leff = partial(LocallyEnhancedFeedForward, kernel_size=leff_kernel_size)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, drop_path=dpr, mlp_layer=leff, **common)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        # No drop-path in the LCA block, as in the official code.
        self.lca = LayerClassAttentionBlock(embed_dim, num_heads, **common)
        self.pos_layer_embed = nn.Parameter(torch.zeros(1, depth, embed_dim))
        self.norm = norm_layer(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        self.feature_info = [dict(channels=embed_dim, stride=self.i2t.stride,
                                  module=f'blocks.{depth - 1}')]
        # pos_layer_embed starts at zero, as in the official code, and is decayed as in the
        # official recipe: it is not one of token_params.
        self.init_weights()

    def embed(self, x: torch.Tensor, padding: Padding | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens with position added (B, 1 + h*w, D), and the grid (h, w); in a
        padded batch each image's table follows its own grid (:func:`position_table`). The stem
        needs no masking: what its pooling reads past a real cell lies within the image's
        stride-16 cells, so in the zero pixels it reads alone too."""
        x, grid = self.i2t(x)
        pos = position_table(self.pos_embed, grid, self.i2t.grid_size, 1, padding, self.i2t.stride)
        return self.pos_drop(prepend_tokens(x, self.cls_token) + pos), grid

    def forward_blocks(self, x: torch.Tensor, grid: tuple[int, int],
                       attention_maps: list | None = None):
        """Tokens (B, 1 + N, D) -> last tokens (B, 1 + N, D) and every block's class token
        stacked (B, L, D). Given a list ``attention_maps``, each block's (B, heads, 1 + N, 1 + N)
        softmax map is appended to it."""
        class_tokens = []
        for block in self.blocks:
            x, maps = apply_blocks([block], x, attention_maps is not None, grid=grid)
            class_tokens.append(x[:, 0])
            if attention_maps is not None:
                attention_maps += maps
        return x, rearrange(class_tokens, 'l b d -> b l d')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the normalised LCA output (B, 1, D), the token the head reads."""
        x, grid = self.embed(x)
        _, class_tokens = self.forward_blocks(x, grid)
        return self.norm(self.lca(class_tokens + self.pos_layer_embed))

    def forward_feature_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None
                             ) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, D, H/16, W/16)]: the last block's patch tokens as a map. The
        final norm belongs to the LCA output, so the tokens are left as the block gives them.
        Detection mode: the class token is dropped (LeFF never let it into the patches' path
        anyway; only attention did), window attention where set. ``mask`` (B, H, W), True on
        padding: as :meth:`TokenBackbone.forward_feature_maps`."""
        padding = Padding.from_mask(mask)
        if padding is None:
            x, grid = self.embed_patches(x)
            return [tokens_to_map(apply_blocks(self.blocks, x, grid=grid)[0], grid)]
        x, grid = self.embed_patches(zero_padded_pixels(x, mask), padding)
        valid = padding.token_mask(self.i2t.stride, grid)
        x = apply_blocks(self.blocks, x, **block_kwargs(grid, valid))[0]
        return [padding.zero(tokens_to_map(x, grid), self.i2t.stride)]

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, heads, 1 + N, 1 + N) softmax map per block, then the LCA
        map (B, heads, 1, L) of the last class token over the L layers' class tokens."""
        x, grid = self.embed(x)
        maps = []
        _, class_tokens = self.forward_blocks(x, grid, attention_maps=maps)
        _, attn = self.lca(class_tokens + self.pos_layer_embed, return_attention=True)
        return maps + [attn]


# Official names -> ours: the I2T stem is flat here, and feed-forwards are Block's ``mlp``.
_RENAMES = (('i2t.backbone.', 'i2t.'), ('.leff.', '.mlp.'), ('lca.feedforward.', 'lca.mlp.'))


def checkpoint_filter_fn(state_dict: dict, model: CeiT) -> dict:
    """Official CeiT checkpoint (DeiT training script: ``model`` entry; keys i2t.backbone.{conv,
    bn}, i2t.proj, cls_token, pos_embed, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
    leff.{conv1..3, bn1..3}}, lca.{norm1, attn.qkv, attn.proj, norm2, feedforward.fc1,
    feedforward.fc2}, pos_layer_embed, norm, head) -> this model's keys, the position table
    resampled to its grid (e.g. a 224 checkpoint into a 384 model)."""
    sd = rename_keys(state_dict, _RENAMES)
    return resample_pos_embed_in(sd, model, model.i2t.grid_size, num_prefix_tokens=1)


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: CeiT README (ceit_b: the 100-epoch row). The official weights
# are one Google Drive file (no direct download): url=None.

_ceit = partial(build, CeiT)


@register_model(url=None, params=6.4, gmacs=1.2, top1=76.4, source='CeiT README')
def ceit_t(**kwargs):
    return _ceit(kwargs, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)


@register_model(url=None, params=24.2, gmacs=4.5, top1=82.0, source='CeiT README')
def ceit_s(**kwargs):
    return _ceit(kwargs, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)


@register_model(url=None, params=94.4, gmacs=17.5, top1=81.9, source='CeiT README (100 epochs)')
def ceit_b(**kwargs):
    return _ceit(kwargs, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
