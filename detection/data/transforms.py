"""DETR's augmentation recipe on torchvision.transforms.v2 with tv_tensors boxes."""
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class RandomSizeCrop(v2.Transform):
    """Crop a random window whose sides are drawn from [min_size, max_size] (clipped to the image)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs):
        h, w = v2.query_size(flat_inputs)
        ch = int(torch.randint(min(self.min_size, h), min(h, self.max_size) + 1, ()))
        cw = int(torch.randint(min(self.min_size, w), min(w, self.max_size) + 1, ()))
        top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt, params):
        return TF.crop(inpt, **params)


def detr_train_transforms(scales=tuple(range(480, 801, 32)), max_size: int = 1333,
                          crop_resize=(400, 500, 600), crop_size=(384, 600)) -> v2.Compose:
    """Flip; then either a multi-scale resize of the shorter side, or resize -> random crop ->
    multi-scale resize (DETR, Sec. A.4). Degenerate boxes left by the crop are removed."""
    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomChoice([
            v2.RandomShortestSize(list(scales), max_size=max_size),
            v2.Compose([v2.RandomShortestSize(list(crop_resize)), RandomSizeCrop(*crop_size),
                        v2.RandomShortestSize(list(scales), max_size=max_size)]),
        ]),
        v2.SanitizeBoundingBoxes(min_size=1.0),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def detr_test_transforms(size: int = 800, max_size: int = 1333) -> v2.Compose:
    return v2.Compose([v2.RandomShortestSize([size], max_size=max_size),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def boxes_to_normalized_cxcywh(boxes: tv_tensors.BoundingBoxes) -> torch.Tensor:
    """Pixel xyxy boxes -> (N, 4) cxcywh in [0, 1] of the (un-padded) image they live on."""
    h, w = boxes.canvas_size
    cxcywh = v2.functional.convert_bounding_box_format(boxes, new_format='CXCYWH').as_subclass(torch.Tensor)
    return cxcywh / torch.tensor([w, h, w, h], dtype=cxcywh.dtype)


def shapes_train_transforms(scales=(112, 128, 144), max_size: int = 192) -> v2.Compose:
    """The built-in set's recipe: DETR's flip and multi-scale resize at its small image size."""
    return v2.Compose([v2.RandomHorizontalFlip(), v2.RandomShortestSize(list(scales), max_size=max_size),
                       v2.SanitizeBoundingBoxes(min_size=1.0), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def shapes_test_transforms(size: int = 128) -> v2.Compose:
    return detr_test_transforms(size=size, max_size=size * 2)
