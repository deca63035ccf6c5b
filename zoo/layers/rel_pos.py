"""Decomposed relative position bias of ViTDet (Li et al., ECCV 2022, Sec. 4.1, after MViTv2, Li
et al., CVPR 2022, Eq. 4).

For a query at grid cell (i, j) and a key at (k, l) the attention logit gains
q . R_h[i - k] + q . R_w[j - l], with two learned tables R_h, R_w of shape (2S - 1, head_dim), one
row per offset -(S - 1) .. S - 1. The tables start at zero (ViTDet), so a backbone pretrained
without them begins as it was trained.

ViTDet resamples a table whose size differs from the grid at run time. Here offsets beyond the
table are clipped to its last row instead: the bias then depends on the offset alone, never on the
padded batch's grid, so an image gets the same bias in any batch (window tables cover every offset
of a window; global tables cover a fixed canvas, ViTDet's 1024 px = 64 tokens by default).
"""
import torch
import torch.nn.functional as F
from einops import rearrange


def offsets_table(table: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """table (2S - 1, d) -> (q_len, k_len, d): the row of offset clip(q - k, -(S-1), S-1) for each
    query and key position along one axis."""
    s = (table.shape[0] + 1) // 2
    q = torch.arange(q_len, device=table.device)[:, None]
    k = torch.arange(k_len, device=table.device)[None, :]
    return table[(q - k).clamp(-(s - 1), s - 1) + s - 1]


class RelPosBias:
    """The bias of one attention call, kept decomposed: rel_h (B, h, N, gh) and rel_w (B, h, N, gw)
    for N = gh * gw queries. :meth:`rows` builds (B, h, n, N) for a range of query rows, so a
    caller that attends a chunk of rows at a time never holds the whole N x N bias."""

    def __init__(self, q: torch.Tensor, table_h: torch.Tensor, table_w: torch.Tensor,
                 grid: tuple[int, int]):
        """q: (B, h, N, d) unscaled queries (as ViTDet uses them) on the row-major grid (gh, gw)."""
        gh, gw = grid
        rq = rearrange(q, 'b n (y x) d -> b n y x d', y=gh, x=gw)
        rh = offsets_table(table_h.to(q.dtype), gh, gh)
        rw = offsets_table(table_w.to(q.dtype), gw, gw)
        self.grid = grid
        self.rel_h = rearrange(torch.einsum('bnyxd,ykd->bnyxk', rq, rh), 'b n y x k -> b n (y x) k')
        self.rel_w = rearrange(torch.einsum('bnyxd,xkd->bnyxk', rq, rw), 'b n y x k -> b n (y x) k')

    def rows(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(B, h, stop - start, N): bias[q, (k_h, k_w)] = rel_h[q, k_h] + rel_w[q, k_w]."""
        rel_h, rel_w = self.rel_h[:, :, start:stop], self.rel_w[:, :, start:stop]
        return rearrange(rel_h[..., :, None] + rel_w[..., None, :], 'b n q y x -> b n q (y x)')


def resize_rel_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """A (2S' - 1, d) table of a checkpoint -> (length, d), linearly resampled over the offsets
    (ViTDet's rule for a checkpoint trained at another size)."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(rearrange(table.float(), 'l d -> 1 d l'), size=length, mode='linear')
    return rearrange(resized, '1 d l -> l d').to(table.dtype)
