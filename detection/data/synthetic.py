"""A small detection set the project generates itself, so the main job runs with no download.

Shapes (square, disc, triangle), each class in its own colour family with random shade and size,
on cluttered dark backgrounds, written as PNG files plus COCO-format json, the layout of COCO:

    root/train/*.png  root/val/*.png  root/annotations/instances_{train,val}.json

Category ids are deliberately non-contiguous (1, 3, 5) so the label <-> category-id mapping is
exercised as it is on COCO (ids up to 90 for 80 classes).
"""
import json
import os
import random

from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = [dict(id=1, name='square'), dict(id=3, name='disc'), dict(id=5, name='triangle')]
GENERATOR_VERSION = 2  # bump when the drawing changes, so sets on disk are regenerated
# The dominant channel of each class's colour: shape and colour both tell the class, so a detector
# trained from scratch on a CPU learns the task in minutes (the demo's time budget).
DOMINANT_CHANNEL = {'square': 0, 'disc': 1, 'triangle': 2}


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box, color) -> None:
    x0, y0, x1, y1 = box
    if kind == 'square':
        draw.rectangle(box, fill=color)
    elif kind == 'disc':
        draw.ellipse(box, fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def _image(rng: random.Random, size: int, max_objects: int, object_scale=(1 / 8, 1 / 3)):
    bg = tuple(rng.randint(0, 120) for _ in range(3))
    img = Image.new('RGB', (size, size), bg)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):  # background clutter: thin lines, not objects
        xy = [rng.randint(0, size) for _ in range(4)]
        draw.line(xy, fill=tuple(rng.randint(0, 160) for _ in range(3)), width=rng.randint(1, 2))
    anns, placed = [], []
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(20):
            side = rng.randint(round(size * object_scale[0]), round(size * object_scale[1]))
            x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x0, y0, x0 + side, y0 + side)
            # Little overlap keeps every object visible enough to be findable.
            if all(box[2] <= p[0] or box[0] >= p[2] or box[3] <= p[1] or box[1] >= p[3] for p in placed):
                break
        else:
            continue
        cat = rng.choice(CATEGORIES)
        color = [rng.randint(40, 130) for _ in range(3)]
        color[DOMINANT_CHANNEL[cat['name']]] = rng.randint(190, 255)
        color = tuple(color)
        _draw_shape(draw, cat['name'], box, color)
        placed.append(box)
        anns.append(dict(category_id=cat['id'], bbox=[float(box[0]), float(box[1]), float(side), float(side)],
                         area=float(side * side), iscrowd=0))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    return img, anns


# The harder variant: eight classes told apart by shape alone (colours are random), up to six
# objects that may overlap, from 0.1 of the image side, on textured backgrounds.
HARD_CATEGORIES = [dict(id=i + 1, name=n) for i, n in enumerate(
    ['square', 'disc', 'triangle', 'diamond', 'cross', 'ring', 'hexagon', 'bar'])]


def _draw_hard_shape(draw: ImageDraw.ImageDraw, kind: str, box, color, background) -> None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if kind in ('square', 'disc', 'triangle'):
        _draw_shape(draw, kind, box, color)
    elif kind == 'diamond':
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    elif kind == 'cross':
        draw.rectangle((x0, cy - h / 6, x1, cy + h / 6), fill=color)
        draw.rectangle((cx - w / 6, y0, cx + w / 6, y1), fill=color)
    elif kind == 'ring':
        draw.ellipse(box, fill=color)
        draw.ellipse((x0 + w / 4, y0 + h / 4, x1 - w / 4, y1 - h / 4), fill=background)
    elif kind == 'hexagon':
        draw.polygon([(x0 + w / 4, y0), (x1 - w / 4, y0), (x1, cy), (x1 - w / 4, y1), (x0 + w / 4, y1), (x0, cy)],
                     fill=color)
    else:  # bar: the box is drawn wider than tall, so its aspect ratio tells it
        draw.rectangle(box, fill=color)


def _hard_image(rng: random.Random, size: int, max_objects: int, object_scale=(0.1, 0.4)):
    base = tuple(rng.randint(20, 140) for _ in range(3))
    img = Image.new('RGB', (size, size), base)
    draw = ImageDraw.Draw(img)
    step = rng.choice([4, 6, 8])  # texture: a random check or stripe pattern
    alt = tuple(min(255, c + rng.randint(15, 50)) for c in base)
    for y in range(0, size, step):
        for x in range(0, size, step):
            if ((x // step + y // step) % 2 if rng.random() < 0.5 else (x // step) % 2):
                draw.rectangle((x, y, x + step - 1, y + step - 1), fill=alt)
    for _ in range(rng.randint(6, 14)):  # clutter: strokes, not any class's shape
        xy = [rng.randint(0, size) for _ in range(4)]
        draw.line(xy, fill=tuple(rng.randint(0, 255) for _ in range(3)), width=rng.randint(1, 3))
    anns = []
    for _ in range(rng.randint(1, max_objects)):
        cat = rng.choice(HARD_CATEGORIES)
        side = rng.randint(round(size * object_scale[0]), round(size * object_scale[1]))
        w, h = (side, max(3, side // 3)) if cat['name'] == 'bar' else (side, side)
        x0, y0 = rng.randint(0, size - w), rng.randint(0, size - h)
        color = tuple(rng.randint(0, 255) for _ in range(3))
        if sum(abs(a - b) for a, b in zip(color, base)) < 150:  # keep each object visible on the texture
            color = tuple(255 - c for c in color)
        _draw_hard_shape(draw, cat['name'], (x0, y0, x0 + w, y0 + h), color, alt)
        anns.append(dict(category_id=cat['id'], bbox=[float(x0), float(y0), float(w), float(h)],
                         area=float(w * h), iscrowd=0))
    return img.filter(ImageFilter.GaussianBlur(0.5)), anns


def make_shapes_dataset(root: str, num_train: int = 512, num_val: int = 128, size: int = 128,
                        max_objects: int = 4, seed: int = 0, object_scale=(1 / 8, 1 / 3),
                        variant: str = 'basic') -> str:
    """Write the set under ``root`` unless it is already complete; returns ``root``.
    Each image holds 1 to ``max_objects`` shapes whose side is ``object_scale`` (min, max) times
    the image side. ``variant='hard'``: 8 classes by shape alone, objects that may overlap,
    textured backgrounds (``HARD_CATEGORIES``)."""
    if variant not in ('basic', 'hard'):
        raise ValueError(f"variant must be 'basic' or 'hard', got {variant!r}")
    params = dict(num_train=num_train, num_val=num_val, size=size, max_objects=max_objects, seed=seed,
                  object_scale=[float(s) for s in object_scale], version=GENERATOR_VERSION)
    if variant == 'hard':
        params['variant'] = variant
    done = os.path.join(root, 'annotations', 'instances_val.json')
    if os.path.isfile(done):
        with open(done) as f:
            if json.load(f).get('info', {}).get('generated_with') == params:
                return root
        # Written with other settings (or an older generator): write it again rather than
        # silently training on a set the config does not describe.
        os.remove(done)
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    for split, count in (('train', num_train), ('val', num_val)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img, anns = (_hard_image if variant == 'hard' else _image)(rng, size, max_objects, object_scale)
            name = f'{i:06d}.png'
            img.save(os.path.join(root, split, name))
            images.append(dict(id=i, file_name=name, width=size, height=size))
            for a in anns:
                annotations.append(dict(a, id=len(annotations), image_id=i))
        tmp = os.path.join(root, 'annotations', f'instances_{split}.json.tmp')
        with open(tmp, 'w') as f:
            json.dump(dict(info=dict(description='vitzoo generated shapes', generated_with=params),
                           images=images, annotations=annotations,
                           categories=HARD_CATEGORIES if variant == 'hard' else CATEGORIES), f)
        # val is written last and atomically: its presence marks a complete set.
        os.replace(tmp, tmp[:-4])
    return root
