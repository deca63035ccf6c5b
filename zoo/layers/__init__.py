"""The shared layer library: every backbone family builds on these, none keeps a private copy."""
from .attention import Attention, mix_heads
from .block import Block, LayerNorm6
from .class_attention import ClassAttention, ClassAttentionBlock
from . import config
from .config import (fast_paths, fuse_for_inference, use_explicit_bf16_attn, use_fast_mha, use_fused_attn, use_onednn,
                     use_onednn_float32)
from .conv_attention import ConvProjection, ConvProjectionAttention
from .conv_embed import ConvEmbed
from .drop import DropPath, drop_path, drop_path_rates
from .helpers import check_image, prepend_tokens, to_2tuple
from .image_to_tokens import ImageToTokens
from .layer_class_attention import LayerClassAttention, LayerClassAttentionBlock
from .layer_scale import LayerScale
from .linear import Linear, set_onednn_linear
from .leff import LocallyEnhancedFeedForward
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .peg import PositionalEncodingGenerator
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed, sinusoid_pos_embed
from .quick_gelu import QuickGELU
from .re_attention import ReAttention
from .scaled_residual_block import ScaledResidualBlock
from .squeeze_excite import SEAttention, SqueezeExcite
from .talking_heads import TalkingHeadsAttention
from .tokens_to_token import TokenAttention, TokenPerformer, TokensToToken, TokenTransformer
from .weight_init import init_weights_trunc_normal

__all__ = [
    'Attention', 'mix_heads', 'Block', 'LayerNorm6', 'config', 'fast_paths', 'fuse_for_inference',
    'use_explicit_bf16_attn', 'use_fast_mha', 'use_fused_attn', 'use_onednn', 'use_onednn_float32',
    'ClassAttention', 'ClassAttentionBlock',
    'ConvProjection', 'ConvProjectionAttention', 'ConvEmbed', 'DropPath', 'drop_path', 'drop_path_rates',
    'check_image', 'prepend_tokens', 'to_2tuple', 'ImageToTokens', 'LayerClassAttention',
    'LayerClassAttentionBlock', 'LayerScale', 'Linear', 'set_onednn_linear', 'LocallyEnhancedFeedForward', 'Mlp', 'PatchEmbed',
    'PositionalEncodingGenerator', 'resample_pos_embed', 'sincos_2d_pos_embed',
    'sinusoid_pos_embed', 'QuickGELU', 'ReAttention', 'ScaledResidualBlock', 'SEAttention',
    'SqueezeExcite', 'TalkingHeadsAttention', 'TokenAttention', 'TokenPerformer',
    'TokensToToken', 'TokenTransformer', 'init_weights_trunc_normal',
]
