"""``--data DIR`` in the formats people have: a COCO folder (``detection.data.folder``), Pascal VOC
(``detection.data.voc``) or YOLO / ultralytics (``detection.data.yolo``).

A VOC or YOLO folder is converted in memory to the COCO dicts a COCO folder gives, which then go
through the same checks (``folder.read_split``, and the dataset's image checks); the dicts are
saved as ``train.json`` and ``val.json`` in ``<work dir>/data/`` (a temporary folder where the
command has no work dir), which the datasets, the metric and the Predictor read like any COCO
annotation file. The classes come from the files: VOC's object names sorted, YOLO's ``names``.

A folder without a validation split (VOC without ImageSets/Main/val.txt, YOLO without ``val``)
holds out ``--val-fraction`` of its images (default 0.1, at least one image, at least one left
to train on) for validation: the image ids sorted, shuffled by ``random.Random(SPLIT_SEED)``, the
first ones held out. The same folder and fraction give the same split on every machine and run
(the seed is not the training seed, so runs with other seeds are compared on the same images);
the log says how many were held out.
"""
import hashlib
import json
import os
import os.path as osp
import random
import tempfile

from .errors import DataError

VAL_FRACTION = 0.1
SPLIT_SEED = 0


def detect_format(root: str) -> str | None:
    """'voc', 'yolo', or None (a COCO folder or nothing known: ``folder.find_splits`` says)."""
    from . import voc, yolo
    if not osp.isdir(root):
        return None
    if voc.is_voc(root):
        return 'voc'
    if yolo.find_yaml(root):
        return 'yolo'
    return None


def hold_out(ids: list, fraction: float, seed: int = SPLIT_SEED) -> tuple[list, list]:
    """(train, val): ``round(fraction * n)`` of ``ids`` (at least 1, at most n - 1), chosen by a
    seeded shuffle of the sorted ids; each part keeps the sorted order. One id is both."""
    if not 0 < fraction < 1:
        raise DataError(f'--val-fraction {fraction}: give a fraction between 0 and 1, e.g. 0.1')
    ids = sorted(ids)
    if len(ids) < 2:
        return ids, ids
    order = list(ids)
    random.Random(seed).shuffle(order)
    held = set(order[:min(len(ids) - 1, max(1, round(fraction * len(ids))))])
    return [i for i in ids if i not in held], [i for i in ids if i in held]


def _held_out_note(train: list, val: list, fraction: float, source: str) -> str:
    return (f'no validation split in {source}: {len(val)} of {len(train) + len(val)} images held out for validation '
            f'(--val-fraction {fraction}, seed {SPLIT_SEED}; the same every run)'
            + (' - a single image, used for both' if train == val else ''))


def convert(root: str, val_fraction: float = VAL_FRACTION) -> dict | None:
    """A VOC or YOLO folder -> dict(format ('Pascal VOC' / 'YOLO'), splits={'train': (COCO dict,
    image folder), 'val': (...)}, notes: log lines); None for any other folder."""
    from . import voc, yolo
    kind = detect_format(root)
    if kind is None:
        return None
    notes = []
    if kind == 'voc':
        train, val, source = voc.split_ids(root)
        if not train:
            raise DataError(f'--data {root} (Pascal VOC): no image ids in {source}; list them, one per line')
        if val is None:
            train, val = hold_out(train, val_fraction)
            notes.append(_held_out_note(train, val, val_fraction, source))
        dicts, img_dir = voc.read_voc(root, dict(train=train, val=val))
        return dict(format='Pascal VOC', splits={s: (d, img_dir) for s, d in dicts.items()}, notes=notes)
    yaml_path = yolo.find_yaml(root)
    data = yolo.read_yaml(yaml_path)
    yaml_dir = osp.dirname(osp.abspath(yaml_path))
    bases = [yaml_dir]
    if data.get('path'):
        path = osp.expanduser(str(data['path']))
        path = path if osp.isabs(path) else osp.normpath(osp.join(yaml_dir, path))
        if osp.isdir(path):
            bases.insert(0, path)
    images, base = {}, {}
    images['train'], base['train'] = yolo.list_images(data['train'], bases, yaml_path, 'train')
    if data.get('val'):
        images['val'], base['val'] = yolo.list_images(data['val'], bases, yaml_path, 'val')
    else:
        images['train'], images['val'] = hold_out(images['train'], val_fraction)
        base['val'] = base['train']
        notes.append(_held_out_note(images['train'], images['val'], val_fraction, f'{yaml_path} (no val entry)'))
    dicts, unlabelled = yolo.read_yolo(yaml_path, images, base, data['names'])
    if unlabelled:
        notes.append(f'{unlabelled} image(s) have no label file: taken as pictures with no objects (as ultralytics '
                     f'does)')
    return dict(format='YOLO', splits={s: (d, base[s]) for s, d in dicts.items()}, notes=notes)


def converted_dir(work_dir: str | None, root: str, val_fraction: float) -> str:
    """Where the converted json files go: ``<work_dir>/data``, else a temporary folder named
    after the data folder and the fraction."""
    if work_dir:
        return osp.join(work_dir, 'data')
    key = hashlib.sha1(f'{osp.abspath(root)}|{val_fraction}'.encode()).hexdigest()[:12]
    return osp.join(tempfile.gettempdir(), f'vitzoo-data-{key}')


def write_splits(splits: dict[str, tuple[dict, str]], out_dir: str) -> dict[str, tuple[str, str]]:
    """{split: (COCO dict, image folder)} -> {split: (json path, image folder)}, each json written
    whole or not at all (several processes of one run may write the same file)."""
    os.makedirs(out_dir, exist_ok=True)
    found = {}
    for split, (data, img_dir) in splits.items():
        path = osp.join(out_dir, f'{split}.json')
        tmp = f'{path}.{os.getpid()}.tmp'
        with open(tmp, 'w') as f:
            json.dump(data, f)
        os.replace(tmp, path)
        found[split] = (path, img_dir)
    return found
