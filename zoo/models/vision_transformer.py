"""ViT (Dosovitskiy et al., 2021) and DeiT (Touvron et al., 2021), including DeiT's distilled form.

Key layout is timm's, which is also the official DeiT layout, so those checkpoints load as they
are; the official JAX ``.npz`` releases of ViT are converted by :func:`checkpoint_filter_fn`.
"""
from functools import partial

import torch
from einops import rearrange
from torch import nn

from ..layers import Block, LayerNorm6, PatchEmbed, drop_path_rates
from ..registry import register_model
from ._base import TokenBackbone, build, classifier_head, resample_pos_embed_in


class VisionTransformer(TokenBackbone):
    """Plain ViT over p x p patches.

    Token sequence: [cls, (dist,) patch_1 .. patch_N] (B, P + N, D) with P prefix tokens.
    Inputs of any size whose sides are multiples of the patch size are accepted: the learned
    position table is resampled bicubically to the input's grid. Embedding, blocks, feature
    map and attention maps are :class:`TokenBackbone`'s.
    """
    classifier_keys = ('head', 'head_dist')
    token_params = ('pos_embed', 'cls_token', 'dist_token')

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 distilled: bool = False, global_pool: str = 'token',
                 init_values: float | None = None, fused_attn: bool | None = None,
                 norm_layer=LayerNorm6):
        super().__init__()
        if global_pool not in ('token', 'avg'):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.global_pool = global_pool
        self.distilled = distilled
        self.num_prefix_tokens = 2 if distilled else 1

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(
            torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                  drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr,
                  init_values=init_values, norm_layer=norm_layer, fused_attn=fused_attn)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        self.head = classifier_head(embed_dim, num_classes)
        if distilled:
            self.head_dist = classifier_head(embed_dim, num_classes)
        self.feature_info = [dict(channels=embed_dim, stride=self.patch_embed.patch_size[0],
                                  module='norm')]
        self.init_weights()

    def no_weight_decay(self) -> set[str]:
        """DeiT's: its distilled model inherits timm's ``{'pos_embed', 'cls_token'}``, and the
        (1, 1, D) dist_token is neither 1-D nor a bias, so DeiT decays it."""
        return super().no_weight_decay() - {'dist_token'}

    @property
    def prefix_tokens(self) -> list[torch.Tensor]:
        return [self.cls_token] + ([self.dist_token] if self.distilled else [])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Tokens (B, P + N, D) -> logits (B, num_classes); distilled models in training mode
        return (class logits, distillation logits) and in eval mode their mean."""
        if self.distilled:
            cls, dist = x[:, 0], x[:, 1]
            if pre_logits:
                return (cls + dist) / 2
            cls, dist = self.head(cls), self.head_dist(dist)
            return (cls, dist) if self.training else (cls + dist) / 2
        x = x[:, self.num_prefix_tokens:].mean(dim=1) if self.global_pool == 'avg' else x[:, 0]
        return x if pre_logits else self.head(x)


def _convert_big_vision(sd: dict, model: VisionTransformer) -> dict:
    """Official JAX ViT release (``.npz``, keys such as ``Transformer/encoderblock_0/...``)
    -> zoo layout. JAX Dense kernels are (in, out); attention kernels are (D, heads, head_dim)."""
    out = {
        'patch_embed.proj.weight': rearrange(sd['embedding/kernel'], 'kh kw c d -> d c kh kw'),
        'patch_embed.proj.bias': sd['embedding/bias'],
        'cls_token': sd['cls'],
        'pos_embed': sd['Transformer/posembed_input/pos_embedding'],
        'norm.weight': sd['Transformer/encoder_norm/scale'],
        'norm.bias': sd['Transformer/encoder_norm/bias'],
    }
    if 'head/kernel' in sd:
        out['head.weight'] = sd['head/kernel'].t()
        out['head.bias'] = sd['head/bias']
    for i in range(len(model.blocks)):
        p = f'Transformer/encoderblock_{i}/'
        names = {k[len(p):].split('/')[0] for k in sd if k.startswith(p)}
        ln = sorted(n for n in names if n.startswith('LayerNorm_'))
        mha = next(n for n in names if n.startswith('MultiHeadDotProductAttention_'))
        mlp = next(n for n in names if n.startswith('MlpBlock_'))
        b = f'blocks.{i}.'
        for j, norm in enumerate(ln, start=1):
            out[f'{b}norm{j}.weight'] = sd[f'{p}{norm}/scale']
            out[f'{b}norm{j}.bias'] = sd[f'{p}{norm}/bias']
        a = f'{p}{mha}/'
        out[f'{b}attn.qkv.weight'] = torch.cat(
            [rearrange(sd[f'{a}{n}/kernel'], 'c h d -> (h d) c') for n in ('query', 'key', 'value')])
        out[f'{b}attn.qkv.bias'] = torch.cat(
            [rearrange(sd[f'{a}{n}/bias'], 'h d -> (h d)') for n in ('query', 'key', 'value')])
        out[f'{b}attn.proj.weight'] = rearrange(sd[f'{a}out/kernel'], 'h d c -> c (h d)')
        out[f'{b}attn.proj.bias'] = sd[f'{a}out/bias']
        for j in range(2):
            out[f'{b}mlp.fc{j + 1}.weight'] = sd[f'{p}{mlp}/Dense_{j}/kernel'].t()
            out[f'{b}mlp.fc{j + 1}.bias'] = sd[f'{p}{mlp}/Dense_{j}/bias']
    return {k: v.float().contiguous() for k, v in out.items()}


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformer) -> dict:
    """Official DeiT / timm / JAX ViT checkpoint -> this model's keys, with the position table
    resampled to the model's grid (fine-tuning at another resolution)."""
    if 'embedding/kernel' in state_dict:
        state_dict = _convert_big_vision(state_dict, model)
    return resample_pos_embed_in(dict(state_dict), model, model.patch_embed.grid_size,
                                 model.num_prefix_tokens)


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: timm's ImageNet results (ViT, AugReg weights) and the DeiT README.

_VIT_JAX = 'https://storage.googleapis.com/vit_models/augreg/'
_DEIT = 'https://dl.fbaipublicfiles.com/deit/'
_INCEPTION = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_vit = partial(build, VisionTransformer)


@register_model(url=_VIT_JAX + 'Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz',
                **_INCEPTION, params=5.72, gmacs=1.26, top1=75.5, source='ViT (AugReg, in21k->1k)')
def vit_tiny_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=192, depth=12, num_heads=3)


@register_model(url=_VIT_JAX + 'S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz',
                **_INCEPTION, params=22.05, gmacs=4.61, top1=81.4, source='ViT (AugReg, in21k->1k)')
def vit_small_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model(url=_VIT_JAX + 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz',
                **_INCEPTION, params=86.57, gmacs=17.58, top1=81.8, source='ViT (AugReg, in21k->1k)')
def vit_base_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(url=_VIT_JAX + 'B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224.npz',
                **_INCEPTION, params=88.22, gmacs=4.41, source='ViT (AugReg, in21k->1k)')
def vit_base_patch32_224(**kwargs):
    return _vit(kwargs, patch_size=32, embed_dim=768, depth=12, num_heads=12)


@register_model(url=_VIT_JAX + 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384.npz',
                input_size=(3, 384, 384), **_INCEPTION, params=86.86, gmacs=55.54,
                source='ViT (AugReg, in21k->1k)')
def vit_base_patch16_384(**kwargs):
    return _vit(kwargs, img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(url=_VIT_JAX + 'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224.npz',
                **_INCEPTION, params=304.3, gmacs=61.6, source='ViT paper')
def vit_large_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model(url=_VIT_JAX + 'L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz',
                input_size=(3, 384, 384), **_INCEPTION, params=304.7, gmacs=191.2,
                source='ViT (AugReg, in21k->1k)')
def vit_large_patch16_384(**kwargs):
    return _vit(kwargs, img_size=384, patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model(url=_DEIT + 'deit_tiny_patch16_224-a1311bcf.pth', params=5.7, gmacs=1.26,
                top1=72.2, source='DeiT README')
def deit_tiny_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=192, depth=12, num_heads=3)


@register_model(url=_DEIT + 'deit_small_patch16_224-cd65a155.pth', params=22.1, gmacs=4.61,
                top1=79.9, source='DeiT README')
def deit_small_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model(url=_DEIT + 'deit_base_patch16_224-b5f2ef4d.pth', params=86.6, gmacs=17.58,
                top1=81.8, source='DeiT README')
def deit_base_patch16_224(**kwargs):
    return _vit(kwargs, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(url=_DEIT + 'deit_base_patch16_384-8de9b5d1.pth', input_size=(3, 384, 384),
                params=86.9, gmacs=55.5, top1=83.1, source='DeiT README')
def deit_base_patch16_384(**kwargs):
    return _vit(kwargs, img_size=384, patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model(url=_DEIT + 'deit_tiny_distilled_patch16_224-b40b3cf7.pth', params=5.91,
                gmacs=1.27, top1=74.5, source='DeiT README')
def deit_tiny_distilled_patch16_224(**kwargs):
    return _vit(kwargs, distilled=True, patch_size=16, embed_dim=192, depth=12, num_heads=3)


@register_model(url=_DEIT + 'deit_small_distilled_patch16_224-649709d9.pth', params=22.44,
                gmacs=4.63, top1=81.2, source='DeiT README')
def deit_small_distilled_patch16_224(**kwargs):
    return _vit(kwargs, distilled=True, patch_size=16, embed_dim=384, depth=12, num_heads=6)


@register_model(url=_DEIT + 'deit_base_distilled_patch16_224-df68dfff.pth', params=87.34,
                gmacs=17.68, top1=83.4, source='DeiT README')
def deit_base_distilled_patch16_224(**kwargs):
    return _vit(kwargs, distilled=True, patch_size=16, embed_dim=768, depth=12, num_heads=12)
