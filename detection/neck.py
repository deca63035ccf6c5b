"""Multi-scale necks for Deformable DETR: from any backbone's maps to L levels of hidden_dim
channels (strides 8, 16, 32, 64 by default)."""
import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers.padding import zero_outside


def real_cells(mask: torch.Tensor, size) -> torch.Tensor:
    """Padding mask (B, H, W), True on padding -> (B, 1, h, w) float, 1 at real cells (nearest,
    as the detectors downsample it)."""
    return (~F.interpolate(mask[:, None].float(), size=size).bool()).float()


def masked_group_norm(x: torch.Tensor, norm: nn.GroupNorm, real: torch.Tensor) -> torch.Tensor:
    """GroupNorm of x (B, C, h, w) with statistics over the real cells (``real`` (B, 1, h, w))
    only, so a padded image is normalised as it would be alone; zero on the padding."""
    b, c = x.shape[:2]
    g = norm.num_groups
    xg = x.reshape(b, g, c // g, -1)
    w = real.reshape(b, 1, 1, -1).to(x.dtype)
    count = w.sum(-1, keepdim=True) * (c // g)
    mean = (xg * w).sum((-2, -1), keepdim=True) / count
    var = ((xg - mean).square() * w).sum((-2, -1), keepdim=True) / count
    y = ((xg - mean) * torch.rsqrt(var + norm.eps)).reshape_as(x)
    if norm.affine:
        y = y * norm.weight[:, None, None] + norm.bias[:, None, None]
    return zero_outside(y, real)


def project(proj: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """An input projection (conv + GroupNorm, or ViTDet's convs) of x (B, C, h, w); with the
    padding ``mask`` (B, H, W) its input is zeroed on the padding and its norm counts the real
    cells only."""
    if isinstance(proj, ViTDetLevelProjection):
        return proj(x, None if mask is None else real_cells(mask, x.shape[-2:]))
    if mask is None:
        return proj(x)
    conv, norm = proj
    y = conv(zero_outside(x, real_cells(mask, x.shape[-2:])))
    return masked_group_norm(y, norm, real_cells(mask, y.shape[-2:]))


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple pyramid for single-scale backbones (plain ViTs, stride s = 16):
    one map (N, C, H/s, W/s) -> [(N, C/2, H/(s/2), ...), (N, C, H/s, ...), (N, C, H/(2s), ...)]:
    a 2x2 transposed convolution up, identity, a 2x2 max-pool down. The input projections that
    follow supply each level's 1x1 conv and norm."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2)
        self.down = nn.MaxPool2d(kernel_size=2, stride=2)
        self.feature_info = [dict(channels=channels // 2, stride=stride // 2),
                             dict(channels=channels, stride=stride),
                             dict(channels=channels, stride=stride * 2)]

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        (x,) = maps
        return [self.up(x), x, self.down(x)]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a map (N, C, H, W), at each position (ViTDet's norm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ViTDetLevelProjection(nn.Module):
    """ViTDet's per-level convolutions of the simple feature pyramid (Li et al., ECCV 2022,
    Sec. 3 and Fig. 2; detectron2's SimpleFeaturePyramid): 1x1 conv + LayerNorm, then 3x3 conv
    + LayerNorm, both convs without bias. (N, C, h, w) -> (N, out_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.lateral = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.lateral_norm = LayerNorm2d(out_channels, eps=1e-6)
        self.output = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.output_norm = LayerNorm2d(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """``real`` (N, 1, h, w), 1 at an image's real cells: the 3x3 conv reads zeros on its
        padding (the norms are per position, so they need no mask)."""
        x = zero_outside(self.lateral_norm(self.lateral(x)), real)
        return zero_outside(self.output_norm(self.output(x)), real)


def _proj(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.GroupNorm(32, out_channels))


class MultiScaleNeck(nn.Module):
    """Backbone maps -> ``num_levels`` maps of ``hidden_dim`` channels.

    Each backbone map goes through a 1x1 conv + GroupNorm(32); the missing coarser levels come
    from 3x3 stride-2 conv + GroupNorm, the first from the last backbone map, the next from the
    previous extra level (as the official code). A single map (plain ViTs) is first expanded by a
    simple feature pyramid to strides s/2, s, 2s; with ``vitdet_convs`` its levels then take
    ViTDet's 1x1 + LayerNorm, 3x3 + LayerNorm (:class:`ViTDetLevelProjection`) in place of the
    1x1 conv + GroupNorm.

    forward(maps: list of (N, C_i, H_i, W_i), mask) -> list of (N, hidden_dim, H_l, W_l);
    ``strides`` lists each level's stride. With the padding ``mask`` (N, H, W) each image's
    levels are those it gets alone: convolutions read zeros on the padding and the norms count
    real cells only (the pyramid's transposed convolution and pooling do not overlap cells).
    """

    def __init__(self, feature_info: list[dict], hidden_dim: int = 256, num_levels: int = 4,
                 simple_pyramid: bool | None = None, vitdet_convs: bool = False):
        super().__init__()
        if simple_pyramid is None:
            simple_pyramid = len(feature_info) == 1 and num_levels > 1
        self.pyramid = None
        if simple_pyramid:
            self.pyramid = SimpleFeaturePyramid(feature_info[-1]['channels'], feature_info[-1]['stride'])
            feature_info = self.pyramid.feature_info
        if len(feature_info) > num_levels:
            raise ValueError(f'the backbone{" pyramid" if simple_pyramid else ""} gives '
                             f'{len(feature_info)} maps but num_feature_levels is {num_levels}: '
                             f'select fewer with backbone out_indices, or use more levels')
        channels = [f['channels'] for f in feature_info]
        num_extra = num_levels - len(channels)
        extra_in = (channels[-1:] + [hidden_dim] * (num_extra - 1))[:num_extra]
        level_proj = ViTDetLevelProjection if vitdet_convs and simple_pyramid else _proj
        self.input_proj = nn.ModuleList(
            [level_proj(c, hidden_dim) for c in channels]
            + [_proj(c, hidden_dim, kernel_size=3, stride=2) for c in extra_in])
        self.num_inputs = len(channels)
        self.strides = ([f['stride'] for f in feature_info]
                        + [feature_info[-1]['stride'] * 2 ** (i + 1) for i in range(len(extra_in))])

    def forward(self, maps: list[torch.Tensor], mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        if mask is not None and not bool(mask.any()):
            mask = None
        if self.pyramid is not None:
            maps = self.pyramid(maps)
        levels = [project(proj, x, mask) for proj, x in zip(self.input_proj, maps)]
        source = maps[-1]  # the first extra level reads the raw last map, the next the previous level
        for proj in self.input_proj[self.num_inputs:]:
            levels.append(project(proj, source, mask))
            source = levels[-1]
        return levels
