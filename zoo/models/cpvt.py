"""CPVT (Chu et al., 2021, "Conditional Positional Encodings for Vision Transformers").

DeiT with its position table replaced by Position Encoding Generators (PEG): a depthwise 3x3
convolution over the patch grid, added after given blocks (after block 0 by default). The
encoding is computed from the input, so any input size works without resampling anything.
The GAP variants drop the class token and average the patch tokens.

The official CPVT repository released no code of its own; the PEG code was released with Twins
(Meituan-AutoML/Twins, ``PosCNN``: ``pos_block.{i}.proj.0.*``). No CPVT weights were released.
"""
import re
from functools import partial

import torch
from torch import nn

from ..layers import prepend_tokens
from ..layers.peg import PositionalEncodingGenerator
from ..registry import register_model
from ._base import apply_blocks, block_kwargs, build, rename_keys
from .vision_transformer import VisionTransformer


class CPVT(VisionTransformer):
    """ViT / DeiT whose position information comes from PEGs placed after the blocks listed in
    ``peg_positions``.

    Token sequence: [cls, patch_1 .. patch_N] (B, 1 + N, D), or the patches alone (B, N, D) with
    ``class_token=False`` (then ``global_pool='avg'``). Takes every argument of
    :class:`VisionTransformer` except ``distilled``.
    """
    classifier_keys = ('head',)
    # Initialised while VisionTransformer.__init__ runs, before the position table is dropped.
    token_params = ('cls_token',)

    def __init__(self, class_token: bool = True, peg_positions=(0,),
                 global_pool: str | None = None, **kwargs):
        if kwargs.get('distilled'):
            raise ValueError('CPVT has no distilled form')
        global_pool = global_pool or ('token' if class_token else 'avg')
        if global_pool == 'token' and not class_token:
            raise ValueError("global_pool='token' needs the class token; use 'avg' with "
                             "class_token=False")
        super().__init__(global_pool=global_pool, **kwargs)
        # The generators replace the learned table; without a class token nothing precedes the
        # patches. Unregistering keeps both out of the state dict.
        self.pos_embed = None
        if not class_token:
            self.cls_token = None
            self.num_prefix_tokens = 0
        depth = len(self.blocks)
        positions = sorted(set(int(i) for i in peg_positions))
        if not positions or positions[0] < 0 or positions[-1] >= depth:
            raise ValueError(f'peg_positions must name blocks 0..{depth - 1}, got {peg_positions}')
        self.peg_positions = tuple(positions)
        self.pos_block = nn.ModuleList([
            PositionalEncodingGenerator(self.embed_dim) for _ in positions])

    def stem_and_blocks(self, num_blocks: int) -> list[nn.Module]:
        """The stem, the first blocks and the PEGs that follow them."""
        pegs = [peg for i, peg in zip(self.peg_positions, self.pos_block) if i < num_blocks]
        return super().stem_and_blocks(num_blocks) + pegs

    def no_weight_decay(self) -> set[str]:
        # As Twins (the official PEG code) does: no decay on the class token and the PEG weights.
        names = {f'pos_block.{n}' for n, _ in self.pos_block.named_parameters()}
        return names | ({'cls_token'} if self.cls_token is not None else set())

    @property
    def prefix_tokens(self) -> list[torch.Tensor]:
        return [] if self.cls_token is None else [self.cls_token]

    def embed(self, x: torch.Tensor, padding=None) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens (B, P + h*w, D) with no position added yet, and the grid
        (``padding`` changes nothing here: the PEGs take the padding mask)."""
        x, grid = self.patch_embed(x)
        return self.pos_drop(prepend_tokens(x, *self.prefix_tokens)), grid

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int], return_attention: bool = False,
                   valid: torch.Tensor | None = None):
        """Tokens (B, P + h*w, D) through the blocks, each PEG right after its block.
        Returns the tokens and the list of attention maps (empty unless asked for).
        ``valid`` (B, P + h*w): False at padded tokens (no keys; zeros for the PEGs)."""
        pegs = dict(zip(self.peg_positions, self.pos_block))
        maps = []
        for i, block in enumerate(self.blocks):
            x, block_maps = apply_blocks([block], x, return_attention, **block_kwargs(grid, valid))
            maps += block_maps
            if i in pegs:
                x = pegs[i](x, grid, valid)
        return x, maps


# pos_block.{i}.proj.0.* (Twins' PosCNN, a Sequential around the conv) or pos_block.proj.*
# (the single PEG of the paper's listing) -> pos_block.{i}.proj.*
_PEG_KEY = re.compile(r'^pos_block\.(?:(\d+)\.)?proj\.(?:0\.)?(weight|bias)$')


def checkpoint_filter_fn(state_dict: dict, model: CPVT) -> dict:
    """CPVT checkpoint in the official PEG layout -> this model's keys. Everything but the PEGs
    has DeiT's (timm's) names already; there is no position table to resample."""
    def rename(m: re.Match) -> str:
        return f'pos_block.{m.group(1) or 0}.proj.{m.group(2)}'
    return rename_keys(state_dict, [(_PEG_KEY, rename)])


# ---------------------------------------------------------------------------------------------
# Registered variants: DeiT-Ti / S / B widths (DeiT README), PEG after block 0 (paper, default).
# GAP variants: PEGs after blocks 0-4 (the CPVT paper's "0-5" placement, Chu et al. 2021);
# pass peg_positions=(0,) for the single-PEG form. Params / top-1: CPVT paper; GMACs are DeiT's
# (a PEG adds < 0.01 GMACs). No weights were released (url=None).

_SRC = 'CPVT paper'
_cpvt = partial(build, CPVT)

_TI = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_S = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
_B = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_GAP = dict(class_token=False, global_pool='avg', peg_positions=(0, 1, 2, 3, 4))


@register_model(params=5.7, gmacs=1.26, top1=72.4, source=_SRC)
def cpvt_ti(**kwargs):
    return _cpvt(kwargs, **_TI)


@register_model(params=22, gmacs=4.61, top1=79.9, source=_SRC)
def cpvt_s(**kwargs):
    return _cpvt(kwargs, **_S)


@register_model(params=86, gmacs=17.58, top1=81.9, source=_SRC)
def cpvt_b(**kwargs):
    return _cpvt(kwargs, **_B)


@register_model(params=5.7, gmacs=1.26, top1=74.9, source=_SRC)
def cpvt_ti_gap(**kwargs):
    return _cpvt(kwargs, **_TI, **_GAP)


@register_model(params=22, gmacs=4.61, top1=81.5, source=_SRC)
def cpvt_s_gap(**kwargs):
    return _cpvt(kwargs, **_S, **_GAP)


@register_model(params=86, gmacs=17.58, source=_SRC + ' (no top-1 reported for B-GAP)')
def cpvt_b_gap(**kwargs):
    return _cpvt(kwargs, **_B, **_GAP)
