"""infer.py's pictures: small images enlarged, boxes where the model put them, threshold applied."""
import os
import sys

import torch
from PIL import ImageColor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'tools'))
from infer import COLORS, canvas_scale, draw  # noqa: E402


def test_small_images_are_enlarged_by_a_whole_factor():
    assert canvas_scale(96, 96) == 6  # 576 px: the longer side reaches 512
    assert canvas_scale(96, 128, min_side=384) == 3
    assert canvas_scale(800, 1333) == 1


def test_boxes_drawn_where_predicted_and_below_threshold_left_out():
    image = torch.zeros(3, 96, 96, dtype=torch.uint8)
    pred = dict(boxes=torch.tensor([[10., 40., 50., 80.], [60., 10., 90., 30.]]), labels=torch.tensor([1, 2]),
                scores=torch.tensor([0.9, 0.3]))
    gt = torch.tensor([[5., 5., 30., 30.]])
    out = draw(image, pred, ['a', 'b', 'c'], score_thr=0.5, gt_boxes=gt)
    k = 6
    assert out.shape == (3, 96 * k, 96 * k) and out.dtype == torch.uint8
    colour = torch.tensor(ImageColor.getrgb(COLORS[1]), dtype=torch.uint8)
    # the kept box's left edge, half-way down, in its class colour
    assert torch.equal(out[:, 60 * k, 10 * k], colour)
    # the ground truth's bottom edge in white
    assert torch.equal(out[:, 30 * k, 20 * k], torch.full((3,), 255, dtype=torch.uint8))
    # the 0.3 box is not drawn: its whole outline stays black
    x0, y0, x1, y1 = (v * k for v in (60, 10, 90, 30))
    outline = torch.cat([out[:, y0, x0:x1], out[:, y1, x0:x1], out[:, y0:y1, x0], out[:, y0:y1, x1]], dim=1)
    assert outline.sum() == 0
    # the label sits on a filled patch of the class colour above the box, with white text in it
    patch = out[:, 40 * k - 12:40 * k - 2, 10 * k:10 * k + 60].reshape(3, -1).T
    assert (patch == colour).all(dim=1).float().mean() > 0.3
    assert (patch == 255).all(dim=1).any()
