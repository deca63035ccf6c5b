"""The FCOS-style dense head on the encoder output: assignment of encoder positions to boxes
(centre inside, smallest box wins, the nearest real position for a box that contains none),
losses on a hand-built case, training only, on DETR and Deformable DETR."""
import pytest
import torch

from detection.deformable_detr import DeformableDETR
from detection.dense_head import FCOSDenseHead
from detection.engine import Detector
from test_denoising import SMALL, TinyBackbone, _targets


def test_centres_follow_the_valid_extent():
    padding = torch.zeros(1, 2, 4, dtype=torch.bool)
    padding[:, :, 2:] = True  # the right half is padding: centres are normalised by 2 columns
    c = FCOSDenseHead.centres(padding)
    assert c[0, :2].tolist() == [[0.25, 0.25], [0.75, 0.25]]


def test_each_position_gets_the_smallest_box_containing_it():
    head = FCOSDenseHead(8, 3)
    centres = FCOSDenseHead.centres(torch.zeros(1, 2, 3, dtype=torch.bool))  # x 1/6, 1/2, 5/6; y 1/4, 3/4
    big, small = [0.5, 0.5, 0.5, 0.9], [0.5, 0.3, 0.2, 0.2]
    index, matched = head.assign(centres, [dict(boxes=torch.tensor([big, small]), labels=torch.tensor([0, 1]))])
    assert index.tolist() == [[-1, 1, -1, -1, 0, -1]]
    assert matched[0, 1].tolist() == pytest.approx(small) and matched[0, 4].tolist() == pytest.approx(big)


def test_losses_on_a_hand_built_case():
    """Two positive positions of four; boxes exact on one, off by 0.1 in cx on the other; class
    logits certain and right: L1 = 0.1 / 2 positives, focal near 0."""
    head = FCOSDenseHead(8, 2, weight_class=1, weight_bbox=1, weight_giou=1)
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


def test_a_box_smaller_than_a_cell_gets_the_nearest_position_only():
    """A 0.1 x 0.1 box between the centres of a 3 x 3 grid (at 1/6, 1/2, 5/6) contains none of
    them: it gets exactly one positive, the position nearest its centre (column 1, row 0)."""
    centres = FCOSDenseHead.centres(torch.zeros(1, 3, 3, dtype=torch.bool))
    tiny = [0.42, 0.25, 0.1, 0.1]
    index, matched = FCOSDenseHead.assign(centres, [dict(boxes=torch.tensor([tiny]), labels=torch.tensor([0]))])
    assert index.tolist() == [[-1, 0, -1, -1, -1, -1, -1, -1, -1]]
    assert matched[0, 1].tolist() == pytest.approx(tiny)


def test_the_nearest_position_goes_to_the_smaller_box():
    """The tiny box's nearest position lies inside a big box too: the smaller box wins it (FCOS's
    rule), the big box keeps its other positions."""
    centres = FCOSDenseHead.centres(torch.zeros(1, 3, 3, dtype=torch.bool))
    big, tiny = [0.5, 0.5, 0.9, 0.9], [0.42, 0.25, 0.1, 0.1]
    index, _ = FCOSDenseHead.assign(centres, [dict(boxes=torch.tensor([big, tiny]), labels=torch.tensor([0, 1]))])
    assert index.tolist() == [[0, 1, 0, 0, 0, 0, 0, 0, 0]]


def test_padding_positions_are_never_positive():
    """A 2 x 4 map whose right half is padding (centres x 0.25, 0.75 real, 1.25, 1.75 beyond the
    image): a box running past the image edge (an unclipped annotation) does not reach the padding
    centres it spans, and a tiny box at the edge takes the nearest real position."""
    padding = torch.zeros(1, 2, 4, dtype=torch.bool)
    padding[:, :, 2:] = True
    head = FCOSDenseHead(8, 2)
    out = head(torch.randn(1, 8, 8), padding)
    past_edge, tiny = [1.0, 0.25, 0.6, 0.3], [0.99, 0.75, 0.02, 0.02]
    targets = [dict(boxes=torch.tensor([past_edge, tiny]), labels=torch.tensor([0, 1]))]
    index, _ = head.assign(out['centres'], targets, out['valid'])
    assert index.tolist() == [[-1, 0, -1, -1, -1, 1, -1, -1]]
    assert not (index[~out['valid']] >= 0).any()
    losses = head.loss(out, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_deformable_detr_dense_head_on_the_stride_32_level_trains_the_backbone():
    detector = Detector(dict(type='DeformableDETR', backbone=TinyBackbone(), num_queries=4, dense_aux=True,
                             num_feature_levels=4, enc_points=2, dec_points=2, **SMALL), num_classes=3, focal=True)
    net = detector.net
    assert net.neck.strides == [8, 16, 32, 64] and net.dense_level == 2
    images, masks = torch.randn(3, 3, 128, 96), torch.zeros(3, 128, 96, dtype=torch.bool)
    masks[0, :, 64:] = True  # the first image's right third is padding
    outputs = detector(images, masks, _targets(), mode='tensor')
    dense = outputs['dense_outputs']
    assert dense['logits'].shape == (3, 4 * 3, 3) and dense['boxes'].shape == (3, 4 * 3, 4)
    assert dense['valid'][0].view(4, 3).tolist() == [[True, True, False]] * 4
    losses = detector(images, masks, _targets(), mode='loss')
    assert {'dense.loss_class', 'dense.loss_bbox', 'dense.loss_giou'} <= set(losses)
    # the box MLP's last layer starts at zero, so at step one only the class loss reaches the trunk
    sum(v for k, v in losses.items() if k.startswith('dense.')).backward()
    assert net.dense_head.box_head.fc2.weight.grad.abs().sum() > 0
    assert net.backbone.conv.weight.grad.abs().sum() > 0
    assert net.transformer.encoder[0].ffn.fc1.weight.grad.abs().sum() > 0
    detector.eval()
    assert 'dense_outputs' not in detector(images, masks, mode='tensor')


def test_deformable_detr_dense_head_level_follows_the_stride_option():
    net = DeformableDETR(TinyBackbone(), num_classes=3, num_queries=4, dense_aux=dict(stride=16, weight_giou=1.0),
                         **SMALL)
    assert net.dense_level == 1 and net.dense_head.weights['loss_giou'] == 1.0
