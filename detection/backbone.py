"""Backbones for the detectors: any zoo model (through feature_info / forward_feature_maps) or
torchvision's ResNet-50 with frozen batch norm, DETR's classic baseline."""
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.ops import FrozenBatchNorm2d

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


def conv_frozen_norm(conv: nn.Conv2d, norm: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` as one convolution, x (B, C, H, W) -> (B, C', H', W'): the frozen norm's
    affine map (y * scale + shift) is applied to the convolution's weights and bias, which are small,
    instead of to its output, which is large (docs/benchmarks.md, "Against Hugging Face transformers
    (CPU)"). Computed at every call, so gradients reach the convolution's weights as through the two
    steps; the same function up to float rounding."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    shift = norm.bias - norm.running_mean * scale
    bias = shift if conv.bias is None else shift + conv.bias * scale
    return F.conv2d(x, conv.weight * scale.reshape(-1, 1, 1, 1), bias, conv.stride, conv.padding,
                    conv.dilation, conv.groups)


class FrozenNormBottleneck(Bottleneck):
    """torchvision's Bottleneck (same modules) with each frozen norm applied through the convolution
    before it (:func:`conv_frozen_norm`): (B, C, H, W) -> (B, 4 * planes, H / stride, W / stride)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(conv_frozen_norm(self.conv1, self.bn1, x))
        out = self.relu(conv_frozen_norm(self.conv2, self.bn2, out))
        out = conv_frozen_norm(self.conv3, self.bn3, out)
        identity = x if self.downsample is None else conv_frozen_norm(self.downsample[0], self.downsample[1], x)
        return self.relu(out + identity)


class FrozenNormResNet(ResNet):
    """torchvision's ResNet-50 with frozen batch norm (``torchvision.ops.FrozenBatchNorm2d``, as DETR
    has it), each norm applied through the convolution before it (:func:`conv_frozen_norm`). Same
    modules, parameters, buffers and state-dict keys as ``resnet50(norm_layer=FrozenBatchNorm2d)``,
    so torchvision's and DETR's checkpoints load unchanged; the same function up to float rounding.

    The norms are not folded into the weights once, at construction: the trained convolutions
    (layer2-4) would then learn in another parametrisation (their gradients scaled by the norm's),
    and a checkpoint loaded later brings norms of its own.

    forward(images) -> logits (B, 1000), as torchvision's; :meth:`forward_stages` -> the C2-C5
    maps. ``head=False``: no pooling and classifier (a backbone; no ``fc`` keys in its state dict).
    """

    def __init__(self, layers=(3, 4, 6, 3), head: bool = True):
        super().__init__(FrozenNormBottleneck, list(layers), norm_layer=FrozenBatchNorm2d)
        if not head:
            self.avgpool = self.fc = None

    def forward_stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) -> C2, C3, C4, C5: (B, 256 * 2^i, H / 2^(i + 2), W / 2^(i + 2)), i = 0..3."""
        x = self.maxpool(self.relu(conv_frozen_norm(self.conv1, self.bn1, images)))
        maps = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            maps.append(x)
        return maps

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is None:
            raise RuntimeError('this ResNet was built without its classifier (head=False): call forward_stages')
        return self.fc(torch.flatten(self.avgpool(self.forward_stages(x)[-1]), 1))


class ResNetBackbone(nn.Module):
    """torchvision ResNet-50, frozen batch norm, stem and layer1 frozen (as DETR trains it).
    forward(images) -> C3, C4, C5 maps (strides 8, 16, 32) selected by ``out_indices``."""

    def __init__(self, pretrained: bool = False, out_indices=(-1,)):
        super().__init__()
        self.body = FrozenNormResNet(head=False)
        if pretrained:
            state = ResNet50_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
            self.body.load_state_dict({k: v for k, v in state.items() if not k.startswith('fc.')})  # no classifier
        for name, p in self.body.named_parameters():
            if not name.startswith(('layer2', 'layer3', 'layer4')):
                p.requires_grad_(False)
        all_info = [dict(channels=512, stride=8), dict(channels=1024, stride=16),
                    dict(channels=2048, stride=32)]
        self.out_indices = [i % 3 for i in out_indices]
        self.feature_info = [all_info[i] for i in self.out_indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """No padding mask (not ``batch_invariant``): as in the official DETR, the convolutions
        carry some of the padding into an image's border."""
        maps = self.body.forward_stages(images)[1:]
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
