"""Position Encoding Generator (CPVT, Chu et al. 2021): position information from a convolution."""
import math

import torch
from einops import rearrange
from torch import nn

from .padding import valid_map, zero_outside


class PositionalEncodingGenerator(nn.Module):
    """x + depthwise_conv3x3(x) over the patch grid; prefix tokens (class token) pass unchanged.

    x: (B, P + h*w, D) with P prefix tokens then the patches row-major, grid (h, w) ->
    (B, P + h*w, D); P is what the grid leaves over (0 in detection mode, where the class token
    is dropped). The zero padding of the convolution is what lets the tokens learn where they
    are, so the encoding follows the input to any size, square or not, with nothing to resample.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, kernel_size, 1, kernel_size // 2, groups=dim, bias=True)
        # He init over the fan-out of a depthwise kernel, as the official PEG code (Twins) does.
        nn.init.normal_(self.proj.weight, std=math.sqrt(2.0 / (kernel_size * kernel_size)))
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, grid: tuple[int, int],
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``valid`` (B, P + h*w), False at an image's padding in a padded batch: the convolution
        reads zeros there, the zero border it would see with the image alone."""
        num_prefix = x.shape[1] - grid[0] * grid[1]
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        patch_map = rearrange(patches, 'b (h w) d -> b d h w', h=grid[0], w=grid[1])
        patch_map = patch_map + self.proj(zero_outside(patch_map, valid_map(valid, grid)))
        return torch.cat([prefix, rearrange(patch_map, 'b d h w -> b (h w) d')], dim=1)
