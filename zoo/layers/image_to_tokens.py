"""Image-to-Tokens stem of CeiT (Yuan et al., 2021): low-level features from a small conv stem,
then patches of that feature map as tokens."""
import torch
from einops import rearrange
from torch import nn

from .helpers import check_image, to_2tuple


class ImageToTokens(nn.Module):
    """(B, C, H, W) -> tokens (B, H/16 * W/16, D) and the grid (H/16, W/16).

    conv 7x7 stride 2 (no bias) -> BatchNorm -> max-pool 3 stride 2 (no activation, as in the
    official code), then a ``patch_size`` x ``patch_size`` stride-``patch_size`` conv on the
    quarter-resolution map. Overall stride: 4 * patch_size (16 for CeiT).
    """

    def __init__(self, img_size=224, in_chans: int = 3, embed_dim: int = 768,
                 stem_chans: int = 64, patch_size: int = 4):
        super().__init__()
        self.in_chans = in_chans
        self.stride = 4 * patch_size
        img_size = to_2tuple(img_size)
        self.grid_size = (img_size[0] // self.stride, img_size[1] // self.stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv = nn.Conv2d(in_chans, stem_chans, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(stem_chans)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.proj = nn.Conv2d(stem_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_image(x, self.in_chans, self.stride)
        # PyTorch's CPU max-pool is vectorised over channels only in the channels-last layout
        # (docs/benchmarks.md, "Where the CPU speed comes from"). The stem conv
        # writes that layout when it reads it (the input is small; the values are the same, on
        # oneDNN); the patch conv reads the default layout, as before (channels-last, oneDNN
        # sums it in another order).
        x = self.bn(self.conv(x.contiguous(memory_format=torch.channels_last)))
        x = self.proj(self.pool(x).contiguous())
        grid = (x.shape[-2], x.shape[-1])
        return rearrange(x, 'b d h w -> b (h w) d'), grid
