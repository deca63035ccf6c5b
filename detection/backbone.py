"""Backbones for the detectors: any zoo model (through feature_info / forward_feature_maps) or
torchvision's ResNet-50 with frozen batch norm, DETR's classic baseline."""
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.misc import FrozenBatchNorm2d

import zoo


class ZooBackbone(nn.Module):
    """A zoo classifier used for its feature maps.

    forward(images (B, 3, H, W)) -> the maps of ``out_indices`` (B, C_i, H/s_i, W/s_i);
    ``feature_info`` lists their channels and strides. H and W must be multiples of the
    largest stride (the collate function pads batches to that).

    ``window_size`` (and ``global_blocks``) switch on ViTDet's window attention in a token
    family (:meth:`zoo.models._base.TokenBackbone.set_window_attention`); ``grad_checkpointing``
    recomputes each block's activations in backward. Both change nothing in the weights.
    ``frozen_blocks`` N freezes the stem and the first N blocks (no gradient, eval mode), as
    DETR freezes ResNet-50's stem and first stage. ``rel_pos`` adds ViTDet's decomposed
    relative position bias (zero-initialised, so pretrained weights start as they were).
    """

    batch_invariant = True  # an image's maps do not depend on its batch-mates (given the mask)

    def __init__(self, name: str, pretrained=False, out_indices=(-1,), window_size: int = 0,
                 global_blocks=4, grad_checkpointing: bool = False, frozen_blocks: int = 0,
                 rel_pos: bool = False, rel_pos_size: int = 64, **overrides):
        super().__init__()
        self.body = zoo.create_model(name, pretrained=pretrained, num_classes=0, **overrides)
        if window_size or rel_pos:
            self.body.set_window_attention(window_size, global_blocks, rel_pos, rel_pos_size)
        if grad_checkpointing:
            self.body.set_grad_checkpointing(True)
        self.frozen = self.body.freeze_blocks(frozen_blocks) if frozen_blocks else []
        n = len(self.body.feature_info)
        self.out_indices = [i % n for i in out_indices]
        self.feature_info = [self.body.feature_info[i] for i in self.out_indices]

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen:  # frozen: no batch-norm statistics change, no dropout
            module.eval()
        return self

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``mask`` (B, H, W), True on padding: each image's maps are then those it gets alone,
        whatever it is batched with (zero on the padding)."""
        maps = self.body.forward_feature_maps(images, mask)
        return [maps[i] for i in self.out_indices]


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen batch norm whose affine map the convolution before it applies
    (:class:`ConvFoldingFrozenBN`); its buffers stay, under their names, for checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ConvFoldingFrozenBN(nn.Conv2d):
    """conv then frozen batch norm as one convolution: weight x scale, bias = shift, computed on
    the (small) weights at every call, so gradients reach the conv weights as before while the
    (large) activations skip the norm's multiply and add (a sixth of DETR-R50's CPU time)."""
    frozen_bn: FrozenBatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.frozen_bn
        scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
        shift = bn.bias - bn.running_mean * scale
        bias = shift if self.bias is None else shift + self.bias * scale
        return self._conv_forward(x, self.weight * scale.reshape(-1, 1, 1, 1), bias)


def fold_frozen_batch_norms(net: nn.Module) -> nn.Module:
    """Every (conv, frozen batch norm) pair of a torchvision ResNet computed as one convolution
    (same function, same parameters and state-dict keys)."""
    pairs = [(net.conv1, net.bn1)]
    for block in net.modules():
        if hasattr(block, 'conv3'):  # Bottleneck
            pairs += [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
            if block.downsample is not None:
                pairs.append((block.downsample[0], block.downsample[1]))
    for conv, bn in pairs:
        conv.__class__, bn.__class__ = ConvFoldingFrozenBN, FoldedFrozenBatchNorm2d
        object.__setattr__(conv, 'frozen_bn', bn)  # not a submodule: its buffers keep their keys
    return net


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50, frozen batch norm, stem and layer1 frozen (as DETR trains it).
    forward(images) -> C3, C4, C5 maps (strides 8, 16, 32) selected by ``out_indices``."""

    def __init__(self, pretrained: bool = False, out_indices=(-1,)):
        super().__init__()
        weights = 'IMAGENET1K_V1' if pretrained else None
        net = fold_frozen_batch_norms(resnet50(weights=weights, norm_layer=FrozenBatchNorm2d))
        for name, p in net.named_parameters():
            if not name.startswith(('layer2', 'layer3', 'layer4')):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, {'layer2': '0', 'layer3': '1', 'layer4': '2'})
        all_info = [dict(channels=512, stride=8), dict(channels=1024, stride=16),
                    dict(channels=2048, stride=32)]
        self.out_indices = [i % 3 for i in out_indices]
        self.feature_info = [all_info[i] for i in self.out_indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """No padding mask (not ``batch_invariant``): as in the official DETR, the convolutions
        carry some of the padding into an image's border."""
        maps = list(self.body(images).values())
        return [maps[i] for i in self.out_indices]


def backbone_arguments(name: str) -> set[str] | None:
    """Every keyword a detector's ``backbone`` dict may hold for the backbone ``name``:
    build_backbone's, ZooBackbone's and the zoo family constructor's (read from a shape-only build
    on the meta device, through the classes it inherits ``**kwargs`` from). None where they
    cannot be told (an unknown name: create_model names it when the model is built)."""
    if name == 'resnet50':
        return {'name', 'pretrained', 'out_indices'}
    try:
        with torch.device('meta'):
            family = type(zoo.create_model(name, pretrained=False, num_classes=0))
    except Exception:  # noqa: BLE001  (any failure here is reported when the model is built)
        return None
    names = {'name'}
    for fn in (ZooBackbone, *[c for c in family.__mro__ if '__init__' in vars(c)]):
        params = inspect.signature(fn).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {'self'}
        if fn is not ZooBackbone and not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def build_backbone(name: str, pretrained=False, out_indices=(-1,), **overrides) -> nn.Module:
    if name == 'resnet50':
        if overrides:
            raise ValueError(f'resnet50 takes no {sorted(overrides)} (window attention and the other '
                             'options are for zoo backbones): remove them from the backbone config')
        return ResNetBackbone(pretrained=bool(pretrained), out_indices=out_indices)
    return ZooBackbone(name, pretrained=pretrained, out_indices=out_indices, **overrides)


def backbone_maps(backbone: nn.Module, images: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's maps for a padded batch: a batch-invariant backbone (a zoo one) is handed
    the padding mask; any other module (ResNet-50, a user's) is called on the images alone."""
    if getattr(backbone, 'batch_invariant', False):
        return backbone(images, mask)
    return backbone(images)


def downsample_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """Padding mask (B, H, W) -> (B, h, w), nearest."""
    return F.interpolate(mask[:, None].float(), size=size).bool()[:, 0]
