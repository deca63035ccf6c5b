"""The DeiT training recipe (Touvron et al., 2021) on ``torchvision.transforms.v2``.

Per image (in the dataset): RandomResizedCrop, horizontal flip, RandAugment (timm's form, as
DeiT: :class:`TimmRandAugment`), normalisation, random erasing. Per batch (in the collate
function, :func:`classification_collate`): mixup or cutmix, then label smoothing of the mixed
one-hot targets.
"""
import math
import re

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TimmRandAugment:
    """timm's RandAugment as DeiT configures it (``rand-m9-mstd0.5-inc1``, timm 0.3.2's
    ``rand_augment_transform`` with DeiT's hparams), on ``torchvision.transforms.v2`` ops:
    uint8 image (C, H, W) -> uint8 image (C, H, W).

    ``num_ops`` ops drawn uniformly, with replacement, from :attr:`OPS` (timm's "increasing" set:
    a larger magnitude is always a stronger change); each is applied with probability ``prob``,
    at a magnitude drawn per application from N(magnitude, magnitude_std) clipped to
    [0, max_magnitude] (timm's scale of 10). Arguments at level m (``m / 10`` of the range, a
    random sign where marked +-): Rotate +-30 m/10 degrees; ShearX/Y +-0.3 m/10 (a shear factor,
    about the top-left corner as PIL); TranslateX/YRel +-``translate_pct`` m/10 of the side;
    Posterize keeps 4 - int(4 m/10) bits; Solarize inverts pixels >= 256 - int(256 m/10);
    SolarizeAdd adds int(110 m/10) to pixels < 128; Color, Contrast, Brightness, Sharpness blend
    by a factor 1 +- 0.9 m/10 (at least 0.1); AutoContrast, Equalize, Invert take none.
    Geometric ops fill with ``fill`` (DeiT: the normalisation mean in 0-255) and resample with
    ``interpolation`` (DeiT: bicubic; run on a PIL image, as torchvision's tensor kernels have no
    bicubic).
    """
    OPS = ('AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing',
           'SolarizeIncreasing', 'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing',
           'BrightnessIncreasing', 'SharpnessIncreasing', 'ShearX', 'ShearY', 'TranslateXRel',
           'TranslateYRel')
    _NO_ARG = ('AutoContrast', 'Equalize', 'Invert')

    def __init__(self, num_ops: int = 2, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 prob: float = 0.5, max_magnitude: float = 10.0, translate_pct: float = 0.45,
                 fill=(124, 116, 104), interpolation: str = 'bicubic'):
        if num_ops < 0 or not 0 <= prob <= 1 or magnitude_std < 0:
            raise ValueError(f'TimmRandAugment needs num_ops >= 0, prob in [0, 1] and '
                             f'magnitude_std >= 0; got {num_ops}, {prob}, {magnitude_std}')
        self.num_ops, self.magnitude, self.magnitude_std = num_ops, magnitude, magnitude_std
        self.prob, self.max_magnitude, self.translate_pct = prob, max_magnitude, translate_pct
        self.fill = [float(f) for f in fill]
        self.interpolation = v2.InterpolationMode(interpolation)

    @classmethod
    def from_string(cls, config: str, **kwargs) -> 'TimmRandAugment':
        """timm's config string, e.g. DeiT's ``'rand-m9-mstd0.5-inc1'``: m (magnitude), n
        (num_ops), mstd (magnitude_std), mmax (max_magnitude), p (prob); inc1 is required (only
        the increasing op set is implemented)."""
        parts = config.split('-')
        keys = dict(m='magnitude', n='num_ops', mstd='magnitude_std', mmax='max_magnitude',
                    p='prob')
        if parts[0] != 'rand' or 'inc1' not in parts[1:]:
            raise ValueError(f"expected timm's RandAugment string with the increasing op set, "
                             f"e.g. 'rand-m9-mstd0.5-inc1', got {config!r}")
        for part in parts[1:]:
            key, value = re.fullmatch(r'([a-z]+)(.*)', part).groups()
            if key == 'inc':
                continue
            if key not in keys or not value:
                raise ValueError(f'unknown or empty RandAugment option {part!r} in {config!r} '
                                 f'(known: {", ".join(keys)}, inc1)')
            kwargs[keys[key]] = int(value) if key == 'n' else float(value)
        return cls(**kwargs)

    def sample(self) -> list[tuple[str, float]]:
        """The ops one image gets: ``(name, magnitude)`` for each of the ``num_ops`` draws that
        is applied, in order (torch's global generator, seeded per DataLoader worker)."""
        chosen = torch.randint(len(self.OPS), (self.num_ops,)).tolist()
        applied = (torch.rand(self.num_ops) < self.prob).tolist()
        levels = (self.magnitude + self.magnitude_std * torch.randn(self.num_ops)).clamp(
            0.0, self.max_magnitude).tolist()
        return [(self.OPS[i], m) for i, on, m in zip(chosen, applied, levels) if on]

    def op_argument(self, name: str, magnitude: float) -> float | int | None:
        """timm's level -> argument mapping (see the class doc); draws the random sign."""
        frac = magnitude / 10.0
        sign = 1.0 if torch.rand(()) < 0.5 else -1.0
        if name in self._NO_ARG:
            return None
        if name == 'Rotate':
            return sign * 30.0 * frac
        if name in ('ShearX', 'ShearY'):
            return sign * 0.3 * frac
        if name in ('TranslateXRel', 'TranslateYRel'):
            return sign * self.translate_pct * frac
        if name == 'PosterizeIncreasing':
            return 4 - int(4 * frac)
        if name == 'SolarizeIncreasing':
            return 256 - min(256, int(256 * frac))
        if name == 'SolarizeAdd':
            return min(128, int(110 * frac))
        if name.endswith('Increasing'):  # the four enhancements
            return max(0.1, 1.0 + sign * 0.9 * frac)
        raise ValueError(f'unknown RandAugment op {name!r}; the ops are {", ".join(self.OPS)}')

    def apply(self, name: str, arg, image: torch.Tensor) -> torch.Tensor:
        """One op with its argument on a uint8 image (C, H, W)."""
        if name in ('Rotate', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel'):
            return self._geometric(name, arg, image)
        if name == 'AutoContrast':
            return TF.autocontrast(image)
        if name == 'Equalize':
            return TF.equalize(image)
        if name == 'Invert':
            return TF.invert(image)
        if name == 'PosterizeIncreasing':
            return TF.posterize(image, arg)
        if name == 'SolarizeIncreasing':
            return image if arg > 255 else TF.solarize(image, arg)
        if name == 'SolarizeAdd':
            added = (image.to(torch.int16) + arg).clamp(max=255).to(image.dtype)
            return torch.where(image < 128, added, image)
        enhance = dict(ColorIncreasing=TF.adjust_saturation,
                       ContrastIncreasing=TF.adjust_contrast,
                       BrightnessIncreasing=TF.adjust_brightness,
                       SharpnessIncreasing=TF.adjust_sharpness)
        return enhance[name](image, arg)

    def _geometric(self, name: str, arg: float, image: torch.Tensor) -> torch.Tensor:
        pil = TF.to_pil_image(image)
        fill = self.fill if image.shape[0] == 3 else self.fill[:1] * image.shape[0]
        common = dict(interpolation=self.interpolation, fill=fill)
        if name == 'Rotate':
            out = TF.rotate(pil, arg, **common)
        elif name in ('ShearX', 'ShearY'):
            degrees = math.degrees(math.atan(arg))
            shear = [degrees, 0.0] if name == 'ShearX' else [0.0, degrees]
            out = TF.affine(pil, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                            center=[0, 0], **common)
        else:
            width, height = pil.size
            move = [arg * width, 0] if name == 'TranslateXRel' else [0, arg * height]
            out = TF.affine(pil, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0],
                            **common)
        return TF.pil_to_tensor(out)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.ndim != 3:
            raise ValueError(f'TimmRandAugment takes a uint8 image (C, H, W) (before ToDtype and '
                             f'Normalize), got {image.dtype} {tuple(image.shape)}')
        out = image.as_subclass(torch.Tensor)
        for name, magnitude in self.sample():
            out = self.apply(name, self.op_argument(name, magnitude), out)
        # Some ops return plain tensors: keep the input's type for the v2 ops that follow.
        return tv_tensors.wrap(out, like=image) if isinstance(image, tv_tensors.Image) else out

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, '
                f'magnitude_std={self.magnitude_std}, prob={self.prob})')


def build_rand_augment(rand_augment, mean=IMAGENET_MEAN, interpolation: str = 'bicubic'):
    """The RandAugment of :func:`deit_train_transforms`: timm's string (``'rand-m9-mstd0.5-inc1'``,
    DeiT's) or a dict of :class:`TimmRandAugment`'s arguments, filling with ``mean`` in 0-255
    as DeiT; ``dict(impl='torchvision', num_ops=, magnitude=)`` for torchvision's RandAugment
    (magnitude of 31 bins, every op always applied, its own op set, bilinear)."""
    fill = tuple(min(255, round(255 * m)) for m in mean)
    if isinstance(rand_augment, str):
        return TimmRandAugment.from_string(rand_augment, fill=fill, interpolation=interpolation)
    kwargs = dict(rand_augment)
    impl = kwargs.pop('impl', 'timm')
    if impl == 'torchvision':
        return v2.RandAugment(**{'interpolation': v2.InterpolationMode.BILINEAR, **kwargs})
    if impl != 'timm':
        raise ValueError(f"rand_augment impl must be 'timm' or 'torchvision', got {impl!r}")
    return TimmRandAugment(**{'fill': fill, 'interpolation': interpolation, **kwargs})


def deit_train_transforms(img_size: int = 224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                          hflip: float = 0.5, rand_augment: dict | str | None = None,
                          re_prob: float = 0.25, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          interpolation: str = 'bicubic') -> v2.Compose:
    """uint8 image (C, H, W) -> float (C, img_size, img_size), normalised.

    DeiT's defaults: crop scale (0.08, 1), flip 0.5, timm's RandAugment
    (``rand_augment='rand-m9-mstd0.5-inc1'``, :func:`build_rand_augment`; None or ``{}`` leaves
    it out), random erasing 0.25 with per-pixel random values (timm's 'pixel' mode).
    """
    mode = v2.InterpolationMode(interpolation)
    ops = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio),
                                              interpolation=mode, antialias=True)]
    if hflip > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if rand_augment:
        # On uint8, before normalisation: its colour ops assume [0, 255] images.
        ops.append(build_rand_augment(rand_augment, mean, interpolation))
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
