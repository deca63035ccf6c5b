"""The auxiliary dense head (Co-DETR's one-to-many supervision, anchor-free): assignment of
encoder positions to boxes, losses on a hand-built case, training only."""
import pytest
import torch

from detection.dense_head import DenseAuxHead
from detection.engine import Detector
from test_denoising import SMALL, TinyBackbone, _targets


def test_centres_follow_the_valid_extent():
    padding = torch.zeros(1, 2, 4, dtype=torch.bool)
    padding[:, :, 2:] = True  # the right half is padding: centres are normalised by 2 columns
    c = DenseAuxHead.centres(padding)
    assert c[0, :2].tolist() == [[0.25, 0.25], [0.75, 0.25]]


def test_each_position_gets_the_smallest_box_containing_it():
    head = DenseAuxHead(8, 3)
    centres = DenseAuxHead.centres(torch.zeros(1, 2, 3, dtype=torch.bool))  # x 1/6, 1/2, 5/6; y 1/4, 3/4
    big, small = [0.5, 0.5, 0.5, 0.9], [0.5, 0.3, 0.2, 0.2]
    index, matched = head.assign(centres, [dict(boxes=torch.tensor([big, small]), labels=torch.tensor([0, 1]))])
    assert index.tolist() == [[-1, 1, -1, -1, 0, -1]]
    assert matched[0, 1].tolist() == pytest.approx(small) and matched[0, 4].tolist() == pytest.approx(big)


def test_losses_on_a_hand_built_case():
    """Two positive positions of four; boxes exact on one, off by 0.1 in cx on the other; class
    logits certain and right: L1 = 0.1 / 2 positives, focal near 0."""
    head = DenseAuxHead(8, 2, weight_class=1, weight_bbox=1, weight_giou=1)
    centres = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]])
    target = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.75, 0.75, 0.3, 0.3]])
    boxes = torch.tensor([[[0.25, 0.25, 0.3, 0.3], [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1],
                           [0.85, 0.75, 0.3, 0.3]]])
    logits = torch.full((1, 4, 2), -20.0)
    logits[0, 0, 0] = logits[0, 3, 1] = 20.0
    out = dict(logits=logits, boxes=boxes, centres=centres, valid=torch.ones(1, 4, dtype=torch.bool))
    losses = head.loss(out, [dict(boxes=target, labels=torch.tensor([0, 1]))])
    assert losses['dense.loss_bbox'].item() == pytest.approx(0.1 / 2, rel=1e-5)
    assert losses['dense.loss_class'].item() < 1e-6
    assert 0 < losses['dense.loss_giou'].item() < 0.5


def test_dense_head_trains_the_backbone_and_is_absent_at_inference():
    detector = Detector(dict(type='DETR', backbone=TinyBackbone(), num_queries=4, dense_aux=True, **SMALL),
                        num_classes=3)
    images, masks = torch.randn(3, 3, 64, 64), torch.zeros(3, 64, 64, dtype=torch.bool)
    losses = detector(images, masks, _targets(), mode='loss')
    assert {'dense.loss_class', 'dense.loss_bbox', 'dense.loss_giou'} <= set(losses)
    losses['dense.loss_class'].backward()
    assert detector.net.backbone.conv.weight.grad.abs().sum() > 0
    detector.eval()
    assert 'dense_outputs' not in detector(images, masks, mode='tensor')
