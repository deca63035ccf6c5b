"""Classification data: ImageNet-style class folders (checked up front), Fashion-MNIST read from
its idx files into memory, and a generated stand-in when Fashion-MNIST is not installed.

Every dataset yields ``(image, label, index)``: the image as the transform leaves it (a uint8
``tv_tensors.Image`` (C, H, W) without one), the label an int in [0, num_classes), the index the
sample's position in the dataset (the metric counts each sample once in distributed runs).
"""
import gzip
import logging
import os
import os.path as osp
import struct

import numpy as np
import torch
from mmengine.logging import print_log
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
FASHION_MNIST_ROOT = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
_IGNORED = ('.', '_')  # hidden files and folders (.DS_Store, .ipynb_checkpoints, __MACOSX)


def check_num_classes(found: int, expected: int | None, where: str) -> None:
    """The config's class count must be the data's: a wrong one trains a head whose extra outputs
    never see a label, or fails on the first label past it."""
    if expected is not None and found != expected:
        raise ValueError(
            f'the config says num_classes={expected} but {where} has {found} classes. Set '
            f'num_classes={found} in the config (or --cfg-options num_classes={found} '
            f'model.num_classes={found}), or point the dataset at the data the config was '
            f'written for.')


class ClassificationDataset(Dataset):
    """Base: ``transform`` maps a uint8 ``tv_tensors.Image`` (C, H, W) to the model's input;
    ``metainfo`` carries the class names for the metric."""

    def __init__(self, classes, transform=None):
        self.classes = list(classes)
        self.transform = transform
        self.metainfo = dict(classes=self.classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> tuple[torch.Tensor, int]:
        """-> (uint8 image (C, H, W), label); each subclass reads its own storage."""
        raise NotImplementedError(f'{type(self).__name__} must define load(index)')

    def __getitem__(self, index: int):
        image, label = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, label, index


class ImageFolderDataset(ClassificationDataset):
    """``root/<class name>/<image>``, one folder per class, labels in sorted folder order (as
    torchvision's ImageFolder), so train/ and val/ agree on them.

    The folder is checked when the dataset is built, so a bad layout fails before training
    starts: a missing root, no class folders, an empty class folder, a file that is not an image
    (by extension), files lying next to the class folders, and a class count other than
    ``num_classes``. Unreadable (corrupt) images are named when they are read. Images are
    converted to RGB (``channels=3``) or grayscale (``channels=1``).
    """

    def __init__(self, root: str, transform=None, num_classes: int | None = None,
                 channels: int = 3):
        if not osp.isdir(root):
            raise FileNotFoundError(
                f'image folder {root!r} does not exist. Expected an ImageNet-style layout: '
                f'{root}/<class name>/<image>.jpg, one sub-folder per class (the same class '
                f'folders under train/ and val/; a symlink works: ln -s /path/to/imagenet '
                f'data/imagenet), or run on the built-in data: python tools/train.py '
                f'configs/classification/deit_tiny_fashion_mnist.py')
        entries = sorted(e for e in os.listdir(root) if not e.startswith(_IGNORED))
        classes = [e for e in entries if osp.isdir(osp.join(root, e))]
        stray = [e for e in entries if e not in classes]
        if not classes:
            raise ValueError(f'{root!r} has no class sub-folders. Put each class\'s images in '
                             f'its own folder: {root}/<class name>/<image>.jpg')
        if stray:
            raise ValueError(f'{root!r} holds files next to its class folders ({_some(stray)}); '
                             f'move them into a class folder or out of {root!r}.')
        samples, empty, not_images = [], [], []
        for label, name in enumerate(classes):
            files = sorted(f for f in os.listdir(osp.join(root, name))
                           if not f.startswith(_IGNORED))
            images = [f for f in files if f.lower().endswith(IMG_EXTENSIONS)]
            not_images += [osp.join(name, f) for f in files if f not in images]
            if not images:
                empty.append(name)
            samples += [(osp.join(root, name, f), label) for f in images]
        if empty:
            raise ValueError(
                f'{len(empty)} class folder(s) of {root!r} hold no images: {_some(empty)}. Add '
                f'images to them, or remove the folder(s) (and lower num_classes to match).')
        if not_images:
            raise ValueError(
                f'{len(not_images)} file(s) in {root!r} are not images (extensions '
                f'{", ".join(IMG_EXTENSIONS)}): {_some(not_images)}. Remove them or move them out '
                f'of the class folders.')
        check_num_classes(len(classes), num_classes, f'{root!r} ({len(classes)} class folders)')
        super().__init__(classes, transform)
        self.root, self.samples, self.channels = root, samples, channels

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int):
        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert('RGB' if self.channels == 3 else 'L')
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise RuntimeError(f'cannot read image {path} (sample {index}, class '
                               f'{self.classes[label]!r}): {e}. The file is corrupt or not an '
                               f'image: replace or delete it.') from e
        return tv_tensors.Image(torch.from_numpy(np.array(img)).reshape(
            img.height, img.width, -1).permute(2, 0, 1)), label


def _some(names, limit=5) -> str:
    more = f' ... and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(map(str, names[:limit])) + more


# -- in-memory arrays: Fashion-MNIST and its generated stand-in -----------------------------------

class ArrayDataset(ClassificationDataset):
    """Images held in memory: uint8 (N, H, W) (grayscale, repeated to ``channels``) or
    (N, C, H, W), with int labels (N,). ``subset`` keeps the first n (a short-budget run)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes, transform=None,
                 channels: int = 3, subset: int | None = None):
        if images.dtype != torch.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
            raise ValueError(f'expected uint8 images (N, H, W) or (N, C, H, W) and N labels, got '
                             f'{tuple(images.shape)} {images.dtype} and {len(labels)} labels')
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f'labels must lie in [0, {len(classes)}), got '
                             f'[{int(labels.min())}, {int(labels.max())}]')
        super().__init__(classes, transform)
        if subset is not None:
            images, labels = images[:subset], labels[:subset]
        self.images = images if images.ndim == 4 else images[:, None]
        self.labels = labels.long()
        self.channels = channels

    def __len__(self) -> int:
        return len(self.labels)

    def load(self, index: int):
        image = self.images[index]
        if image.shape[0] != self.channels:
            # Grayscale to RGB as PIL's convert does, so any 3-channel model (a torchvision
            # teacher, a pretrained zoo model) takes the images unchanged.
            image = image.expand(self.channels, -1, -1)
        return tv_tensors.Image(image), int(self.labels[index])


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'), 0x0C: np.dtype('>i4'),
               0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8')}


def read_idx(path: str) -> np.ndarray:
    """An idx file (MNIST's format; gzipped when the name ends in .gz) -> its array.

    Layout: two zero bytes, a dtype code, the number of dimensions, each dimension as a
    big-endian uint32, then the data in row-major order.
    """
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b'\0\0' or data[2] not in _IDX_DTYPES:
        raise ValueError(f'{path} is not an idx file (magic bytes {data[:4]!r})')
    ndim = data[3]
    shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise ValueError(f'{path}: header says shape {shape} ({expected} bytes) but holds '
                         f'{len(body)} bytes; the file is truncated or corrupt')
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder('='))


def find_idx(root: str, stem: str) -> str | None:
    """``root/stem`` or ``root/stem.gz``, whichever exists."""
    for name in (stem, stem + '.gz'):
        if osp.isfile(osp.join(root, name)):
            return osp.join(root, name)
    return None


def generate_fallback(split: str, num_samples: int, num_classes: int = 10, size: int = 28,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable stand-in for Fashion-MNIST: uint8 (N, size, size) images and labels (N,).

    Class c is a grating at its own orientation (c / num_classes of a half turn) and its own
    period (5 to 8 px); samples vary in phase (position), contrast and noise. ``seed`` and
    ``split`` choose the samples; the classes are the same in every split.
    """
    g = torch.Generator().manual_seed(seed + (1 if split == 'train' else 2) * 1000003)
    labels = torch.randint(num_classes, (num_samples,), generator=g)
    angle = torch.pi * labels.float() / num_classes
    period = 5.0 + 3.0 * ((labels * 7) % num_classes).float() / max(num_classes - 1, 1)
    phase = 2 * torch.pi * torch.rand(num_samples, generator=g)
    contrast = 0.5 + 0.5 * torch.rand(num_samples, generator=g)
    y, x = torch.meshgrid(torch.arange(size, dtype=torch.float32),
                          torch.arange(size, dtype=torch.float32), indexing='ij')
    along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]
    wave = torch.sin(2 * torch.pi * along / period[:, None, None] + phase[:, None, None])
    images = 0.5 + 0.4 * contrast[:, None, None] * wave
    images = images + 0.1 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


class FashionMNIST(ArrayDataset):
    """Fashion-MNIST (60,000 train / 10,000 test images of 28 x 28, 10 classes), read into memory
    from the idx files under ``root`` (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``
    puts them in /usr/share/datasets/fashion-mnist; the files of the official release, gzipped
    or not, work from any folder).

    Where the files are absent, ``fallback`` (kwargs of :func:`generate_fallback`, e.g.
    ``dict(num_samples=2000)``) builds a generated stand-in instead, with a warning in the log,
    so the configs run on any machine; ``fallback=None`` makes the absence an error.
    """

    def __init__(self, root: str = FASHION_MNIST_ROOT, split: str = 'train', transform=None,
                 channels: int = 3, subset: int | None = None, num_classes: int | None = None,
                 fallback: dict | None = None):
        if split not in ('train', 'test'):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        prefix = 'train' if split == 'train' else 't10k'
        images_path = find_idx(root, f'{prefix}-images-idx3-ubyte')
        labels_path = find_idx(root, f'{prefix}-labels-idx1-ubyte')
        check_num_classes(len(FASHION_MNIST_CLASSES), num_classes, 'Fashion-MNIST')
        if images_path and labels_path:
            images = torch.from_numpy(read_idx(images_path).copy())
            labels = torch.from_numpy(read_idx(labels_path).astype(np.int64))
            self.source = root
        elif fallback is not None:
            fallback = {'num_samples': 6000 if split == 'train' else 1000, **fallback}
            images, labels = generate_fallback(split, num_classes=len(FASHION_MNIST_CLASSES),
                                               **fallback)
            self.source = 'generated'
            print_log(f'Fashion-MNIST not found under {root} ({prefix}-images-idx3-ubyte[.gz], '
                      f'{prefix}-labels-idx1-ubyte[.gz]): training on a GENERATED stand-in '
                      f'({len(labels)} {split} images of gratings), not Fashion-MNIST. '
                      f'For the real data: sudo apt-get install dataset-fashion-mnist, or set '
                      f'the dataset root to a folder holding the idx files.',
                      logger='current', level=logging.WARNING)
        else:
            raise FileNotFoundError(
                f'Fashion-MNIST idx files not found under {root}: install them with '
                f'`sudo apt-get install dataset-fashion-mnist`, point root at a folder holding '
                f'{prefix}-images-idx3-ubyte[.gz] and {prefix}-labels-idx1-ubyte[.gz], or set '
                f'fallback=dict() to train on generated data.')
        super().__init__(images, labels, FASHION_MNIST_CLASSES, transform, channels, subset)
