"""CvT (Wu et al., 2021): convolutional token embeddings and convolutional-projection attention
in a three-stage hierarchy, without position embeddings.

Faithful to the official code (microsoft/CvT, ``lib/models/cls_cvt.py``): LayerNorm eps 1e-5,
QuickGELU in the MLPs, attention scale dim^-0.5 over the full width, a class token in the last
stage only, the final norm on that token. Checkpoints in the official layout and in Hugging Face
transformers' ``CvtForImageClassification`` layout are converted by :func:`checkpoint_filter_fn`.
Hugging Face's port runs its MLPs with the exact GELU: build with ``act_layer=nn.GELU`` to
reproduce its outputs.
"""
import re
from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from ..layers import Block, check_image, drop_path_rates, init_weights_trunc_normal, prepend_tokens
from ..layers.conv_attention import ConvProjectionAttention
from ..layers.conv_embed import ConvEmbed
from ..layers.quick_gelu import QuickGELU
from ..registry import register_model
from ..layers.padding import Padding, prepend_valid
from ._base import (TokenBackbone, apply_blocks, block_kwargs, build, classifier_head, rename_keys,
                    tokens_to_map, zero_padded_pixels)


class CvTStage(nn.Module):
    """Conv token embedding, an optional class token, then ``depth`` Blocks whose attention
    takes its q / k / v through convolutional projections.

    (B, C, H, W) -> tokens (B, P + h*w, D), the grid (h, w), and the blocks' attention maps
    (empty unless ``return_attention``); P is 1 with a class token, else 0.
    """

    def __init__(self, in_chans: int, embed_dim: int, depth: int, num_heads: int,
                 patch_size: int, patch_stride: int, patch_padding: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, cls_token: bool = False, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 act_layer=QuickGELU, norm_layer=nn.LayerNorm, fused_attn: bool | None = None):
        super().__init__()
        self.num_prefix_tokens = int(cls_token)
        self.patch_embed = ConvEmbed(in_chans, embed_dim, patch_size, patch_stride, patch_padding,
                                     norm_layer=norm_layer)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        self.pos_drop = nn.Dropout(drop_rate)
        attn_layer = partial(ConvProjectionAttention, num_prefix_tokens=self.num_prefix_tokens)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=dpr, act_layer=act_layer,
                  norm_layer=norm_layer, attn_layer=attn_layer, fused_attn=fused_attn)
            for dpr in drop_path_rates(drop_path_rate, depth)])

    def forward(self, x: torch.Tensor, return_attention: bool = False,
                padding: Padding | None = None, stride: int = 1):
        """``padding``: a padded batch's real extents, ``stride`` this stage's output stride;
        the blocks then mask the padded tokens (no keys, zeros for the convolutions)."""
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            x = prepend_tokens(x, self.cls_token)
        valid = None if padding is None else prepend_valid(padding.token_mask(stride, grid),
                                                           self.num_prefix_tokens)
        x, maps = apply_blocks(self.blocks, self.pos_drop(x), return_attention,
                               **block_kwargs(grid, valid))
        return x, grid, maps

    def to_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Tokens (B, P + h*w, D) -> the patch tokens as a map (B, D, h, w)."""
        return tokens_to_map(x, grid, self.num_prefix_tokens)


class ConvolutionalVisionTransformer(TokenBackbone):
    """CvT: three stages at strides 4, 8, 16 (for sides that are multiples of 16; other sides give
    ceil(H / s)), the class token joining in the last one.

    ``drop_path_rate``: a float is the last stage's rate, with stages 1-2 at 0 as in every
    official config (DROP_PATH_RATE [0, 0, r]); a sequence gives one rate per stage. Within a
    stage it rises linearly from 0 over the blocks. ``img_size`` is recorded only: with no
    position embedding the network takes any input size. The class-token head, forward,
    classifier reset and checkpoint hook are :class:`TokenBackbone`'s.
    """
    classifier_keys = ('head',)

    def __init__(self, img_size=224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (64, 192, 384), depths: Sequence[int] = (1, 2, 10),
                 num_heads: Sequence[int] = (1, 3, 6), patch_sizes: Sequence[int] = (7, 3, 3),
                 patch_strides: Sequence[int] = (4, 2, 2),
                 patch_paddings: Sequence[int] = (2, 1, 1),
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float | Sequence[float] = 0.0,
                 act_layer=QuickGELU, norm_layer=nn.LayerNorm, fused_attn: bool | None = None):
        super().__init__()
        num_stages = len(embed_dims)
        if not isinstance(drop_path_rate, Sequence):
            drop_path_rate = (0.0,) * (num_stages - 1) + (drop_path_rate,)
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dims[-1]
        self.stages = nn.ModuleList()
        stride, chans = 1, in_chans
        self.feature_info = []
        for s in range(num_stages):
            self.stages.append(CvTStage(
                chans, embed_dims[s], depths[s], num_heads[s], patch_sizes[s], patch_strides[s],
                patch_paddings[s], mlp_ratio, qkv_bias, cls_token=s == num_stages - 1,
                drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                drop_path_rate=drop_path_rate[s], act_layer=act_layer,
                norm_layer=norm_layer, fused_attn=fused_attn))
            stride, chans = stride * patch_strides[s], embed_dims[s]
            self.feature_info.append(dict(channels=chans, stride=stride, module=f'stages.{s}'))
        self.norm = norm_layer(self.embed_dim)
        self.head = classifier_head(self.embed_dim, num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.stages[-1].cls_token, std=0.02)
        self.apply(init_weights_trunc_normal)
        if isinstance(self.head, nn.Linear):
            # The official head: weight truncated-normal(0.02), bias PyTorch's default
            # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not the zero of the DeiT rule.
            bound = self.head.in_features ** -0.5
            nn.init.uniform_(self.head.bias, -bound, bound)

    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith('cls_token')}

    def run_stages(self, x: torch.Tensor, return_attention: bool = False,
                   padding: Padding | None = None):
        """(B, C, H, W) -> [(tokens, grid)] per stage and the attention maps of every block.
        In a padded batch (``padding``) each stage's map is zeroed on the padding before the
        next stage's overlapping embedding reads it."""
        check_image(x, self.in_chans, 1)
        outs, maps = [], []
        for stage, info in zip(self.stages, self.feature_info):
            tokens, grid, stage_maps = stage(x, return_attention, padding, info['stride'])
            outs.append((tokens, grid))
            maps += stage_maps
            x = stage.to_map(tokens, grid)
            if padding is not None:
                x = padding.zero(x, info['stride'])
        return outs, maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> the last stage's normalised tokens (B, 1 + h*w, D), class token first.
        The norm is per token, so the class token equals the official norm(cls_token)."""
        outs, _ = self.run_stages(x)
        return self.norm(outs[-1][0])

    def forward_feature_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None
                             ) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, D_s, H/s, W/s)] for s = 4, 8, 16: each stage's output map (the
        patch tokens; the class token and the final norm are left out, as in the official code
        and Hugging Face's hidden states). ``mask`` (B, H, W), True on padding: each image's
        maps are those it gets alone, zero on the padding."""
        padding = Padding.from_mask(mask)
        outs, _ = self.run_stages(zero_padded_pixels(x, mask if padding else None), padding=padding)
        maps = [stage.to_map(tokens, grid) for stage, (tokens, grid) in zip(self.stages, outs)]
        if padding is not None:
            maps = [padding.zero(m, info['stride']) for m, info in zip(maps, self.feature_info)]
        return maps

    @property
    def window_blocks(self) -> list[Block]:
        """Every stage's blocks in order (``freeze_blocks`` counts across the stages)."""
        return [block for stage in self.stages for block in stage.blocks]

    def stem_and_blocks(self, num_blocks: int) -> list[nn.Module]:
        """The first ``num_blocks`` blocks counted across the stages, with the token embedding
        of every stage they reach (1: stage 1, stride 4, as DETR freezes ResNet-50's first
        stage)."""
        modules, left = [], num_blocks
        for stage in self.stages:
            if left <= 0:
                break
            modules += [stage.patch_embed, *stage.blocks[:left]]
            left -= len(stage.blocks)
        return modules

    def set_window_attention(self, window_size: int = 14, global_blocks=4, rel_pos: bool = False,
                             rel_pos_size: int = 64) -> None:
        raise ValueError('CvT has no window attention: its keys and values are already taken on '
                         'a grid strided by 2 (a quarter of the tokens), and its first stages are '
                         'shallow: set model.detector.backbone.window_size=0 (or use configs/*_cvt.py)')

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, heads, P + h*w, P + h'*w') softmax map per block, stage by
        stage; (h', w') is the key / value grid, about half of (h, w) per side."""
        return self.run_stages(x, return_attention=True)[1]


# Hugging Face transformers' CvtForImageClassification / CvtModel names -> the official names.
_HF_TO_OFFICIAL = [(re.compile(pattern), repl) for pattern, repl in [
    (r'^(?:cvt\.)?encoder\.stages\.(\d+)\.', r'stage\1.'),
    (r'\.embedding\.convolution_embeddings\.projection\.', '.patch_embed.proj.'),
    (r'\.embedding\.convolution_embeddings\.normalization\.', '.patch_embed.norm.'),
    (r'\.layers\.(\d+)\.', r'.blocks.\1.'),
    (r'\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.'
     r'convolution\.', r'.attn.conv_proj_\1.conv.'),
    (r'\.attention\.attention\.convolution_projection_(q|k|v)\w*\.convolution_projection\.'
     r'normalization\.', r'.attn.conv_proj_\1.bn.'),
    (r'\.attention\.attention\.projection_(q|k|v)\w*\.', r'.attn.proj_\1.'),
    (r'\.attention\.output\.dense\.', '.attn.proj.'),
    (r'\.layernorm_before\.', '.norm1.'),
    (r'\.layernorm_after\.', '.norm2.'),
    (r'\.intermediate\.dense\.', '.mlp.fc1.'),
    (r'\.output\.dense\.', '.mlp.fc2.'),
    (r'^layernorm\.', 'norm.'),
    (r'^classifier\.', 'head.'),
]]
_OFFICIAL_STAGE = re.compile(r'^stage(\d+)\.')


def checkpoint_filter_fn(state_dict: dict, model: ConvolutionalVisionTransformer) -> dict:
    """Official CvT (``stage{s}.blocks.{j}.attn.proj_q`` ...) or Hugging Face
    (``cvt.encoder.stages.{s}.layers.{j}...``) checkpoint -> this model's keys: ``stage{s}.`` ->
    ``stages.{s}.`` and the separate q / k / v Linears stacked into ``attn.qkv``. The identity on
    the zoo's own layout."""
    if any(k.startswith(('cvt.', 'encoder.stages.')) for k in state_dict):
        state_dict = rename_keys(state_dict, _HF_TO_OFFICIAL)
    sd = rename_keys(state_dict, [(_OFFICIAL_STAGE, r'stages.\1.')])
    for key in [k for k in sd if '.attn.proj_q.' in k]:
        parts = [sd.pop(key.replace('.proj_q.', f'.proj_{n}.')) for n in 'qkv']
        sd[key.replace('.proj_q.', '.qkv.')] = torch.cat(parts)
    return sd


# ---------------------------------------------------------------------------------------------
# Registered variants. Figures: the CvT README (params rounded to 1M there; 20.0 / 31.6 counted
# from the official code), GFLOPs as the README reports them (multiply-adds).
# The official README links its weights to a OneDrive folder only (no direct file URLs); the
# same weights, converted by Microsoft / Hugging Face, are on the Hugging Face hub under
# microsoft/cvt-*, in the layout checkpoint_filter_fn converts.

def _hf(repo: str) -> str:
    return f'https://huggingface.co/microsoft/{repo}/resolve/main/pytorch_model.bin'


_CVT_13 = dict(embed_dims=(64, 192, 384), depths=(1, 2, 10), num_heads=(1, 3, 6))
_CVT_21 = dict(embed_dims=(64, 192, 384), depths=(1, 4, 16), num_heads=(1, 3, 6))
_CVT_W24 = dict(embed_dims=(192, 768, 1024), depths=(2, 2, 20), num_heads=(3, 12, 16))


_cvt = partial(build, ConvolutionalVisionTransformer)


@register_model(url=_hf('cvt-13'), params=20.0, gmacs=4.5, top1=81.6, source='CvT README (IN-1k)')
def cvt_13(**kwargs):
    return _cvt(kwargs, **_CVT_13)


@register_model(url=_hf('cvt-21'), params=31.6, gmacs=7.1, top1=82.5, source='CvT README (IN-1k)')
def cvt_21(**kwargs):
    return _cvt(kwargs, **_CVT_21)


# IN-1k-only weights at 384; microsoft/cvt-13-384-22k holds the IN-22k -> 1k ones (83.3).
@register_model(url=_hf('cvt-13-384'), input_size=(3, 384, 384), params=20.0, gmacs=16.3,
                top1=83.0, source='CvT README (IN-1k, 384)')
def cvt_13_384(**kwargs):
    return _cvt(kwargs, img_size=384, **_CVT_13)


# IN-1k-only weights at 384; microsoft/cvt-21-384-22k holds the IN-22k -> 1k ones (84.9).
@register_model(url=_hf('cvt-21-384'), input_size=(3, 384, 384), params=31.6, gmacs=24.9,
                top1=83.3, source='CvT README (IN-1k, 384)')
def cvt_21_384(**kwargs):
    return _cvt(kwargs, img_size=384, **_CVT_21)


@register_model(url=_hf('cvt-w24-384-22k'), input_size=(3, 384, 384), params=277.0,
                gmacs=193.2, top1=87.6, source='CvT README (IN-22k -> 1k, 384)')
def cvt_w24_384(**kwargs):
    return _cvt(kwargs, img_size=384, **_CVT_W24)
