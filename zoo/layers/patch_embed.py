"""Image to patch tokens."""
import torch
from einops import rearrange
from torch import nn

from .helpers import check_image, to_2tuple


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D) through a p x p stride-p convolution.

    The conv holds the same weights as a Linear over flattened ``(c p1 p2)`` patches, and it is
    the layout of every released checkpoint, so no permutation is needed to load them.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans: int = 3, embed_dim: int = 768,
                 bias: bool = True, norm_layer=None):
        super().__init__()
        self.img_size = to_2tuple(img_size)
        self.patch_size = to_2tuple(patch_size)
        self.in_chans = in_chans
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, self.patch_size, bias=bias)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor, padding=None) -> tuple[torch.Tensor, tuple[int, int]]:
        """Returns tokens (B, h*w, D) and the grid (h, w). ``padding`` (a padded batch's
        :class:`~zoo.layers.padding.Padding`) is accepted and unused: the patches do not
        overlap, so none mixes an image's padding into its real pixels."""
        check_image(x, self.in_chans, self.patch_size)
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(rearrange(x, 'b d h w -> b (h w) d')), grid
