"""COCO-format detection data: dataset, validation of the annotation file, batch collation."""
import contextlib
import io
import json
import math
import os
import warnings

import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .errors import DataError, MissingDataError
from .images import image_size, read_image
from .transforms import boxes_to_normalized_cxcywh


def _is_number(v) -> bool:
    """A finite int or float from the json (not a bool, string or null)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _key(v):
    """An id as pycocotools' dicts tell ids apart (3 and 3.0 alike); an unhashable one (a list) as
    its json, marked so that ``_shown`` writes it once."""
    try:
        hash(v)
        return v
    except TypeError:
        return _Unhashable(json.dumps(v))


class _Unhashable(str):
    """An unhashable id (a list in the json) by its json text."""


def _shown(v) -> str:
    """An id as written in the json, so that "3" (a string) stays apart from 3."""
    return str(v) if isinstance(v, _Unhashable) else json.dumps(v)


def _listed(values, limit: int = 10) -> str:
    values = list(values)
    return ', '.join(map(str, values[:limit])) + (f', ... ({len(values)} in all)' if len(values) > limit else '')


def _check_annotation_file(data: dict, path: str) -> None:
    """Raise a ValueError naming the first entry that lacks a field pycocotools needs; then one
    naming every entry that would train or evaluate wrongly, or fail in the middle of training:
    boxes and image sizes that are not finite numbers (strings, null, NaN), duplicate image,
    annotation or category ids (pycocotools silently keeps one of each), annotations of a
    category absent from "categories". Runs when a dataset is built, before any training; each
    problem says how to fix it."""
    for section in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(section), list):
            raise DataError(f'{path}: missing the "{section}" list of a COCO annotation file')
    required = dict(images=('id', 'file_name', 'width', 'height'),
                    annotations=('image_id', 'category_id', 'bbox'), categories=('id', 'name'))
    for section, fields in required.items():
        for i, entry in enumerate(data[section]):
            missing = [f for f in fields if f not in entry]
            if missing:
                raise DataError(f'{path}: {section}[{i}] lacks {", ".join(missing)} '
                                 f'(entry: {json.dumps(entry)[:200]})')
    problems = []
    bad_boxes = [f'annotations[{i}] (id {ann.get("id")}) has bbox {json.dumps(ann["bbox"])}'
                 for i, ann in enumerate(data['annotations']) if not (
                     isinstance(ann['bbox'], list) and len(ann['bbox']) == 4 and all(map(_is_number, ann['bbox'])))]
    if bad_boxes:
        problems.append(f'{len(bad_boxes)} bbox(es) that are not 4 finite numbers: {_listed(bad_boxes, 5)}. '
                        f'Write each as [x, y, width, height] in pixels (numbers, not strings or null), '
                        f'or remove the annotation; expected [x, y, w, h]')
    bad_sizes = [f'{img["file_name"]} (id {img["id"]}): {json.dumps(img["width"])} x {json.dumps(img["height"])}'
                 for img in data['images'] if not (_is_number(img['width']) and _is_number(img['height']))]
    if bad_sizes:
        problems.append(f'{len(bad_sizes)} image(s) whose width x height are not numbers: '
                        f'{_listed(bad_sizes, 5)}. Write the pixel width and height of each file as numbers')
    duplicate_fix = dict(
        images='pycocotools keeps one image per id and gives it the boxes of all. Give every image its own '
               'id and point each annotation\'s image_id at its image',
        annotations='the evaluation would count one box twice and lose the other. Give every annotation '
                    'its own id',
        categories='pycocotools keeps one category per id. Give every category its own id')
    for section, fix in duplicate_fix.items():
        seen = {}
        for entry in data[section]:
            if 'id' in entry:
                seen.setdefault(_key(entry['id']), []).append(entry)
        duplicates = [f'id {_shown(i)} ' + (f'({_listed([e["file_name"] for e in entries], 3)})'
                                            if section == 'images' else f'({len(entries)} times)')
                      for i, entries in seen.items() if len(entries) > 1]
        if duplicates:
            problems.append(f'duplicate {section[:-1]} ids: {_listed(duplicates)}; {fix}')
    known = [_key(c['id']) for c in data['categories']]
    unknown, known_set = {}, set(known)
    for ann in data['annotations']:
        if _key(ann['category_id']) not in known_set:
            unknown.setdefault(_key(ann['category_id']), []).append(ann.get('id'))
    if unknown:
        shown = [f'category_id {_shown(c)} (annotation ids {_listed(ids, 5)})' for c, ids in unknown.items()]
        problems.append(f'annotations of categories absent from "categories": {_listed(shown)}; "categories" '
                        f'has ids {_listed(map(_shown, known), 20)}. Add the missing categories to "categories" '
                        f'(the class count follows them), or correct or remove those annotations')
    if problems:
        raise DataError(f'{path}: ' + (problems[0] if len(problems) == 1 else
                                        f'{len(problems)} problems:\n' + '\n'.join(f'  - {p}' for p in problems)))


def check_image_files(images: list[dict], img_dir: str, ann_file: str, fix_sizes: bool = False) -> None:
    """Every image of the json's ``images`` list is a file in ``img_dir`` that PIL can identify,
    of the json's width x height; else a FileNotFoundError or ValueError naming the files.

    Only headers are read (``Image.open(...).size`` decodes no pixels), so this is quick even on
    COCO's 118k images. A size mismatch means the boxes were probably drawn on another version of
    the picture (resized, or rotated by an EXIF orientation the annotation tool applied): boxes
    are read in the file's pixels, so training on it would teach wrong boxes without any error.
    With ``fix_sizes`` the json's sizes (``images`` entries, changed in place) take the files'
    sizes instead, with a warning: right when only the json's sizes are wrong."""
    missing, unreadable, mismatched = [], [], []
    for img in images:
        try:
            size = image_size(os.path.join(img_dir, img['file_name']))
        except FileNotFoundError:
            missing.append(img['file_name'])
            continue
        except ValueError as e:
            cause = e.__cause__ or e
            reason = str(cause).splitlines()[0] if str(cause) else ''
            unreadable.append(f'{img["file_name"]} ({type(cause).__name__}: {reason})')
            continue
        if size != (img['width'], img['height']):
            mismatched.append((img, size))
    if missing:
        raise MissingDataError(f'{len(missing)} image file(s) listed in {ann_file} are missing from {img_dir}, '
                                f'e.g. {missing[:3]}: put them there, or remove them from the json')
    if unreadable:
        raise DataError(f'{len(unreadable)} image file(s) listed in {ann_file} in {img_dir} are not pictures PIL '
                         f'can read: {_listed(unreadable, 5)}. Replace them, or remove them from the json')
    if not mismatched:
        return
    shown = [f'{img["file_name"]} (id {img["id"]}): json {img["width"]} x {img["height"]}, file {w} x {h}'
             + (' (width and height swapped: an EXIF rotation?)' if (h, w) == (img['width'], img['height']) else '')
             for img, (w, h) in mismatched]
    if fix_sizes:
        for img, (w, h) in mismatched:
            img['width'], img['height'] = w, h
        warnings.warn(f'fix_sizes: {len(mismatched)} image size(s) in {ann_file} taken from the files (width x '
                      f'height): {_listed(shown, 5)}. The boxes are kept as the json has them', stacklevel=3)
        return
    raise DataError(
        f'{len(mismatched)} image(s) in {ann_file} differ in size from their file (width x height): '
        f'{_listed(shown, 5)}. Boxes are taken in the file\'s pixels: if the files were resized or rotated after '
        f'annotating, the boxes no longer fit them; resize or rotate them back, or annotate them again. If only '
        f'the json\'s sizes are wrong, correct them, or build the dataset with fix_sizes=True, which takes the '
        f'files\' sizes (in a config: dataset=dict(type=\'CocoDetection\', ..., fix_sizes=True), or --cfg-options '
        f'train_dataloader.dataset.fix_sizes=True val_dataloader.dataset.fix_sizes=True '
        f'test_dataloader.dataset.fix_sizes=True)')


class CocoDetection(Dataset):
    """Images and boxes from a COCO json.

    Every image is kept, those without annotations too (targets of shape (0, 4)). Training
    targets drop crowd boxes and boxes with no area after clipping to the image. Category ids
    are mapped to contiguous labels 0..C-1 (``cat_ids[label]`` maps back).

    Item: (image tensor (3, H, W) after ``transforms``, target dict with ``labels`` (N,), ``boxes``
    (N, 4) normalised cxcywh of the transformed image, ``image_id``, ``orig_size`` (H, W),
    ``size`` (H, W) after transforms).
    """

    def __init__(self, img_dir: str, ann_file: str, transforms=None, train: bool = True, fix_sizes: bool = False):
        """Reads and checks ``ann_file`` and the headers of the image files in ``img_dir`` now, so
        that bad data stops the run before training (see ``_check_annotation_file`` and
        ``check_image_files``). ``fix_sizes``: take each image's size from its file where the
        json says another, with a warning, instead of refusing the data set."""
        if not os.path.isfile(ann_file):
            raise MissingDataError(f'annotation file {ann_file} not found')
        with open(ann_file) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f'{ann_file} is not valid json: {e}') from e
        _check_annotation_file(data, ann_file)
        if not data['images']:
            raise DataError(
                f'{ann_file} lists no images (its "images" list is empty): there is nothing to '
                f'{"train on" if train else "evaluate"}. Point the config at an annotation file with images; a '
                f'set without a separate validation split can use its train json and folder for validation too')
        check_image_files(data['images'], img_dir, ann_file, fix_sizes)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.img_dir, self.ann_file, self.transforms, self.train = img_dir, ann_file, transforms, train
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        self.label_of = {c: i for i, c in enumerate(self.cat_ids)}
        self.classes = [self.coco.cats[c]['name'] for c in self.cat_ids]

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        """The image as 8-bit RGB, by ``read_image`` (16-bit and float images by their real range)."""
        path = os.path.join(self.img_dir, self.coco.imgs[image_id]['file_name'])
        try:
            return read_image(path)
        except (FileNotFoundError, ValueError) as e:
            raise RuntimeError(f'cannot read image {path} (image id {image_id}): {e}. '
                               f'Replace the file or remove the image from {self.ann_file}') from e

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        img = self.load_image(image_id)
        w, h = img.size
        boxes, labels = [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            if self.train and ann.get('iscrowd', 0):
                continue
            x, y, bw, bh = ann['bbox']
            x0, y0 = min(max(x, 0), w), min(max(y, 0), h)
            x1, y1 = min(max(x + bw, 0), w), min(max(y + bh, 0), h)
            if self.train and (x1 <= x0 or y1 <= y0):
                continue
            if ann['category_id'] not in self.label_of:
                raise DataError(f'{self.ann_file}: annotation {ann.get("id")} has category_id '
                                 f'{ann["category_id"]}, absent from "categories"')
            boxes.append([x0, y0, x1, y1])
            labels.append(self.label_of[ann['category_id']])
        target = dict(boxes=tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                     format='XYXY', canvas_size=(h, w)),
                      labels=torch.tensor(labels, dtype=torch.int64))
        image = tv_tensors.Image(TF.pil_to_tensor(img))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        size = tuple(image.shape[-2:])
        return image.as_subclass(torch.Tensor), dict(
            labels=target['labels'], boxes=boxes_to_normalized_cxcywh(target['boxes']).float(),
            image_id=image_id, orig_size=torch.tensor([h, w]), size=torch.tensor(size))


def collate_detection(batch, size_divisor: int = 32) -> dict:
    """Pad a list of (image (3, H_i, W_i), target) to (B, 3, H, W) with H, W the batch maxima
    rounded up to ``size_divisor``; ``masks`` (B, H, W) is True on padding."""
    images, targets = zip(*batch)
    h = math.ceil(max(i.shape[1] for i in images) / size_divisor) * size_divisor
    w = math.ceil(max(i.shape[2] for i in images) / size_divisor) * size_divisor
    out = images[0].new_zeros(len(images), 3, h, w)
    masks = torch.ones(len(images), h, w, dtype=torch.bool)
    for i, img in enumerate(images):
        out[i, :, :img.shape[1], :img.shape[2]] = img
        masks[i, :img.shape[1], :img.shape[2]] = False
    return dict(inputs=out, masks=masks, data_samples=list(targets))
