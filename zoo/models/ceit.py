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
from ..layers.pos_embed import resample_pos_embed
from ..layers.weight_init import init_weights_trunc_normal
from ..registry import register_model


class CeiT(nn.Module):
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

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, leff_kernel_size: int = 3,
                 fused_attn: bool = True, norm_layer=LayerNorm6):
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
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(channels=embed_dim, stride=self.i2t.stride,
                                  module=f'blocks.{depth - 1}')]
        self.init_weights()

    def init_weights(self) -> None:
        # pos_layer_embed starts at zero, as in the official code.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights_trunc_normal)

    def no_weight_decay(self) -> set[str]:
        # The official recipe decays pos_layer_embed; only these two are exempt there.
        return {'pos_embed', 'cls_token'}

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens with position added (B, 1 + h*w, D), and the grid (h, w)."""
        x, grid = self.i2t(x)
        pos = resample_pos_embed(self.pos_embed, grid, self.i2t.grid_size, 1)
        return self.pos_drop(prepend_tokens(x, self.cls_token) + pos), grid

    def forward_blocks(self, x: torch.Tensor, grid: tuple[int, int]):
        """Tokens (B, 1 + N, D) -> last tokens (B, 1 + N, D) and every block's class token
        stacked (B, L, D)."""
        class_tokens = []
        for block in self.blocks:
            x = block(x, grid=grid)
            class_tokens.append(x[:, 0])
        return x, rearrange(class_tokens, 'l b d -> b l d')

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the normalised LCA output (B, 1, D), the token the head reads."""
        x, grid = self.embed(x)
        _, class_tokens = self.forward_blocks(x, grid)
        return self.norm(self.lca(class_tokens + self.pos_layer_embed))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, 1, D) from forward_features -> logits (B, num_classes)."""
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, D, H/16, W/16)]: the last block's patch tokens as a map. The
        final norm belongs to the LCA output, so the tokens are left as the block gives them."""
        x, (h, w) = self.embed(x)
        x, _ = self.forward_blocks(x, (h, w))
        return [rearrange(x[:, 1:], 'b (h w) d -> b d h w', h=h, w=w)]

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, heads, 1 + N, 1 + N) softmax map per block, then the LCA
        map (B, heads, 1, L) of the last class token over the L layers' class tokens."""
        x, grid = self.embed(x)
        maps, class_tokens = [], []
        for block in self.blocks:
            x, attn = block(x, grid=grid, return_attention=True)
            maps.append(attn)
            class_tokens.append(x[:, 0])
        class_tokens = rearrange(class_tokens, 'l b d -> b l d') + self.pos_layer_embed
        _, attn = self.lca(class_tokens, return_attention=True)
        return maps + [attn]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: 'CeiT') -> dict:
        return checkpoint_filter_fn(state_dict, model)


# Official names -> ours: the I2T stem is flat here, and feed-forwards are Block's ``mlp``.
_RENAMES = (('i2t.backbone.', 'i2t.'), ('.leff.', '.mlp.'), ('lca.feedforward.', 'lca.mlp.'))


def checkpoint_filter_fn(state_dict: dict, model: CeiT) -> dict:
    """Official CeiT checkpoint (DeiT training script: ``model`` entry; keys i2t.backbone.{conv,
    bn}, i2t.proj, cls_token, pos_embed, blocks.{i}.{norm1, attn.qkv, attn.proj, norm2,
    leff.{conv1..3, bn1..3}}, lca.{norm1, attn.qkv, attn.proj, norm2, feedforward.fc1,
    feedforward.fc2}, pos_layer_embed, norm, head) -> this model's keys, the position table
    resampled to its grid (e.g. a 224 checkpoint into a 384 model)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in _RENAMES:
            key = key.replace(old, new)
        out[key] = value
    pos = out.get('pos_embed')
    if pos is not None and pos.shape != model.pos_embed.shape:
        out['pos_embed'] = resample_pos_embed(pos, model.i2t.grid_size, num_prefix_tokens=1)
    return out


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: CeiT README (ceit_b: the 100-epoch row). The official weights
# are one Google Drive file (no direct download): url=None.

def _ceit(overrides: dict, **arch) -> CeiT:
    """The variant's architecture, with the caller's overrides (depth, img_size, ...) on top."""
    return CeiT(**{**arch, **overrides})


@register_model(url=None, params=6.4, gmacs=1.2, top1=76.4, source='CeiT README')
def ceit_t(**kwargs):
    return _ceit(kwargs, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0)


@register_model(url=None, params=24.2, gmacs=4.5, top1=82.0, source='CeiT README')
def ceit_s(**kwargs):
    return _ceit(kwargs, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0)


@register_model(url=None, params=94.4, gmacs=17.5, top1=81.9, source='CeiT README (100 epochs)')
def ceit_b(**kwargs):
    return _ceit(kwargs, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0)
