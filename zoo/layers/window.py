"""Non-overlapping window attention over a token grid (ViTDet, Li et al., ECCV 2022).

At detection resolution a stride-16 backbone sees thousands of tokens; global attention over all
of them costs N^2. ViTDet lets most blocks attend within w x w windows and keeps a few evenly
spaced blocks global, which is enough for the simple feature pyramid that follows.

The grid is padded at the bottom and right to whole windows. Padding tokens (of the windows and
of the image, in a padded batch) never act as keys (the attention masks them), so a real token's
output depends on the real tokens of its window only; padding queries are computed and dropped. A window is clipped to the grid, so a window
at least as large as the grid is one window over it: exactly global attention.
"""
import torch
import torch.nn.functional as F
from einops import rearrange


def window_shape(grid: tuple[int, int], window_size: int) -> tuple[int, int]:
    """The (wh, ww) window used on ``grid`` (h, w): ``window_size`` clipped to the grid."""
    return min(window_size, grid[0]), min(window_size, grid[1])


def window_partition(x: torch.Tensor, grid: tuple[int, int], window_size: int,
                     valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokens (B, h*w, D) on the row-major grid (h, w) -> windows (B * nh * nw, wh * ww, D),
    windows row-major per image, and the key mask (B * nh * nw, wh * ww), True at real tokens,
    or None where the windows tile the grid without padding and ``valid`` (B, h*w), the image
    padding's mask, is None. Windows start at the grid's top-left corner, so an image's windows
    are the same whatever grid its batch is padded to."""
    (h, w), (wh, ww) = grid, window_shape(grid, window_size)
    pad_h, pad_w = -h % wh, -w % ww
    x = rearrange(x, 'b (h w) d -> b h w d', h=h, w=w)
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    mask = None
    if pad_h or pad_w or valid is not None:
        real = (torch.ones(x.shape[0], h, w, dtype=torch.bool, device=x.device) if valid is None
                else rearrange(valid, 'b (h w) -> b h w', h=h, w=w))
        real = F.pad(real, (0, pad_w, 0, pad_h), value=False)
        mask = rearrange(real, 'b (nh wh) (nw ww) -> (b nh nw) (wh ww)', wh=wh, ww=ww)
    windows = rearrange(x, 'b (nh wh) (nw ww) d -> (b nh nw) (wh ww) d', wh=wh, ww=ww)
    return windows, mask


def window_merge(windows: torch.Tensor, grid: tuple[int, int], window_size: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows (B * nh * nw, wh * ww, D) -> tokens
    (B, h*w, D), padding dropped."""
    (h, w), (wh, ww) = grid, window_shape(grid, window_size)
    nh, nw = -(-h // wh), -(-w // ww)
    x = rearrange(windows, '(b nh nw) (wh ww) d -> b (nh wh) (nw ww) d', nh=nh, nw=nw, wh=wh, ww=ww)
    return rearrange(x[:, :h, :w], 'b h w d -> b (h w) d')


def global_block_indices(depth: int, num_global: int) -> tuple[int, ...]:
    """``num_global`` evenly spaced blocks of ``depth``, the last one included: ViTDet's choice
    (blocks 2, 5, 8, 11 of 12 for four)."""
    if not 0 <= num_global <= depth:
        raise ValueError(f'global_blocks must be between 0 and the depth {depth}, got {num_global}')
    return tuple((i + 1) * depth // num_global - 1 for i in range(num_global))
