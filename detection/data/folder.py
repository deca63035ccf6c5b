"""A user's own COCO-format folder as the data of any detection config (``--data DIR``).

Two layouts are recognised:

    COCO 2017: DIR/annotations/instances_{train,val}2017.json, DIR/{train,val}2017/
    plain:     DIR/annotations/{train,val}.json,              DIR/{train,val}/

and the layout of the sets this project generates (``annotations/instances_{train,val}.json``).
A Pascal VOC or YOLO (ultralytics) folder is converted to the same COCO dicts first
(``detection.data.formats``), with a held-out validation split where it has none (``--val-fraction``).

The class count and names come from the train annotation file's ``categories``, so no config
needs editing; category ids may be anything (0, gaps, unsorted): labels are their sorted order.
Everything is checked before a model is built, and each problem names its fix.
"""
import json
import os.path as osp

from mmengine.config import Config
from mmengine.logging import MMLogger

from .coco import _check_annotation_file
from .errors import DataError, MissingDataError
from .formats import VAL_FRACTION, convert, converted_dir, write_splits

LAYOUTS = {
    'COCO 2017': {'train': ('annotations/instances_train2017.json', 'train2017'),
                  'val': ('annotations/instances_val2017.json', 'val2017')},
    'plain': {'train': ('annotations/train.json', 'train'), 'val': ('annotations/val.json', 'val')},
    'generated': {'train': ('annotations/instances_train.json', 'train'),
                  'val': ('annotations/instances_val.json', 'val')},
}


def find_splits(root: str) -> dict[str, tuple[str, str]]:
    """DIR -> {'train': (ann_file, img_dir), 'val': (ann_file, img_dir)} in the first layout whose
    train annotation file exists; raises FileNotFoundError saying what is expected."""
    if not osp.isdir(root):
        raise MissingDataError(f'--data {root}: no such folder. Give the folder that holds '
                                f'annotations/ and the image folders of a COCO-format data set.')
    expected = '; or '.join(f'{name}: ' + ', '.join(f'{a} with {d}/' for a, d in splits.values())
                            for name, splits in LAYOUTS.items())
    for splits in LAYOUTS.values():
        if osp.isfile(osp.join(root, splits['train'][0])):
            found = {s: (osp.join(root, a), osp.join(root, d)) for s, (a, d) in splits.items()}
            for split, (ann_file, img_dir) in found.items():
                if not osp.isfile(ann_file):
                    raise MissingDataError(
                        f'--data {root}: {ann_file} not found ({split} split). Expected {expected}. '
                        f'A set without a separate {split} split can point both at the same images: '
                        f'copy or link the train json and folder to the {split} names.')
                if not osp.isdir(img_dir):
                    raise MissingDataError(f'--data {root}: image folder {img_dir} not found for '
                                            f'{ann_file}. Expected {expected}.')
            return found
    raise MissingDataError(f'--data {root}: no annotation file found. Expected {expected}; or Pascal VOC: '
                            f'Annotations/*.xml with JPEGImages/; or YOLO: a data.yaml naming the train and val '
                            f'image folders and the class names, with labels/ beside images/.')


def read_split(ann_file: str, img_dir: str) -> dict:
    """Checks one split (a COCO json, categories and images present, every listed image on disk) -> dict(
    classes: names in label order (sorted category ids), images, boxes, max_objects: the most
    boxes on one image)."""
    with open(ann_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f'{ann_file} is not valid json ({e}); --data expects a COCO '
                             f'annotation file with "images", "annotations" and "categories"') from e
    if not isinstance(data, dict):
        raise DataError(f'{ann_file} holds a json {type(data).__name__}, not a COCO annotation file '
                         f'(an object with "images", "annotations" and "categories" lists)')
    _check_annotation_file(data, ann_file)
    if not data['categories']:
        raise DataError(f'{ann_file}: "categories" is empty; list every class as {{"id": ..., "name": ...}}')
    if not data['images']:
        raise DataError(f'{ann_file}: "images" is empty, so this split has nothing to train on or evaluate. List '
                         f'its images; a set without a separate val split can copy or link the train json and '
                         f'folder to the val names')
    missing = [img['file_name'] for img in data['images'] if not osp.isfile(osp.join(img_dir, img['file_name']))]
    if missing:
        raise MissingDataError(f'{len(missing)} of the {len(data["images"])} images listed in {ann_file} are '
                                f'missing from {img_dir}, e.g. {missing[:3]}: put them there, or remove '
                                f'them from the json')
    per_image = {}
    for ann in data['annotations']:
        per_image[ann['image_id']] = per_image.get(ann['image_id'], 0) + 1
    return dict(classes=[c['name'] for c in sorted(data['categories'], key=lambda c: c['id'])],
                images=len(data['images']), boxes=len(data['annotations']),
                max_objects=max(per_image.values(), default=0))


def sized_transforms(img_size: int) -> tuple[dict, dict]:
    """--img-size N: training resizes the shorter side to one of 5 sizes from 0.75 N to N (multiples
    of 8) with a horizontal flip, the longer side at most 1333/800 of it as in DETR; testing
    resizes the shorter side to N."""
    if img_size < 32:
        raise DataError(f'--img-size {img_size}: too small for a stride-32 detector; use 32 or more')
    max_size = round(img_size * 1333 / 800)
    scales = sorted({max(8, round(img_size * (0.75 + 0.0625 * i) / 8) * 8) for i in range(5)})
    return (dict(type='shapes_train_transforms', scales=tuple(scales), max_size=max_size),
            dict(type='detr_test_transforms', size=img_size, max_size=max_size))


_LOADERS = (('train_dataloader', 'train'), ('val_dataloader', 'val'), ('test_dataloader', 'val'))


def set_img_size(cfg: Config, img_size: int) -> Config:
    """--img-size N on a detection config: ``sized_transforms(N)`` for every dataloader."""
    train_tf, test_tf = sized_transforms(img_size)
    for key, split in _LOADERS:
        if cfg.get(key):
            cfg[key].dataset.transforms = dict(train_tf if split == 'train' else test_tf)
    return cfg


def use_data_folder(cfg: Config, root: str | None, img_size: int | None = None,
                    val_fraction: float | None = None) -> Config:
    """Points every dataloader of a detection config at the folder ``root`` and sets the class
    count from its train annotations; with ``img_size`` also the train and test sizes (which
    also works on the config's own data, ``root`` None). A VOC or YOLO folder is converted first
    (``detection.data.formats``); one without a val split holds out ``val_fraction`` (0.1)."""
    if root is None:
        return set_img_size(cfg, img_size) if img_size else cfg
    if cfg.get('model', {}).get('type') != 'Detector':
        raise DataError('--data takes a detection config (model.type Detector); classification '
                         'configs name their folders in the config')
    val_fraction = VAL_FRACTION if val_fraction is None else val_fraction
    is_coco = any(osp.isfile(osp.join(root, splits['train'][0])) for splits in LAYOUTS.values())
    converted = None if is_coco else convert(root, val_fraction)  # a VOC or YOLO folder as COCO dicts
    splits = (write_splits(converted['splits'], converted_dir(cfg.get('work_dir'), root, val_fraction))
              if converted else find_splits(root))
    train, val = read_split(*splits['train']), read_split(*splits['val'])
    classes, val_classes = train['classes'], val['classes']
    if val_classes != classes:
        raise DataError(f'--data {root}: the train and val annotation files list different categories '
                         f'({classes} vs {val_classes}); both need the same "categories" list')
    cfg.model.num_classes = len(classes)
    cfg.num_classes = len(classes)
    for key, split in _LOADERS:
        if cfg.get(key):
            dataset = cfg[key].dataset
            dataset.pop('synthetic', None)
            dataset.ann_file, dataset.img_dir = splits[split]
    if img_size:
        set_img_size(cfg, img_size)
    for key in ('val_evaluator', 'test_evaluator'):
        evaluators = cfg.get(key)
        for evaluator in (evaluators if isinstance(evaluators, list) else [evaluators] if evaluators else []):
            evaluator.pop('ann_file', None)  # the evaluated dataset's own
    cfg.data_folder = dict(root=osp.abspath(root), classes=classes, img_size=img_size,
                           format=converted['format'] if converted else 'COCO', val_fraction=val_fraction)
    logger = MMLogger.get_current_instance()
    for note in converted['notes'] if converted else []:
        logger.info(f'--data {root} ({converted["format"]}): {note}')
    read_as = f' ({converted["format"]}, as COCO in {osp.dirname(splits["train"][0])})' if converted else ''
    logger.info(f'--data {root}{read_as}: {train["images"]} train images ({train["boxes"]} boxes), {val["images"]} val '
                f'images, {len(classes)} classes, at most {train["max_objects"]} objects on an image')
    queries = cfg.model.get('detector', {}).get('num_queries')
    if queries is not None and queries < max(train['max_objects'], val['max_objects']):
        logger.warning(f'the config has {queries} queries but an image of this set holds up to '
                       f'{max(train["max_objects"], val["max_objects"])} objects: no more than {queries} '
                       f'can be detected per image. Raise it with --cfg-options '
                       f'model.detector.num_queries=N (a little above the most objects per image '
                       f'learns fastest on small sets)')
    return cfg


def add_data_arguments(parser) -> None:
    """``--data DIR`` and ``--img-size N``, the same on train.py, test.py and infer.py."""
    parser.add_argument('--data', metavar='DIR',
                        help='a COCO-format folder to train / evaluate on instead of the config\'s data '
                             '(annotations/instances_{train,val}2017.json with {train,val}2017/, or '
                             'annotations/{train,val}.json with {train,val}/); classes come from the json. '
                             'Pascal VOC (Annotations/, JPEGImages/, ImageSets/Main/) and YOLO (data.yaml, '
                             'images/, labels/) folders are read too')
    parser.add_argument('--val-fraction', type=float, metavar='F',
                        help=f'a --data folder without a validation split holds out this fraction of its images '
                             f'for it (default {VAL_FRACTION}; the same images every run)')
    parser.add_argument('--img-size', type=int, metavar='N',
                        help='test size N (shorter side) and multi-scale training from 0.75 N to N')


def apply_data_arguments(cfg: Config, args) -> Config:
    """``use_data_folder`` for the tools: a problem with the folder ends the command with its
    message (no traceback to read through)."""
    try:
        return use_data_folder(cfg, args.data, args.img_size, getattr(args, 'val_fraction', None))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'error: {e}') from e


def check_class_count(num_classes: int, classes: list[str], ann_file: str) -> None:
    """A config whose class count disagrees with its data trains garbage silently: refuse it."""
    if num_classes != len(classes):
        shown = ', '.join(classes[:10]) + (', ...' if len(classes) > 10 else '')
        raise DataError(
            f'the config says num_classes={num_classes} but {ann_file} has {len(classes)} categories '
            f'({shown}). Set --cfg-options model.num_classes={len(classes)}, or train with '
            f'--data DIR, which takes the class count from the annotation file.')
