"""The DeiT training recipe (Touvron et al., 2021) on ``torchvision.transforms.v2``.

Per image (in the dataset): RandomResizedCrop, horizontal flip, RandAugment, normalisation,
random erasing. Per batch (in the collate function, :func:`classification_collate`): mixup or
cutmix, then label smoothing of the mixed one-hot targets.
"""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def deit_train_transforms(img_size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                          hflip: float = 0.5, rand_augment: dict | None = None,
                          re_prob: float = 0.25, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          interpolation: str = 'bicubic') -> v2.Compose:
    """uint8 image (C, H, W) -> float (C, img_size, img_size), normalised.

    DeiT's defaults: crop scale (0.08, 1), flip 0.5, RandAugment 2 ops at magnitude 9
    (``rand_augment=dict(num_ops=2, magnitude=9)``; None or ``{}`` leaves it out), random
    erasing 0.25 with per-pixel random values (timm's 'pixel' mode).
    """
    mode = v2.InterpolationMode(interpolation)
    ops = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio),
                                              interpolation=mode, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if rand_augment:
        # On uint8, before normalisation: its colour ops assume [0, 255] images. Bilinear, as
        # its rotations and shears on tensors support no bicubic.
        ops.append(v2.RandAugment(**{'interpolation': v2.InterpolationMode.BILINEAR,
                                     **rand_augment}))
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if re_prob > 0:
        ops.append(v2.RandomErasing(p=re_prob, value='random'))
    ops.append(v2.ToPureTensor())
    return v2.Compose(ops)


def deit_test_transforms(img_size: int = 224, crop_pct: float = 0.875, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, interpolation: str = 'bicubic') -> v2.Compose:
    """uint8 image (C, H, W) -> float (C, img_size, img_size): resize the short side to
    img_size / crop_pct, centre crop, normalise (``crop_pct=1`` resizes straight to the size)."""
    mode = v2.InterpolationMode(interpolation)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(round(img_size / crop_pct)), interpolation=mode, antialias=True),
        v2.CenterCrop(img_size), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std),
        v2.ToPureTensor()])


class MixupCutmix:
    """A batch (images (B, C, H, W), labels (B,)) -> (mixed images, soft targets (B, K)).

    As timm's Mixup in DeiT: with probability ``prob`` the batch is mixed, by cutmix with
    probability ``switch_prob`` (when both are on) else by mixup; targets are the mixed one-hot
    labels, smoothed by ``label_smoothing`` (smoothing and mixing commute: both are linear).
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1):
        self.num_classes, self.prob, self.label_smoothing = num_classes, prob, label_smoothing
        mixes, weights = [], []
        if mixup_alpha > 0:
            mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
            weights.append(1 - switch_prob if cutmix_alpha > 0 else 1.0)
        if cutmix_alpha > 0:
            mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
            weights.append(switch_prob if mixup_alpha > 0 else 1.0)
        self.mix = v2.RandomChoice(mixes, p=weights) if mixes else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor):
        if self.mix is not None and torch.rand(()) < self.prob:
            images, targets = self.mix(tv_tensors.Image(images), labels)
            images = images.as_subclass(torch.Tensor)
        else:
            targets = torch.nn.functional.one_hot(labels, self.num_classes).float()
        eps = self.label_smoothing
        return images, targets * (1 - eps) + eps / self.num_classes


def classification_collate(batch, num_classes: int | None = None, mixup_alpha: float = 0.0,
                           cutmix_alpha: float = 0.0, prob: float = 1.0,
                           switch_prob: float = 0.5, label_smoothing: float = 0.0) -> dict:
    """``[(image (C, H, W), label, index)]`` -> ``dict(inputs=(B, C, H, W),
    data_samples=dict(labels=(B,), indices=(B,), targets=(B, K) or None))``.

    With ``num_classes`` the batch is mixed (mixup / cutmix, where an alpha is > 0) and
    ``targets`` are the smoothed soft targets the loss trains on; without, targets stay None
    (evaluation). Mixing on the batch, after the per-image transforms, as in DeiT.
    """
    images = torch.stack([item[0] for item in batch])
    labels = torch.as_tensor([item[1] for item in batch], dtype=torch.long)
    indices = torch.as_tensor([item[2] for item in batch], dtype=torch.long)
    targets = None
    if num_classes is not None:
        if labels.max() >= num_classes:
            raise ValueError(f'label {int(labels.max())} in a batch but the collate function has '
                             f'num_classes={num_classes}; set num_classes to the data\'s class '
                             f'count in the config')
        mix = MixupCutmix(num_classes, mixup_alpha, cutmix_alpha, prob, switch_prob,
                          label_smoothing)
        images, targets = mix(images, labels)
    return dict(inputs=images, data_samples=dict(labels=labels, indices=indices, targets=targets))
