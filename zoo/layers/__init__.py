"""The shared layer library: every backbone family builds on these, none keeps a private copy."""
from .attention import Attention
from .block import Block, LayerNorm6
from .drop import DropPath, drop_path, drop_path_rates
from .helpers import check_image, prepend_tokens, to_2tuple
from .layer_scale import LayerScale
from .mlp import Mlp
from .patch_embed import PatchEmbed
from .pos_embed import resample_pos_embed, sincos_2d_pos_embed, sinusoid_pos_embed
from .weight_init import init_weights_trunc_normal

__all__ = [
    'Attention', 'Block', 'LayerNorm6', 'DropPath', 'drop_path', 'drop_path_rates', 'check_image',
    'prepend_tokens', 'to_2tuple', 'LayerScale', 'Mlp', 'PatchEmbed', 'resample_pos_embed',
    'sincos_2d_pos_embed', 'sinusoid_pos_embed', 'init_weights_trunc_normal',
]
