"""A Pascal VOC folder as COCO-format dicts (``--data DIR``, see ``detection.data.formats``).

    DIR/Annotations/<id>.xml          one per image: <filename>, <size>, <object>s
    DIR/JPEGImages/<filename>
    DIR/ImageSets/Main/train.txt      optional: the ids of each split (val.txt, trainval.txt)

Splits: ``train.txt`` and ``val.txt`` where both exist; else the ids of ``train.txt`` (or
``trainval.txt``, or every xml in Annotations/), less those of ``val.txt``, are split by
``formats.hold_out``. Classes are the object names found in the split files, sorted; category id
i is the i-th. Boxes: VOC's corners are 1-based pixel indices, both ends included, so
``<xmin>..<xmax>`` becomes COCO's ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``,
clipped to the image. ``<difficult>1</difficult>`` objects become ``iscrowd`` 1, as VOC's own
evaluation treats them: neither trained on nor counted as missed.

Every xml is read before anything else happens; an unreadable one, one without ``<size>``, an
object without a name or a box of four numbers, a box whose max is below its min, or an image
missing from JPEGImages/ stops with the files named and the fix.
"""
import os
import os.path as osp
import xml.etree.ElementTree as ET

from .errors import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
SIZE_FIX = ('add <size><width>W</width><height>H</height><depth>3</depth></size> with the pixel size of the '
            'image (annotation tools such as labelImg and CVAT write it), or remove the file')


def is_voc(root: str) -> bool:
    return osp.isdir(osp.join(root, 'Annotations')) and osp.isdir(osp.join(root, 'JPEGImages'))


def _number(node, tag):
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def parse_xml(path: str) -> tuple[dict | None, list[str]]:
    """One VOC xml -> (dict(filename, width, height, objects=[(name, (xmin, ymin, xmax, ymax),
    difficult)]), []) or (None, [problems, each naming the file])."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        return None, [f'{path}: not readable XML ({e}); correct or remove it']
    size = root.find('size')
    width = _number(size, 'width') if size is not None else None
    height = _number(size, 'height') if size is not None else None
    if not (width and height and width > 0 and height > 0):
        found = 'no <size>' if size is None else '<size> without a positive <width> and <height>'
        return None, [f'{path}: {found}, so its boxes cannot be checked against the picture: {SIZE_FIX}']
    problems, objects = [], []
    for i, obj in enumerate(root.findall('object')):
        name = (obj.findtext('name') or '').strip()
        box = obj.find('bndbox')
        corners = [_number(box, t) for t in ('xmin', 'ymin', 'xmax', 'ymax')] if box is not None else [None]
        if not name:
            problems.append(f'{path}: <object> {i} has no <name>; give each object its class name')
        elif None in corners:
            problems.append(f'{path}: <object> {i} ({name}) lacks a <bndbox> with numbers <xmin>, <ymin>, <xmax>, '
                            f'<ymax>; add them or remove the object')
        elif corners[2] < corners[0] or corners[3] < corners[1]:
            problems.append(f'{path}: <object> {i} ({name}) has xmax < xmin or ymax < ymin ({corners}); write the '
                            f'top-left corner in xmin, ymin and the bottom-right one in xmax, ymax')
        else:
            difficult = (obj.findtext('difficult') or '0').strip() not in ('0', '', 'false', 'False')
            objects.append((name, tuple(corners), difficult))
    if problems:
        return None, problems
    filename = (root.findtext('filename') or '').strip()
    return dict(filename=filename, width=int(round(width)), height=int(round(height)), objects=objects), []


def _image_file(img_dir: str, stem: str, filename: str) -> str:
    """The xml's <filename> where that file is in JPEGImages/, else <id>.<an image extension>
    that is there, else <filename> (or <id>.jpg), which ``read_voc`` reports missing."""
    if filename and osp.isfile(osp.join(img_dir, filename)):
        return filename
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if osp.isfile(osp.join(img_dir, stem + ext)):
            return stem + ext
    return filename or stem + '.jpg'


def _read_ids(path: str) -> list[str]:
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def split_ids(root: str) -> tuple[list[str], list[str] | None, str]:
    """(train ids, val ids or None where the folder has no val split, where they came from)."""
    main = osp.join(root, 'ImageSets', 'Main')
    listed = {name: osp.join(main, f'{name}.txt') for name in ('train', 'val', 'trainval')}
    listed = {name: path for name, path in listed.items() if osp.isfile(path)}
    val = _read_ids(listed['val']) if 'val' in listed else None
    if 'train' in listed:
        train, source = _read_ids(listed['train']), 'ImageSets/Main/train.txt'
    elif 'trainval' in listed:
        train, source = _read_ids(listed['trainval']), 'ImageSets/Main/trainval.txt'
    else:
        train = sorted(osp.splitext(n)[0] for n in os.listdir(osp.join(root, 'Annotations')) if n.endswith('.xml'))
        source = 'Annotations/*.xml'
    if val is not None:
        held = set(val)
        train = [i for i in train if i not in held]
        source += ' and ImageSets/Main/val.txt'
    return train, val, source


def read_voc(root: str, ids: dict[str, list[str]]) -> tuple[dict[str, dict], str]:
    """{split: VOC ids} -> ({split: COCO dict}, the image folder). Raises a ValueError listing
    every bad or missing xml."""
    ann_dir, img_dir = osp.join(root, 'Annotations'), osp.join(root, 'JPEGImages')
    parsed, problems = {}, []
    for stem in sorted({i for split in ids.values() for i in split}):
        path = osp.join(ann_dir, stem + '.xml')
        if not osp.isfile(path):
            problems.append(f'{path}: not found, but image id {stem} is listed in ImageSets/Main; add it or remove '
                            f'the id from the list')
            continue
        record, found = parse_xml(path)
        if record is not None:
            record['filename'] = _image_file(img_dir, stem, record['filename'])
            if not osp.isfile(osp.join(img_dir, record['filename'])):
                found.append(f'{path}: its image {record["filename"]} (nor {stem} with an image extension) is not in '
                             f'{img_dir}; put it there, or remove the xml and its id from ImageSets/Main')
        problems += found
        parsed[stem] = record
    if problems:
        raise DataError(f'--data {root} (Pascal VOC): {len(problems)} problem(s) in the annotations:\n'
                         + '\n'.join(f'  - {p}' for p in problems[:20])
                         + (f'\n  ... ({len(problems) - 20} more)' if len(problems) > 20 else ''))
    names = sorted({o[0] for record in parsed.values() for o in record['objects']})
    if not names:
        raise DataError(f'--data {root} (Pascal VOC): no <object> in any xml of Annotations/, so there are no '
                         f'classes to learn; annotate the images first')
    category = {name: i for i, name in enumerate(names)}
    out = {}
    for split, stems in ids.items():
        images, annotations = [], []
        for image_id, stem in enumerate(stems, start=1):
            record = parsed[stem]
            w, h = record['width'], record['height']
            images.append(dict(id=image_id, file_name=record['filename'], width=w, height=h))
            for name, (x0, y0, x1, y1), difficult in record['objects']:
                x0, y0 = min(max(x0 - 1, 0), w), min(max(y0 - 1, 0), h)
                x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
                annotations.append(dict(id=len(annotations) + 1, image_id=image_id, category_id=category[name],
                                        bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                        iscrowd=int(difficult)))
        out[split] = dict(images=images, annotations=annotations,
                          categories=[dict(id=i, name=n) for i, n in enumerate(names)])
    return out, img_dir
