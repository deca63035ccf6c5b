"""What the token-based families share: the :class:`TokenBackbone` base, the checkpoint-converter
helpers and :func:`build`, the registered variants' builder.

A family states its own layers in ``__init__`` and overrides only what it does differently; the
defaults below are those of a plain ViT-style model:

    embed         (B, C, H, W) -> tokens (B, P + h*w, D) with position added, and the grid (h, w)
    run_blocks    tokens through ``self.blocks`` (and the attention maps, when asked for)
    norm          per-token final norm
    forward_head  class token (row 0) -> logits

where P is ``num_prefix_tokens`` (class / distillation tokens ahead of the patches).
"""
import re
import sys
from collections.abc import Iterable

import torch
from einops import rearrange
from torch import nn

from ..layers import Block, init_weights_trunc_normal, prepend_tokens, resample_pos_embed
from ..layers.padding import Padding, zero_outside
from ..layers.pos_embed import resample_pos_embed_per_image
from ..layers.window import global_block_indices
from ..layers.linear import Linear


def classifier_head(dim: int, num_classes: int) -> nn.Module:
    """(B, dim) -> (B, num_classes) Linear, or the identity for ``num_classes == 0``."""
    return Linear(dim, num_classes) if num_classes > 0 else nn.Identity()


def apply_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, return_attention: bool = False,
                 **block_kwargs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Tokens (B, N, D) through ``blocks`` in order (``block_kwargs``, e.g. ``grid``, go to every
    block). Returns the tokens and, with ``return_attention``, each block's attention map (the
    explicit path), else an empty list."""
    maps = []
    for block in blocks:
        if return_attention:
            x, attn = block(x, return_attention=True, **block_kwargs)
            maps.append(attn)
        else:
            x = block(x, **block_kwargs)
    return x, maps


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int],
                  num_prefix_tokens: int = 0) -> torch.Tensor:
    """Tokens (B, P + h*w, D) -> the patch tokens laid out as a map (B, D, h, w)."""
    return rearrange(x[:, num_prefix_tokens:], 'b (h w) d -> b d h w', h=grid[0], w=grid[1])


def position_table(pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int],
                   num_prefix_tokens: int, padding: Padding | None = None,
                   stride: int = 16) -> torch.Tensor:
    """The learned table (1, P + h0*w0, D) for the token grid (h, w): resampled to the grid,
    (1, P + h*w, D); in a padded batch (``padding``) resampled to each image's own real grid at
    ``stride`` instead, (B, P + h*w, D), so an image's positions do not depend on its batch."""
    if padding is None:
        return resample_pos_embed(pos_embed, grid, old_grid, num_prefix_tokens)
    return resample_pos_embed_per_image(pos_embed, grid, padding.grids(stride), old_grid,
                                        num_prefix_tokens)


def block_kwargs(grid: tuple[int, int], valid: torch.Tensor | None) -> dict:
    """What every block of a token backbone is handed: the grid, and the padding mask when the
    batch is padded."""
    return {'grid': grid} if valid is None else {'grid': grid, 'valid': valid}


def zero_padded_pixels(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Images (B, C, H, W) with the padding of ``mask`` (B, H, W) (True on padding) at zero,
    whatever value the caller padded with: the stems then read what they read past the border
    of an image alone."""
    return x if mask is None else zero_outside(x, ~mask[:, None])


class TokenBackbone(nn.Module):
    """Base of the token backbones: forward, attention maps, feature maps, classifier reset,
    weight-decay exemptions, init of the learned tokens, and the checkpoint-converter hook.

    Class attributes a family sets:
      classifier_keys: state-dict prefixes of the classifier (``zoo.pretrained`` drops them on
        a class-count change).
      num_prefix_tokens: P, the tokens ahead of the patches in forward_features' output (set by
        each family, as a class or instance attribute; the defaults below read it).
      stem_modules: the modules that turn the image into tokens (frozen by ``freeze_blocks``).
      token_params: the learned tokens and position tables. Each trainable one present (not
        None) is initialised truncated-normal(std 0.02), in this order, by init_weights; all of
        them are exempt from weight decay (no_weight_decay).
      checkpoint_converter: the name of the module-level function (in the family's module)
        ``fn(state_dict, model) -> state_dict`` that maps foreign checkpoint keys to the model's.
    """
    classifier_keys: tuple[str, ...] = ('head',)
    token_params: tuple[str, ...] = ('pos_embed', 'cls_token')
    stem_modules: tuple[str, ...] = ('patch_embed',)
    checkpoint_converter: str | None = 'checkpoint_filter_fn'

    # -- parameters ------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """token_params truncated-normal(0.02), then the DeiT rule for every Linear / LayerNorm
        (:func:`zoo.layers.init_weights_trunc_normal`)."""
        for name in self.token_params:
            param = getattr(self, name, None)
            if param is not None and param.requires_grad:
                nn.init.trunc_normal_(param, std=0.02)
        self.apply(init_weights_trunc_normal)

    def no_weight_decay(self) -> set[str]:
        """Parameter names an optimiser should not decay."""
        return set(self.token_params)

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier (and distillation head, where there is one)."""
        self.num_classes = num_classes
        self.head = classifier_head(self.embed_dim, num_classes)
        if getattr(self, 'head_dist', None) is not None:
            self.head_dist = classifier_head(self.embed_dim, num_classes)

    @staticmethod
    def checkpoint_filter_fn(state_dict: dict, model: 'TokenBackbone') -> dict:
        """Foreign checkpoint -> ``model``'s keys, through the converter its family names in
        ``checkpoint_converter`` (found in the module of the nearest class defining one); the
        state dict as it is where there is none."""
        if model.checkpoint_converter is None:
            return state_dict
        for cls in type(model).__mro__:
            convert = getattr(sys.modules[cls.__module__], model.checkpoint_converter, None)
            if convert is not None:
                return convert(state_dict, model)
        return state_dict

    # -- forward ---------------------------------------------------------------------------------
    @property
    def prefix_tokens(self) -> list[torch.Tensor]:
        """The (1, 1, D) tokens put ahead of the patches by embed."""
        return [self.cls_token]

    @property
    def patch_stride(self) -> int:
        """The stride of the patch tokens (of the last feature map)."""
        return self.feature_info[-1]['stride']

    def embed(self, x: torch.Tensor, padding: Padding | None = None
              ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> tokens with position added (B, P + h*w, D), and the grid (h, w); the
        learned position table is resampled bicubically to the input's grid, or to each image's
        real grid in a padded batch (``padding``)."""
        x, grid = self.patch_embed(x) if padding is None else self.patch_embed(x, padding)
        pos = position_table(self.pos_embed, grid, self.patch_embed.grid_size,
                             self.num_prefix_tokens, padding, self.patch_stride)
        return self.pos_drop(prepend_tokens(x, *self.prefix_tokens) + pos), grid

    def run_blocks(self, x: torch.Tensor, grid: tuple[int, int], return_attention: bool = False,
                   valid: torch.Tensor | None = None):
        """Tokens (B, P + h*w, D) through the blocks -> the tokens and the list of attention maps
        (empty unless asked for). ``valid`` (B, P + h*w): False at padded tokens."""
        return apply_blocks(self.blocks, x, return_attention, **block_kwargs(grid, valid))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, P + h*w, D)."""
        x, grid = self.embed(x)
        return self.norm(self.run_blocks(x, grid)[0])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, P + N, D) -> logits (B, num_classes) from the class token (row 0). No
        dropout before the head in any family: the official models have none."""
        x = x[:, 0]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor):
        """(B, C, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def embed_patches(self, x: torch.Tensor, padding: Padding | None = None
                      ) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C, H, W) -> the patch tokens alone (B, h*w, D), position added, and the grid:
        detection mode. As ViTDet does, the class / distillation tokens are dropped (their
        position rows with them): a detector reads the patches, and window attention has no
        place for a token outside the grid."""
        x, grid = self.embed(x) if padding is None else self.embed(x, padding)
        return x[:, x.shape[1] - grid[0] * grid[1]:], grid

    def forward_feature_maps(self, x: torch.Tensor, mask: torch.Tensor | None = None
                             ) -> list[torch.Tensor]:
        """(B, C, H, W) -> [(B, D, h, w)]: the normalised patch tokens laid out as a map (one
        map, at the stride of the patch embedding), in detection mode (no class tokens; window
        attention where :meth:`set_window_attention` asked for it).

        ``mask`` (B, H, W), True on padding: a padded batch of images of several sizes. Each
        image's map on its real region is then the one it gets alone (padded tokens are no keys,
        positions follow the image's own grid); the map is zero on the padding."""
        padding = Padding.from_mask(mask)
        if padding is None:
            x, grid = self.embed_patches(x)
            return [tokens_to_map(self.norm(self.run_blocks(x, grid)[0]), grid)]
        x, grid = self.embed_patches(zero_padded_pixels(x, mask), padding)
        valid = padding.token_mask(self.patch_stride, grid)
        x = self.norm(self.run_blocks(x, grid, valid=valid)[0])
        return [padding.zero(tokens_to_map(x, grid), self.patch_stride)]

    # -- detection-resolution switches -----------------------------------------------------------
    @property
    def window_blocks(self) -> list[Block]:
        """The self-attention blocks over the patch grid, in order: those window attention and
        its global blocks count."""
        return [b for b in self.blocks if isinstance(b, Block)]

    def set_window_attention(self, window_size: int = 14, global_blocks=4, rel_pos: bool = False,
                             rel_pos_size: int = 64) -> None:
        """Window attention in the patch blocks (ViTDet, Li et al. 2022) for
        :meth:`forward_feature_maps`: ``window_size`` x ``window_size`` token windows, except
        the ``global_blocks`` (a count, spread evenly with the last block included, or a list
        of block indices) that keep global attention. ``window_size=0`` turns windows off.
        ``rel_pos`` adds ViTDet's decomposed relative position bias to every block, zero at
        first (:mod:`zoo.layers.rel_pos`): window blocks cover the window's offsets, global
        blocks ``rel_pos_size`` tokens (ViTDet's 1024 px canvas at stride 16 by default).
        Classification (forward / forward_features, class token present) must run without."""
        blocks = self.window_blocks
        if isinstance(global_blocks, int):
            global_blocks = global_block_indices(len(blocks), global_blocks)
        bad = [i for i in global_blocks if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise ValueError(f'global_blocks {list(global_blocks)} name blocks outside 0..{len(blocks) - 1}')
        keep_global = {i % len(blocks) for i in global_blocks}
        for i, block in enumerate(blocks):
            block.window_size = 0 if i in keep_global else int(window_size)
            block.attn.set_rel_pos((block.window_size or rel_pos_size) if rel_pos else None)

    def stem_and_blocks(self, num_blocks: int) -> list[nn.Module]:
        """The modules that run before block ``num_blocks``: the stem and the first blocks (a
        family with more in that span, PEGs or staged embeddings, adds them)."""
        return [getattr(self, n) for n in self.stem_modules] + self.window_blocks[:num_blocks]

    def freeze_blocks(self, num_blocks: int) -> list[nn.Module]:
        """Freeze :meth:`stem_and_blocks` and the position table and prefix tokens, as DETR
        freezes ResNet-50's stem and first stage: they get no gradient, so backward stops above
        them and keeps none of their activations. Returns the frozen modules (a detector keeps
        them in eval mode: no batch-norm statistics change, no dropout)."""
        depth = len(self.window_blocks)
        if not 0 <= num_blocks <= depth:
            raise ValueError(f'frozen_blocks must be between 0 and the depth {depth}, got {num_blocks}')
        if num_blocks == 0:
            return []
        frozen = self.stem_and_blocks(num_blocks)
        for module in frozen:
            module.requires_grad_(False)
        for name in self.token_params:
            param = getattr(self, name, None)
            if param is not None:
                param.requires_grad_(False)
        return frozen

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch: in training, every transformer block recomputes its activations in
        backward instead of keeping them (same gradients, less memory, about a third more
        compute). Batch-norm running statistics inside a block (re-attention, LeFF, CvT's
        projections) are updated again by the recomputation."""
        for module in self.modules():
            if isinstance(module, Block):
                module.grad_checkpointing = enable

    @torch.no_grad()
    def get_attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, heads, P + N, P + N) map per block (explicit path)."""
        x, grid = self.embed(x)
        return self.run_blocks(x, grid, return_attention=True)[1]


# -- checkpoint converters -------------------------------------------------------------------------
def rename_keys(state_dict: dict, renames) -> dict:
    """A new state dict whose keys have every ``(old, new)`` of ``renames`` applied in order:
    ``key.replace(old, new)`` for a string ``old``, ``old.sub(new, key)`` for a compiled pattern
    (``new`` may then be a function of the match)."""
    out = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = old.sub(new, key) if isinstance(old, re.Pattern) else key.replace(old, new)
        out[key] = value
    return out


def resample_pos_embed_in(state_dict: dict, model: nn.Module, grid: tuple[int, int],
                          num_prefix_tokens: int, key: str = 'pos_embed', **kwargs) -> dict:
    """``state_dict`` with its position table ``key`` (1, P + h*w, D) resampled to ``grid``
    (the model's own) where its shape differs from the model's (a checkpoint trained at
    another resolution); ``kwargs`` go to :func:`zoo.layers.resample_pos_embed`."""
    pos = state_dict.get(key)
    if pos is not None and pos.shape != getattr(model, key).shape:
        state_dict = {**state_dict,
                      key: resample_pos_embed(pos, grid, num_prefix_tokens=num_prefix_tokens,
                                              **kwargs)}
    return state_dict


# -- registered variants ---------------------------------------------------------------------------
def build(cls: type, overrides: dict, **arch) -> nn.Module:
    """``cls`` with the variant's architecture ``arch``, the caller's ``overrides`` (depth,
    img_size, num_classes, ...) on top. The model keeps ``arch`` as ``variant_arch``: the values
    of the settings a caller leaves out (``zoo.pretrained.check_classifier_settings``)."""
    model = cls(**{**arch, **overrides})
    model.variant_arch = dict(arch)
    return model
