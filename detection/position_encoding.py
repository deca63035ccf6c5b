"""2-D sine position encoding computed from the padding mask (DETR, Deformable DETR)."""
import math

import torch
from einops import rearrange
from torch import nn


class SinePositionEncoding(nn.Module):
    """mask (B, H, W), True on padding -> (B, 2 * num_feats, H, W): y features then x features.

    Positions are cumulative sums over valid pixels, so padding never shifts the encoding of
    the real image; normalised to [0, scale] by the valid extent. ``offset`` is -0.5 in
    Deformable DETR (pixel centres), 0 in DETR.
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0, normalize: bool = True,
                 scale: float = 2 * math.pi, offset: float = 0.0, eps: float = 1e-6):
        super().__init__()
        self.num_feats, self.temperature = num_feats, temperature
        self.normalize, self.scale, self.offset, self.eps = normalize, scale, offset, eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        valid = (~mask).float()
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        if self.normalize:
            y = (y + self.offset) / (y[:, -1:, :] + self.eps) * self.scale
            x = (x + self.offset) / (x[:, :, -1:] + self.eps) * self.scale
        dim_t = torch.arange(self.num_feats, dtype=torch.float32, device=mask.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_feats)
        px, py = x[..., None] / dim_t, y[..., None] / dim_t
        # Interleave sin on even and cos on odd channels, as the reference implementation does.
        px = rearrange(torch.stack([px[..., 0::2].sin(), px[..., 1::2].cos()], -1), 'b h w c two -> b h w (c two)')
        py = rearrange(torch.stack([py[..., 0::2].sin(), py[..., 1::2].cos()], -1), 'b h w c two -> b h w (c two)')
        return rearrange(torch.cat([py, px], dim=-1), 'b h w c -> b c h w')


def box_position_encoding(boxes: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of boxes: (N, Q, 4) in inverse-sigmoid space -> (N, Q, 4 * num_feats), each
    coordinate's sigmoid scaled to [0, 2 pi], sin on even and cos on odd frequencies interleaved."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
    pos = boxes.sigmoid().float()[..., None] * (2 * math.pi) / dim_t  # (N, Q, 4, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1)
    return rearrange(pos, 'n q c f two -> n q (c f two)').to(boxes.dtype)
