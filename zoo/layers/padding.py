"""Images of different sizes in one padded batch.

A detector pads a batch to its largest image (bottom and right). A token backbone must then give
each image the features it would give it alone: padded tokens are never keys of an attention,
are zeroed wherever a convolution would mix them into real ones, and each image's position table
is resampled to its own grid, not to the batch's. :class:`Padding` carries each image's real
extent and derives the mask at any stride from it, so the masks of every stage depend on the
image alone, never on its batch-mates.

A token at stride s, row i, is real when i < ceil(H_img / s): it covers at least one real pixel
(the top-left pixel of its cell is real), the rule DETR's nearest-neighbour mask downsampling
applies.
"""
import torch
from einops import rearrange


class Padding:
    """Each image's real extent in a padded batch: ``sizes`` (B, 2) int64 as (H_i, W_i) pixels."""

    def __init__(self, sizes: torch.Tensor):
        self.sizes = sizes

    @classmethod
    def from_mask(cls, mask: torch.Tensor | None) -> 'Padding | None':
        """mask (B, H, W), True on padding (bottom / right, as collate_detection pads) -> the
        extents, or None when no image is padded (the unmasked path then runs unchanged)."""
        if mask is None or torch.jit.is_tracing() or not bool(mask.any()):
            return None
        real = ~mask
        return cls(torch.stack([real.any(2).sum(1), real.any(1).sum(1)], 1))

    def grids(self, stride: int) -> torch.Tensor:
        """(B, 2): each image's real grid (ceil(H_i / s), ceil(W_i / s)) at stride ``stride``."""
        return torch.div(self.sizes + stride - 1, stride, rounding_mode='floor')

    def map_mask(self, stride: int, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h, w) bool, True at real cells of the (h, w) grid at stride ``stride``."""
        real = self.grids(stride)
        rows = torch.arange(grid[0], device=real.device)[None, :, None] < real[:, 0, None, None]
        cols = torch.arange(grid[1], device=real.device)[None, None, :] < real[:, 1, None, None]
        return rows & cols

    def token_mask(self, stride: int, grid: tuple[int, int]) -> torch.Tensor:
        """(B, h*w) bool, True at real tokens of the row-major (h, w) grid."""
        return rearrange(self.map_mask(stride, grid), 'b h w -> b (h w)')

    def zero(self, fmap: torch.Tensor, stride: int) -> torch.Tensor:
        """A map (B, C, h, w) at ``stride`` with its padded cells set to zero."""
        return zero_outside(fmap, self.map_mask(stride, fmap.shape[-2:])[:, None])


def zero_outside(fmap: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    """A map (B, C, h, w) with zeros where ``real`` (B, 1, h, w) is False (None: unchanged)."""
    return fmap if real is None else fmap * real.to(fmap.dtype)


def valid_map(valid: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor | None:
    """A token mask (B, P + h*w) -> its patches' part laid out on the grid, (B, 1, h, w); None
    stays None. The P prefix (class) tokens have no place on the grid."""
    if valid is None:
        return None
    return rearrange(valid[:, valid.shape[1] - grid[0] * grid[1]:], 'b (h w) -> b 1 h w', h=grid[0], w=grid[1])


def zero_padded_tokens(x: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Tokens (B, N, D) with the padded ones (``valid`` (B, N) False) set to zero: what a
    convolution over the token map would read past an image's border if it were alone."""
    return x if valid is None else x * valid[..., None].to(x.dtype)


def prepend_valid(valid: torch.Tensor | None, num_prefix_tokens: int) -> torch.Tensor | None:
    """The (B, N) mask of the patches -> (B, P + N): prefix (class) tokens are always real."""
    if valid is None or num_prefix_tokens == 0:
        return valid
    return torch.cat([valid.new_ones(valid.shape[0], num_prefix_tokens), valid], 1)
