"""Position embeddings: resampling of learned tables to any grid, and fixed sinusoid tables."""
import math

import torch
import torch.nn.functional as F
from einops import rearrange

from ..onnx import register_onnx_symbolics


def resample_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int],
                       old_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 1,
                       interpolation: str = 'bicubic', antialias: bool = True) -> torch.Tensor:
    """Interpolate a position table laid out as prefix rows then a row-major grid.

    pos_embed: (1, P + h*w, D) -> (1, P + H*W, D) for new_grid (H, W); the P prefix rows (class,
    distillation tokens) are kept as they are. ``old_grid`` defaults to a square grid.
    Computed in float32 so half-precision tables are not degraded.
    """
    prefix, grid_rows = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    if old_grid is None:
        side = math.isqrt(grid_rows.shape[1])
        if side * side != grid_rows.shape[1]:
            raise ValueError(f'cannot infer a square grid from {grid_rows.shape[1]} positions; '
                             f'pass old_grid')
        old_grid = (side, side)
    if not torch.jit.is_tracing():
        new_grid = tuple(int(s) for s in new_grid)
        if tuple(old_grid) == new_grid:
            return pos_embed
    else:
        register_onnx_symbolics()  # the traced graph resamples with an op the ONNX exporter lacks
    # when tracing (ONNX export) the grid is a pair of traced sizes and is always resampled, so the
    # graph fits every input size (resampling to the same grid is the identity)
    grid_map = rearrange(grid_rows.float(), '1 (h w) d -> 1 d h w', h=old_grid[0], w=old_grid[1])
    grid_map = F.interpolate(grid_map, size=new_grid, mode=interpolation, antialias=antialias,
                             align_corners=False if interpolation in ('bilinear', 'bicubic') else None)
    grid_rows = rearrange(grid_map, '1 d h w -> 1 (h w) d').to(pos_embed.dtype)
    return torch.cat([prefix, grid_rows], dim=1)


# Eager under torch.compile: the grids are data (read from the padding mask), and a compiled graph
# would take them as symbolic sizes, which the antialiased bicubic backward does not accept.
@torch.compiler.disable
def resample_pos_embed_per_image(pos_embed: torch.Tensor, grid: tuple[int, int],
                                 real_grids: torch.Tensor, old_grid: tuple[int, int] | None = None,
                                 num_prefix_tokens: int = 1) -> torch.Tensor:
    """Each image's table on its own real grid, for a padded batch.

    pos_embed (1, P + h0*w0, D), the batch grid (h, w), real_grids (B, 2) (each image's
    (h_i, w_i) <= (h, w)) -> (B, P + h*w, D): image i gets the table resampled to (h_i, w_i) at
    the top-left of the grid and zeros on its padding, so its positions are those it would get
    alone, whatever it is batched with. One resampling per distinct real grid."""
    b = real_grids.shape[0]
    out = pos_embed.new_zeros(b, num_prefix_tokens + grid[0] * grid[1], pos_embed.shape[-1])
    out[:, :num_prefix_tokens] = pos_embed[:, :num_prefix_tokens]
    patches = rearrange(out[:, num_prefix_tokens:], 'b (h w) d -> b h w d', h=grid[0], w=grid[1])
    for gh, gw in torch.unique(real_grids, dim=0).tolist():
        table = resample_pos_embed(pos_embed, (gh, gw), old_grid, num_prefix_tokens)
        rows = ((real_grids[:, 0] == gh) & (real_grids[:, 1] == gw)).nonzero()[:, 0].tolist()
        patches[rows, :gh, :gw] = rearrange(table[0, num_prefix_tokens:], '(h w) d -> h w d',
                                            h=gh, w=gw)
    return out


def sinusoid_pos_embed(num_positions: int, dim: int) -> torch.Tensor:
    """1-D sinusoid table of "Attention is all you need": (1, num_positions, dim).

    Row p: [sin(p / 10000^(2i/dim)), cos(p / 10000^(2i/dim))] interleaved over channels.
    """
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = position / torch.pow(10000.0, exponent)[None]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()[None]


def sincos_2d_pos_embed(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """2-D sin-cos table over an (H, W) grid: (1, H*W, dim), dim divisible by 4.

    The first half of the channels encodes the row, the second the column.
    """
    if dim % 4:
        raise ValueError(f'dim must be divisible by 4 for a 2-D sin-cos table, got {dim}')
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing='ij')
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    ys = rearrange(ys, 'h w -> (h w) 1') * omega
    xs = rearrange(xs, 'h w -> (h w) 1') * omega
    return torch.cat([ys.sin(), ys.cos(), xs.sin(), xs.cos()], dim=1)[None]
