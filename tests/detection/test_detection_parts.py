"""Matcher, criterion, post-processing and COCO evaluation, each against an independent check."""
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_convert, generalized_box_iou

from detection import HungarianMatcher, SetCriterion, coco_evaluate, postprocess
from detection.position_encoding import SinePositionEncoding


def _random_boxes(n):
    cxcy = torch.rand(n, 2) * 0.6 + 0.2
    wh = torch.rand(n, 2) * 0.3 + 0.05
    return torch.cat([cxcy, wh], 1)


def _brute_force_cost(outputs, target, b, w=(1, 5, 2)):
    """Minimum total DETR cost over every injective assignment of targets to queries."""
    prob = outputs['pred_logits'][b].softmax(-1)
    boxes = outputs['pred_boxes'][b]
    tb = target['boxes']
    giou = generalized_box_iou(box_convert(boxes, 'cxcywh', 'xyxy'), box_convert(tb, 'cxcywh', 'xyxy'))
    cost = (-w[0] * prob[:, target['labels']] + w[1] * torch.cdist(boxes, tb, p=1) - w[2] * giou)
    q, n = cost.shape
    return min(sum(cost[p[j], j].item() for j in range(n)) for p in itertools.permutations(range(q), n))


def test_matcher_finds_the_optimal_assignment():
    torch.manual_seed(1)
    outputs = dict(pred_logits=torch.randn(3, 6, 5), pred_boxes=_random_boxes(18).view(3, 6, 4))
    targets = [dict(labels=torch.randint(0, 4, (n,)), boxes=_random_boxes(n)) for n in (3, 0, 4)]
    indices = HungarianMatcher()(outputs, targets)
    assert [len(i) for i, _ in indices] == [3, 0, 4]
    for b, (t, (qi, ti)) in enumerate(zip(targets, indices)):
        if len(t['labels']) == 0:
            continue
        assert sorted(ti.tolist()) == list(range(len(t['labels'])))  # every target matched once
        assert len(set(qi.tolist())) == len(qi)                       # by distinct queries
        prob = outputs['pred_logits'][b].softmax(-1)
        boxes = outputs['pred_boxes'][b]
        giou = generalized_box_iou(box_convert(boxes[qi], 'cxcywh', 'xyxy'),
                                   box_convert(t['boxes'][ti], 'cxcywh', 'xyxy')).diag()
        cost = (-prob[qi, t['labels'][ti]] + 5 * (boxes[qi] - t['boxes'][ti]).abs().sum(1) - 2 * giou).sum()
        assert cost.item() == pytest.approx(_brute_force_cost(outputs, t, b), abs=1e-5)


def test_matcher_with_no_targets_anywhere():
    outputs = dict(pred_logits=torch.randn(2, 5, 3), pred_boxes=_random_boxes(10).view(2, 5, 4))
    targets = [dict(labels=torch.zeros(0, dtype=torch.int64), boxes=torch.zeros(0, 4))] * 2
    assert all(len(q) == 0 and len(t) == 0 for q, t in HungarianMatcher()(outputs, targets))


def test_matcher_rejects_non_finite_predictions():
    outputs = dict(pred_logits=torch.randn(1, 4, 3), pred_boxes=_random_boxes(4).view(1, 4, 4))
    outputs['pred_logits'][0, 1, 0] = float('nan')
    targets = [dict(labels=torch.tensor([0]), boxes=_random_boxes(1))]
    with pytest.raises(FloatingPointError, match='non-finite'):
        HungarianMatcher()(outputs, targets)


def test_focal_matcher_prefers_the_confident_query():
    logits = torch.full((1, 3, 2), -5.0)
    logits[0, 2, 1] = 5.0
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])
    targets = [dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]]))]
    (q, t), = HungarianMatcher(cost_class=2, focal=True)(dict(pred_logits=logits, pred_boxes=boxes), targets)
    assert q.tolist() == [2]


def test_criterion_box_losses_vanish_on_perfect_boxes_and_count_per_box():
    boxes = _random_boxes(4).view(1, 4, 4)
    targets = [dict(labels=torch.tensor([0, 1]), boxes=boxes[0, :2].clone())]
    logits = torch.full((1, 4, 3), -10.0)
    logits[0, 0, 0] = logits[0, 1, 1] = 10.0
    logits[0, 2:, 2] = 10.0  # the rest confidently "no object"
    losses = SetCriterion(2, HungarianMatcher())(dict(pred_logits=logits, pred_boxes=boxes), targets)
    assert losses['loss_bbox'].item() == pytest.approx(0, abs=1e-6)
    assert losses['loss_giou'].item() == pytest.approx(0, abs=1e-6)
    assert losses['loss_class'].item() < 1e-3
    # Shift one box: L1 grows by 5 (weight) * |shift| * 1 coordinate / 2 target boxes.
    shifted = boxes.clone()
    shifted[0, 0, 0] += 0.1
    losses = SetCriterion(2, HungarianMatcher())(dict(pred_logits=logits, pred_boxes=shifted), targets)
    assert losses['loss_bbox'].item() == pytest.approx(5 * 0.1 / 2, rel=1e-4)


def test_criterion_accepts_images_without_boxes_and_weights_no_object():
    logits = torch.zeros(2, 3, 4, requires_grad=True)
    boxes = _random_boxes(6).view(2, 3, 4).requires_grad_()
    targets = [dict(labels=torch.zeros(0, dtype=torch.int64), boxes=torch.zeros(0, 4))] * 2
    losses = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)(dict(pred_logits=logits, pred_boxes=boxes), targets)
    # Uniform logits over 4 classes: CE = log 4 whatever the class weight (all targets no-object).
    assert losses['loss_class'].item() == pytest.approx(np.log(4), rel=1e-5)
    assert losses['loss_bbox'].item() == 0
    sum(losses.values()).backward()


def test_criterion_class_loss_on_one_process_is_exactly_cross_entropys_weighted_mean():
    """The class loss is rescaled to the weight sum of all processes (DDP's gradient average is
    then the whole batch's; tests/detection/test_detection_pipeline.py runs two processes); on one process
    the factor is exactly 1: value and gradient are F.cross_entropy's to the bit."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4, requires_grad=True)
    targets = [dict(labels=torch.tensor([0, 2]), boxes=torch.zeros(2, 4)),
               dict(labels=torch.tensor([1]), boxes=torch.zeros(1, 4))]
    indices = [(torch.tensor([3, 0]), torch.tensor([0, 1])), (torch.tensor([2]), torch.tensor([0]))]
    criterion = SetCriterion(3, HungarianMatcher(), eos_coef=0.1)
    ours = criterion.loss_class(logits, targets, indices, num_boxes=3.0)
    (grad,) = torch.autograd.grad(ours, logits)
    target_classes = torch.tensor([[2, 3, 3, 0, 3], [3, 3, 1, 3, 3]])
    reference = F.cross_entropy(logits.transpose(1, 2), target_classes, criterion.empty_weight)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    assert torch.equal(ours, reference) and torch.equal(grad, reference_grad)


def test_postprocess_scales_boxes_to_original_pixels():
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]])
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.1, 0.2]]])
    (res,) = postprocess(dict(pred_logits=logits, pred_boxes=boxes), torch.tensor([[200, 400]]))
    assert res['labels'].tolist() == [0, 1]
    torch.testing.assert_close(res['boxes'][0], torch.tensor([100.0, 50.0, 300.0, 150.0]))
    torch.testing.assert_close(res['boxes'][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))


def test_sine_position_ignores_padding():
    enc = SinePositionEncoding(16)
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[1, :, 5:] = True  # image 1 is 6x5 padded to 6x8
    pos = enc(mask)
    alone = enc(torch.zeros(1, 6, 5, dtype=torch.bool))
    assert pos.shape == (2, 32, 6, 8)
    torch.testing.assert_close(pos[1, :, :, :5], alone[0])


# --- COCO evaluation ----------------------------------------------------------------------

def _gt(image_ids=(0, 1), with_zero_ann_id=True):
    images = [dict(id=i, file_name=f'{i}.png', width=100, height=80) for i in image_ids]
    anns = [dict(id=0 if with_zero_ann_id else 10, image_id=image_ids[0], category_id=3, bbox=[10, 10, 30, 20], area=600, iscrowd=0),
            dict(id=1, image_id=image_ids[1], category_id=7, bbox=[50, 40, 40, 30], area=1200, iscrowd=0),
            dict(id=2, image_id=image_ids[1], category_id=3, bbox=[5, 5, 20, 20], area=400, iscrowd=0)]
    return dict(images=images, annotations=anns, categories=[dict(id=3, name='a'), dict(id=7, name='b')])


def _perfect(gt):
    return [dict(image_id=a['image_id'], category_id=a['category_id'], bbox=a['bbox'], score=0.9)
            for a in gt['annotations']]


def test_perfect_detections_score_one_even_with_id_zero():
    gt = _gt()
    stats = coco_evaluate(gt, _perfect(gt))
    assert set(stats) == {'AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl'}
    assert stats['AP'] == pytest.approx(1.0) and stats['AR100'] == pytest.approx(1.0)


def test_empty_detections_score_zero():
    assert all(v == 0 for v in coco_evaluate(_gt(), []).values())


def test_detections_on_unknown_images_are_refused():
    with pytest.raises(ValueError, match='absent from the ground truth'):
        coco_evaluate(_gt(), [dict(image_id=99, category_id=3, bbox=[0, 0, 1, 1], score=1.0)])


def test_matches_pycocotools_run_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    gt = _gt(image_ids=(4, 9), with_zero_ann_id=False)
    dets = []
    for a in gt['annotations']:
        for _ in range(3):
            x, y, w, h = (np.array(a['bbox']) + rng.normal(0, 4, 4)).tolist()
            dets.append(dict(image_id=a['image_id'], category_id=int(rng.choice([3, 7])),
                             bbox=[x, y, abs(w), abs(h)], score=float(rng.random())))
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(gt))
    coco = COCO(str(path))
    ev = COCOeval(coco, coco.loadRes(dets), 'bbox')
    ev.evaluate(), ev.accumulate(), ev.summarize()
    ours = coco_evaluate(str(path), dets)
    np.testing.assert_allclose(list(ours.values()), ev.stats, atol=1e-12)


def test_faster_coco_eval_gives_identical_numbers():
    rng = np.random.default_rng(1)
    images = [dict(id=i, file_name=f'{i}.png', width=640, height=480) for i in range(0, 30)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 380)
            w, h = rng.uniform(4, 140), rng.uniform(4, 100)
            cat = int(rng.choice([1, 2, 7]))
            anns.append(dict(id=len(anns), image_id=img['id'], category_id=cat, bbox=[x, y, w, h],
                             area=w * h, iscrowd=int(rng.random() < 0.05)))
            for _ in range(3):
                dets.append(dict(image_id=img['id'], category_id=int(rng.choice([1, 2, 7, cat, cat])),
                                 bbox=(np.array([x, y, w, h]) + rng.normal(0, 6, 4)).clip(1).tolist(),
                                 score=float(rng.random())))
    gt = dict(images=images, annotations=anns, categories=[dict(id=c, name=str(c)) for c in (1, 2, 7)])
    slow, fast = coco_evaluate(gt, dets), coco_evaluate(gt, dets, backend='faster')
    np.testing.assert_allclose(list(fast.values()), list(slow.values()), atol=1e-12)
    assert slow['AP'] > 0.05  # a non-trivial case


def test_resnet_frozen_batch_norms_folded_into_their_convs():
    """DETR-R50's frozen batch norms (torchvision's FrozenBatchNorm2d) computed inside the
    convolution before them: same function (float rounding), same state-dict keys, same gradients
    on the trained conv weights, and no norm runs as a pass of its own."""
    from torchvision.models import resnet50
    from torchvision.ops.misc import FrozenBatchNorm2d

    from detection.backbone import FrozenNormResNet
    plain = resnet50(norm_layer=FrozenBatchNorm2d)
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, FrozenBatchNorm2d):  # a non-trivial affine map in every norm
                m.weight.uniform_(0.5, 1.5), m.bias.normal_(), m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    folded = FrozenNormResNet()
    folded.load_state_dict(plain.state_dict())
    assert list(folded.state_dict()) == list(plain.state_dict())
    norms = [m for m in folded.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(norms) == 53  # one after every conv
    called = []
    hooks = [m.register_forward_hook(lambda *a: called.append(1)) for m in norms]
    x = torch.randn(1, 3, 64, 96)
    a, b = plain(x), folded(x)
    for h in hooks:
        h.remove()
    assert called == []  # every norm applied through its conv
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    a.square().mean().backward()
    b.square().mean().backward()
    for name in ('layer4.2.conv3.weight', 'layer2.0.downsample.0.weight', 'conv1.weight'):
        g_plain, g_folded = plain.get_parameter(name).grad, folded.get_parameter(name).grad
        torch.testing.assert_close(g_folded, g_plain, rtol=1e-3, atol=1e-3 * g_plain.abs().max().item())
