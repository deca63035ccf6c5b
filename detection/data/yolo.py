"""A YOLO (ultralytics) folder as COCO-format dicts (``--data DIR``, see ``detection.data.formats``).

    DIR/data.yaml            train: images/train, val: images/val (optional), names: [...] or {0: ..., }
    DIR/images/train/x.jpg   DIR/labels/train/x.txt    one line per object: class cx cy w h

As ultralytics reads it: ``path`` (optional) is the folder the split entries are relative to,
else the yaml's own folder; an entry is a folder (searched recursively for images), a .txt file
listing image paths, or a list of them. An image's labels are at the same path with the last
``images`` folder replaced by ``labels`` and the extension by ``.txt``; an image without a label
file has no objects. A label line is ``class x_center y_center width height`` with the class an
index into ``names`` and the numbers fractions of the image's width and height, or
``class x1 y1 x2 y2 ...`` (a polygon, whose bounding box is taken). Boxes are clipped to the
image. Category id i is class i, named ``names[i]``.

A split without ``val`` is split by ``formats.hold_out``. Every label file is read before
anything else happens: a class index out of range, a number outside [0, 1], a line of another
length or not numbers stops with the files and lines named and the fix.
"""
import os
import os.path as osp

import yaml

from .errors import DataError, MissingDataError
from .images import image_size

IMAGE_EXTENSIONS = ('.bmp', '.dng', '.jpeg', '.jpg', '.mpo', '.png', '.tif', '.tiff', '.webp')
YAML_NAMES = ('data.yaml', 'data.yml', 'dataset.yaml', 'dataset.yml')
LINE_FIX = ('each line of a YOLO label file is "class x_center y_center width height": class an index into names '
            '(0 to {last}), the four numbers fractions of the image width and height, in [0, 1]')
TOLERANCE = 1e-6  # rounding in label writers; such values are clipped


def find_yaml(root: str) -> str | None:
    """DIR's dataset yaml: data.yaml (or data.yml, dataset.yaml, ...), else the one *.yaml in DIR
    that has ``names``."""
    for name in YAML_NAMES:
        if osp.isfile(osp.join(root, name)):
            return osp.join(root, name)
    found = []
    for name in sorted(os.listdir(root)) if osp.isdir(root) else []:
        if name.endswith(('.yaml', '.yml')):
            try:
                with open(osp.join(root, name)) as f:
                    data = yaml.safe_load(f)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and 'names' in data and 'train' in data:
                found.append(osp.join(root, name))
    return found[0] if len(found) == 1 else None


def read_yaml(path: str) -> dict:
    """The yaml with ``names`` as a list (a {index: name} mapping with indices 0..N-1 too)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DataError(f'{path}: not valid YAML ({e})') from e
    if not isinstance(data, dict):
        raise DataError(f'{path}: expected a mapping with train, val and names (the ultralytics data.yaml)')
    names = data.get('names')
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = None
        if keys != list(range(len(names))):
            raise DataError(f'{path}: names has keys {list(names)}; write them as 0, 1, ... N-1 (the class indices '
                             f'of the label files) or as a list')
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f'{path}: no names list; add e.g. "names: [cat, dog]" (the class of index 0, 1, ...)')
    if data.get('nc') is not None and data['nc'] != len(names):
        raise DataError(f'{path}: nc is {data["nc"]} but names lists {len(names)} classes; make them agree')
    if not data.get('train'):
        raise DataError(f'{path}: no train entry; add e.g. "train: images/train" (a folder of images)')
    return dict(data, names=[str(n) for n in names])


def _resolve(entry: str, bases: list[str], yaml_path: str, key: str) -> str:
    entry = osp.expanduser(str(entry))
    if osp.isabs(entry) and osp.exists(entry):
        return entry
    tried = []
    for base in bases:
        for candidate in (entry, entry.lstrip('./') if entry.startswith('../') else None):
            if candidate is not None:
                path = osp.normpath(osp.join(base, candidate))
                tried.append(path)
                if osp.exists(path):
                    return path
    raise MissingDataError(f'{yaml_path}: {key}: {entry} not found (looked for {", ".join(dict.fromkeys(tried))}); '
                            f'write the image folder of the {key} split relative to the yaml\'s folder')


def list_images(entries, bases: list[str], yaml_path: str, key: str) -> tuple[list[str], str]:
    """The image files of one split entry (a folder, a .txt list, or a list of them), sorted,
    and the folder their COCO file names are relative to."""
    entries = entries if isinstance(entries, list) else [entries]
    images, folders = [], []
    for entry in entries:
        path = _resolve(entry, bases, yaml_path, key)
        if osp.isdir(path):
            folders.append(path)
            images += [osp.join(d, n) for d, _, files in os.walk(path) for n in files
                       if n.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            with open(path) as f:
                lines = [line.strip() for line in f if line.strip()]
            images += [line if osp.isabs(line) else osp.normpath(osp.join(osp.dirname(path), line)) for line in lines]
    images = sorted(dict.fromkeys(images))
    if not images:
        raise DataError(f'{yaml_path}: {key}: no images in {entries} (looked for {", ".join(IMAGE_EXTENSIONS)})')
    base = folders[0] if len(entries) == 1 and folders else bases[0]
    return images, base


def label_path(image: str) -> str:
    """ultralytics' rule: the last /images/ of the path -> /labels/, the extension -> .txt."""
    sa, sb = f'{os.sep}images{os.sep}', f'{os.sep}labels{os.sep}'
    return osp.splitext(sb.join(image.rsplit(sa, 1)))[0] + '.txt'


def _box(values: list[float], w: int, h: int) -> list[float]:
    """Normalised cx cy w h, or a polygon x1 y1 x2 y2 ..., -> COCO [x, y, w, h] in pixels, clipped."""
    if len(values) == 4:
        cx, cy, bw, bh = values
        x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
    else:
        xs, ys = values[0::2], values[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    x0, x1 = (min(max(v, 0.0), 1.0) * w for v in (x0, x1))
    y0, y1 = (min(max(v, 0.0), 1.0) * h for v in (y0, y1))
    return [x0, y0, x1 - x0, y1 - y0]


def read_labels(path: str, num_classes: int) -> tuple[list[tuple[int, list[float]]], list[str]]:
    """(class, normalised values) per line of one label file, and the problems found, each
    naming the file and line."""
    objects, problems = [], []
    with open(path) as f:
        for n, line in enumerate(f, start=1):
            tokens = line.split()
            if not tokens:
                continue
            where = f'{path}:{n}'
            try:
                numbers = [float(t) for t in tokens]
            except ValueError:
                problems.append(f'{where}: "{line.strip()}" is not numbers')
                continue
            if len(numbers) != 5 and (len(numbers) < 7 or len(numbers) % 2 == 0):
                problems.append(f'{where}: {len(numbers)} values; expected 5 (class cx cy w h) or a class and '
                                f'3 or more x y points')
                continue
            cls, values = numbers[0], numbers[1:]
            if cls != int(cls) or not 0 <= cls < num_classes:
                problems.append(f'{where}: class index {tokens[0]} is out of range: names lists {num_classes} '
                                f'classes (0 to {num_classes - 1})')
                continue
            outside = [t for t, v in zip(tokens[1:], values) if not -TOLERANCE <= v <= 1 + TOLERANCE]
            if outside:
                problems.append(f'{where}: coordinates {", ".join(outside)} outside [0, 1] (pixels instead of '
                                f'fractions of the image size?)')
                continue
            objects.append((int(cls), values))
    return objects, problems


def read_yolo(yaml_path: str, split_images: dict[str, list[str]], base: dict[str, str],
              names: list[str]) -> tuple[dict[str, dict], int]:
    """{split: image paths} -> ({split: COCO dict}, the number of images without a label file).
    Raises a ValueError listing every bad label line, FileNotFoundError / ValueError for
    unreadable images (their sizes are read from the headers)."""
    problems, unreadable, unlabelled, out = [], [], 0, {}
    for split, images in split_images.items():
        entries, annotations = [], []
        for image_id, image in enumerate(images, start=1):
            try:
                w, h = image_size(image)
            except (FileNotFoundError, ValueError) as e:
                unreadable.append(str(e))
                continue
            entries.append(dict(id=image_id, file_name=osp.relpath(image, base[split]), width=w, height=h))
            labels = label_path(image)
            if not osp.isfile(labels):
                unlabelled += 1
                continue
            objects, found = read_labels(labels, len(names))
            problems += found
            for cls, values in objects:
                bbox = _box(values, w, h)
                annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=cls, bbox=bbox,
                                        area=bbox[2] * bbox[3], iscrowd=0))
        out[split] = dict(images=entries, annotations=annotations,
                          categories=[dict(id=i, name=n) for i, n in enumerate(names)])
    if unreadable:
        raise DataError(f'{yaml_path}: {len(unreadable)} image(s) cannot be read: ' + '; '.join(unreadable[:5]))
    if problems:
        raise DataError(f'{yaml_path}: {len(problems)} bad label line(s):\n'
                         + '\n'.join(f'  - {p}' for p in problems[:20])
                         + (f'\n  ... ({len(problems) - 20} more)' if len(problems) > 20 else '')
                         + '\n' + LINE_FIX.format(last=len(names) - 1))
    return out, unlabelled
