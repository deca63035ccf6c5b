"""Convolutional token embedding (CvT): an overlapping strided convolution, then LayerNorm."""
import torch
from einops import rearrange
from torch import nn


class ConvEmbed(nn.Module):
    """(B, C, H, W) -> tokens (B, h*w, D) and the grid (h, w).

    A k x k convolution with stride s and padding p, so h = (H + 2p - k) // s + 1; the kernels
    overlap (k > s), unlike ViT's patch embedding. CvT's stages use (7, 4, 2) on the image and
    (3, 2, 1) between stages: sides that are multiples of s give exactly H / s.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 64, kernel_size: int = 7,
                 stride: int = 4, padding: int = 2, norm_layer=nn.LayerNorm):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride, padding)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(rearrange(x, 'b d h w -> b (h w) d')), grid
