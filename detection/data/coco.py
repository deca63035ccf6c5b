"""COCO-format detection data: dataset, validation of the annotation file, batch collation."""
import contextlib
import io
import json
import math
import os

import torch
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .transforms import boxes_to_normalized_cxcywh


def _check_annotation_file(data: dict, path: str) -> None:
    """Raise a ValueError naming the first entry that lacks a field pycocotools needs."""
    for section in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(section), list):
            raise ValueError(f'{path}: missing the "{section}" list of a COCO annotation file')
    required = dict(images=('id', 'file_name', 'width', 'height'),
                    annotations=('image_id', 'category_id', 'bbox'), categories=('id', 'name'))
    for section, fields in required.items():
        for i, entry in enumerate(data[section]):
            missing = [f for f in fields if f not in entry]
            if missing:
                raise ValueError(f'{path}: {section}[{i}] lacks {", ".join(missing)} '
                                 f'(entry: {json.dumps(entry)[:200]})')
    for i, ann in enumerate(data['annotations']):
        if len(ann['bbox']) != 4 or not all(math.isfinite(v) for v in ann['bbox']):
            raise ValueError(f'{path}: annotations[{i}] has bbox {ann["bbox"]}; expected [x, y, w, h]')


class CocoDetection(Dataset):
    """Images and boxes from a COCO json.

    Every image is kept, those without annotations too (targets of shape (0, 4)). Training
    targets drop crowd boxes and boxes with no area after clipping to the image. Category ids
    are mapped to contiguous labels 0..C-1 (``cat_ids[label]`` maps back).

    Item: (image tensor (3, H, W) after ``transforms``, target dict with ``labels`` (N,), ``boxes``
    (N, 4) normalised cxcywh of the transformed image, ``image_id``, ``orig_size`` (H, W),
    ``size`` (H, W) after transforms).
    """

    def __init__(self, img_dir: str, ann_file: str, transforms=None, train: bool = True):
        if not os.path.isfile(ann_file):
            raise FileNotFoundError(f'annotation file {ann_file} not found')
        with open(ann_file) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f'{ann_file} is not valid json: {e}') from e
        _check_annotation_file(data, ann_file)
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self.img_dir, self.ann_file, self.transforms, self.train = img_dir, ann_file, transforms, train
        self.ids = sorted(self.coco.imgs)
        self.cat_ids = sorted(self.coco.cats)
        self.label_of = {c: i for i, c in enumerate(self.cat_ids)}
        self.classes = [self.coco.cats[c]['name'] for c in self.cat_ids]
        missing = [self.coco.imgs[i]['file_name'] for i in self.ids
                   if not os.path.isfile(os.path.join(img_dir, self.coco.imgs[i]['file_name']))]
        if missing:
            raise FileNotFoundError(f'{len(missing)} image file(s) listed in {ann_file} are missing '
                                    f'from {img_dir}, e.g. {missing[:3]}')

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Image.Image:
        path = os.path.join(self.img_dir, self.coco.imgs[image_id]['file_name'])
        try:
            with Image.open(path) as img:
                return img.convert('RGB')
        except (UnidentifiedImageError, OSError) as e:
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
                raise ValueError(f'{self.ann_file}: annotation {ann.get("id")} has category_id '
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
