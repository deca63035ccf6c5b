"""Write a detection set of real photographs with Fashion-MNIST items placed on them, as a COCO folder.

    python tools/dev/make_photo_scenes.py data/photo_scenes --backgrounds DIR_OF_PHOTOS
    python tools/train.py configs/demo/detr_t2t_shapes.py --data data/photo_scenes --img-size 128

The transfer study in docs/small_data.md uses it: a set unlike the built-in shapes, with real
photographic backgrounds and objects that are real (if small) product photos.

* Backgrounds: random crops of the photos in ``--backgrounds`` (any JPEG / PNG; the study used
  scikit-image's bundled sample photographs, which are public domain or CC0). Train and val crop
  the same photos at different places.
* Objects: Fashion-MNIST items (10 classes; train items for the train split, test items for val),
  enlarged to 0.2-0.45 of the short side, tinted, and blended in by their own intensity, so the
  photo shows through around them. Boxes are the items' visible extent.
* Images have mixed sizes and aspect ratios (128 x 128, 96 x 128, 128 x 96, 112 x 144), 1-4 objects
  each, overlapping at most IoU 0.2.
"""
import argparse
import glob
import json
import os
import random
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402,F401

from classification.data import FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, find_idx, read_idx  # noqa: E402

SIZES = ((128, 128), (96, 128), (128, 96), (112, 144))  # (height, width)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _background(rng: random.Random, photo: Image.Image, height: int, width: int) -> Image.Image:
    """A random crop of ``photo`` with the target's aspect ratio, 30-100% of its largest such crop."""
    scale = rng.uniform(0.3, 1.0)
    crop_w = min(photo.width, photo.height * width / height) * scale
    crop_h = crop_w * height / width
    x0, y0 = rng.uniform(0, photo.width - crop_w), rng.uniform(0, photo.height - crop_h)
    return photo.resize((width, height), Image.BICUBIC, box=(x0, y0, x0 + crop_w, y0 + crop_h))


def _scene(rng: random.Random, photos, items: np.ndarray, labels: np.ndarray):
    height, width = rng.choice(SIZES)
    canvas = np.asarray(_background(rng, rng.choice(photos), height, width), dtype=np.float32)
    boxes, anns = [], []
    for _ in range(rng.randint(1, 4)):
        for _attempt in range(20):
            side = int(round(rng.uniform(0.2, 0.45) * min(height, width)))
            x0, y0 = rng.randint(0, width - side), rng.randint(0, height - side)
            index = rng.randrange(len(items))
            alpha = np.asarray(Image.fromarray(items[index]).resize((side, side), Image.BILINEAR),
                               dtype=np.float32) / 255.0
            ys, xs = np.nonzero(alpha > 0.1)
            if len(xs) == 0:
                continue
            box = [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
            if all(_iou(box, other) <= 0.2 for other in boxes):
                break
        else:
            continue
        # the item's own intensity as opacity (it was photographed on black), in a random tint
        tint = np.array([rng.uniform(0.4, 1.0) for _ in range(3)], dtype=np.float32) * 255.0
        opacity = np.clip(alpha * 1.5, 0.0, 1.0)[..., None]
        region = canvas[y0:y0 + side, x0:x0 + side]
        canvas[y0:y0 + side, x0:x0 + side] = region * (1 - opacity) + tint * alpha[..., None] * opacity
        boxes.append(box)
        w, h = box[2] - box[0], box[3] - box[1]
        anns.append(dict(category_id=int(labels[index]) + 1, bbox=[float(box[0]), float(box[1]), float(w), float(h)],
                         area=float(w * h), iscrowd=0))
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8)), anns


def make_photo_scenes(root: str, backgrounds: str, fashion_root: str = FASHION_MNIST_ROOT, num_train: int = 512,
                      num_val: int = 128, seed: int = 0) -> str:
    paths = sorted(p for ext in ('jpg', 'jpeg', 'png') for p in glob.glob(os.path.join(backgrounds, f'*.{ext}')))
    if not paths:
        raise SystemExit(f'no JPEG or PNG photos in {backgrounds}: point --backgrounds at a folder of photographs')
    photos = [Image.open(p).convert('RGB') for p in paths]
    rng = random.Random(seed)
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(FASHION_MNIST_CLASSES)]
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count, prefix in (('train', num_train, 'train'), ('val', num_val, 't10k')):
        images_path, labels_path = (find_idx(fashion_root, f'{prefix}-{kind}-idx{d}-ubyte')
                                    for kind, d in (('images', 3), ('labels', 1)))
        if images_path is None or labels_path is None:
            raise SystemExit(f'Fashion-MNIST idx files not found under {fashion_root}: '
                             'apt-get install dataset-fashion-mnist, or pass --fashion-root')
        items, labels = read_idx(images_path), read_idx(labels_path)
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, anns = _scene(rng, photos, items, labels)
            name = f'{i:06d}.jpg'
            img.save(os.path.join(root, split, name), quality=92)
            images.append(dict(id=i, file_name=name, width=img.width, height=img.height))
            for a in anns:
                annotations.append(dict(a, id=len(annotations), image_id=i))
        with open(os.path.join(root, 'annotations', f'instances_{split}.json'), 'w') as f:
            json.dump(dict(info=dict(description='Fashion-MNIST items on photographs (tools/dev/make_photo_scenes.py)',
                                     backgrounds=[os.path.basename(p) for p in paths], seed=seed),
                           images=images, annotations=annotations, categories=categories), f)
    return root


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('root')
    p.add_argument('--backgrounds', required=True, help='a folder of photographs (JPEG / PNG)')
    p.add_argument('--fashion-root', default=FASHION_MNIST_ROOT, help='the Fashion-MNIST idx files')
    p.add_argument('--num-train', type=int, default=512)
    p.add_argument('--num-val', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)
    root = make_photo_scenes(args.root, args.backgrounds, args.fashion_root, args.num_train, args.num_val, args.seed)
    print(f'{root}: train on it with --data {root}')


if __name__ == '__main__':
    main()
