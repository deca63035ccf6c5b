"""Query denoising (DN-DETR; contrastive groups from DINO): the noise, the attention mask, no
information leaking from the denoising queries, the reconstruction targets and losses on a
hand-built case, and a training step of each detector with it switched on."""
import pytest
import torch
from torch import nn

from detection.criterion import SetCriterion
from detection.denoising import (DenoisingQueries, QueryDenoising, denoising_attn_mask,
                                 noise_boxes, noise_labels)
from detection.detr import DETR
from detection.engine import Detector
from detection.matcher import HungarianMatcher

SMALL = dict(hidden_dim=32, num_heads=4, enc_layers=1, dec_layers=3, ffn_dim=64, dropout=0.0)


class TinyBackbone(nn.Module):
    """(B, 3, H, W) -> [(B, 16, H/16, W/16)]: a strided conv, enough to feed the detectors."""
    feature_info = [dict(channels=16, stride=16)]

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 16, 16)

    def forward(self, x):
        return [self.conv(x)]


def _targets():
    return [dict(labels=torch.tensor([0, 2]), boxes=torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])),
            dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.4, 0.4]])),
            dict(labels=torch.zeros(0, dtype=torch.int64), boxes=torch.zeros(0, 4))]


def test_label_noise_flips_about_the_stated_share():
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(20000, dtype=torch.int64)
    noised = noise_labels(labels, num_classes=5, ratio=0.2, generator=g)
    # a flipped label is uniform over 5 classes, so 0.2 * 4/5 of them change
    assert abs((noised != 0).float().mean().item() - 0.16) < 0.01
    assert noised.max() == 4 and noised.min() == 0
    assert torch.equal(noise_labels(labels, 5, 0.0), labels)


def _dino_box_noise(boxes, sign, part, negative, lam):
    """DINO's box noise written out from its definition (Zhang et al., ICLR 2023, Sec. 3.3;
    ``prepare_for_cdn``): boxes (N, 4) cxcywh, sign and part (N, 4), negative (N,) bool. Each xyxy
    corner moves by sign * part * lam * half its side, part raised by 1 on negatives; the corners
    are clamped to the image and the box is read back as cxcywh."""
    cx, cy, w, h = boxes.unbind(-1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    half_sides = torch.stack([w / 2, h / 2, w / 2, h / 2], -1)
    part = part + negative[:, None].float()
    x1, y1, x2, y2 = (corners + sign * part * half_sides * lam).clamp(0.0, 1.0).unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)


def _box_draws(generator, n):
    """The documented order of the box noise's draws: signs randint(0, 2) * 2 - 1, then parts rand."""
    sign = torch.randint(0, 2, (n, 4), generator=generator).float() * 2 - 1
    return sign, torch.rand((n, 4), generator=generator)


def _xyxy(boxes):
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def _random_boxes(n, seed, lo=0.0, hi=1.0):
    """n cxcywh boxes inside the image, centres in [lo, hi], sides up to 0.4 that fit."""
    g = torch.Generator().manual_seed(seed)
    centre = lo + (hi - lo) * torch.rand(n, 2, generator=g)
    room = torch.minimum(centre, 1 - centre) * 2
    wh = torch.minimum(0.02 + 0.38 * torch.rand(n, 2, generator=g), room)
    return torch.cat([centre, wh], -1)


@pytest.mark.parametrize('lam', [0.4, 1.0])  # DN-DETR's lambda (the default here), DINO's
def test_box_noise_is_dinos_corner_formula(lam):
    """Same seed, same draws, same boxes as DINO's formula written out, clipping included."""
    boxes = _random_boxes(500, seed=1)
    negative = torch.arange(500) % 2 == 1
    noised = noise_boxes(boxes, lam, negative, generator=torch.Generator().manual_seed(0))
    sign, part = _box_draws(torch.Generator().manual_seed(0), 500)
    torch.testing.assert_close(noised, _dino_box_noise(boxes, sign, part, negative, lam))
    again = noise_boxes(boxes, lam, negative, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, noised)
    unclipped = _xyxy(boxes) + sign * (part + negative[:, None]) * boxes[:, 2:].repeat(1, 2) / 2 * lam
    assert ((unclipped < 0) | (unclipped > 1)).any()  # the case exercises the clipping
    one = noise_boxes(boxes, lam, negative=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(one, _dino_box_noise(boxes, sign, part, torch.ones(500, dtype=torch.bool), lam))
    assert torch.equal(noise_boxes(boxes, 0.0), boxes)


def test_negatives_corners_move_by_lambda_to_2_lambda_half_sides():
    """Away from the image's border (no clipping), every corner of a positive moves by less than
    lambda half-sides and every corner of a negative by lambda to 2 lambda, in either direction."""
    boxes = _random_boxes(5000, seed=2, lo=0.4, hi=0.6)
    lam = 0.4
    g = torch.Generator().manual_seed(0)
    half = boxes[:, 2:].repeat(1, 2) / 2
    pos = (_xyxy(noise_boxes(boxes, lam, generator=g)) - _xyxy(boxes)) / (lam * half)
    neg = (_xyxy(noise_boxes(boxes, lam, negative=True, generator=g)) - _xyxy(boxes)) / (lam * half)
    assert pos.abs().max() < 1 + 1e-4 and pos.abs().max() > 0.99
    assert neg.abs().min() > 1 - 1e-4 and neg.abs().max() < 2 + 1e-4 and neg.abs().max() > 1.99
    for moves in (pos, neg):  # each corner moves either way, independently of the others
        assert 0.45 < (moves > 0).float().mean() < 0.55


@pytest.mark.parametrize('lam', [0.4, 1.0, 2.0])
def test_noised_boxes_lie_in_the_image(lam):
    boxes = torch.cat([_random_boxes(2000, seed=3), torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.05, 0.95, 0.1, 0.1]])])
    for negative in (False, True):
        corners = _xyxy(noise_boxes(boxes, lam, negative, generator=torch.Generator().manual_seed(0)))
        assert corners.min() >= -1e-6 and corners.max() <= 1 + 1e-6


def test_a_negative_can_be_a_pure_shift_or_a_pure_rescale():
    """DINO moves the four corners independently: both x corners (and both y corners) moving the
    same way shift a negative without resizing it; moving apart resizes it in place. Either way
    it is at least lambda half-sides from the object at every corner."""
    box = torch.tensor([[0.5, 0.4, 0.2, 0.1]])
    lam, part = 0.4, torch.full((1, 4), 0.5)  # negatives add 1: each corner moves 1.5 lambda half-sides
    shift = noise_boxes(box, lam, negative=True, draws=(torch.tensor([[1.0, -1.0, 1.0, -1.0]]), part))
    torch.testing.assert_close(shift, torch.tensor([[0.5 + 1.5 * lam * 0.1, 0.4 - 1.5 * lam * 0.05, 0.2, 0.1]]))
    grow = noise_boxes(box, lam, negative=True, draws=(torch.tensor([[-1.0, -1.0, 1.0, 1.0]]), part))
    torch.testing.assert_close(grow, torch.tensor([[0.5, 0.4, 0.2 * (1 + 1.5 * lam), 0.1 * (1 + 1.5 * lam)]]))
    # the same draws on a positive: the corners move by 0.5 lambda half-sides
    near = noise_boxes(box, lam, draws=(torch.tensor([[1.0, -1.0, 1.0, -1.0]]), part))
    torch.testing.assert_close(near, torch.tensor([[0.5 + 0.5 * lam * 0.1, 0.4 - 0.5 * lam * 0.05, 0.2, 0.1]]))


def _labels_of(dn: QueryDenoising, q: DenoisingQueries) -> torch.Tensor:
    """The noised labels of the real queries, read back from their content embedding."""
    content = q.content[q.valid][:, :-1]
    same = (content[:, None] == dn.label_embed.weight[None]).all(-1)
    assert (same.sum(-1) == 1).all()
    return same.float().argmax(-1)


def test_label_flip_rate_at_the_defaults_is_dinos():
    """DINO flips a label where rand < label_noise_ratio * 0.5, 0.25 at its default 0.5, to a
    uniformly random class (possibly itself): with 100 classes 0.25 * 0.99 of the labels change."""
    dn = QueryDenoising(num_classes=100, hidden_dim=8, box_noise=0.0, contrastive=True)
    assert dn.label_noise == 0.25
    targets = [dict(labels=torch.zeros(1000, dtype=torch.int64),
                    boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(1000, 1))]
    with torch.no_grad():
        labels = _labels_of(dn, dn(targets, generator=torch.Generator().manual_seed(0)))
    assert len(labels) == 10000  # 5 groups x (positives + negatives) x 1000 boxes
    flipped = (labels != 0).float().mean().item() / 0.99
    assert abs(flipped - 0.25) < 0.015
    assert (labels[:5000] != 0).any() and (labels[5000:] != 0).any()  # negatives' labels are noised too


def test_queries_draw_their_noise_in_the_documented_order():
    """The real queries in query order (image, group, positives then negatives, box) draw the
    labels' p and classes, then the boxes' signs and parts: reproduced here from the seed."""
    dn = QueryDenoising(num_classes=3, hidden_dim=8, num_groups=2, contrastive=True)
    with torch.no_grad():
        q = dn(_targets(), generator=torch.Generator().manual_seed(0))
    t = _targets()
    order = [(0, [0, 1])] * 4 + [(1, [0])] * 4  # image 0: 2 groups x (pos, neg); image 1 the same
    gt_labels = torch.cat([t[i]['labels'][k] for i, k in order])
    gt_boxes = torch.cat([t[i]['boxes'][k] for i, k in order])
    negative = torch.tensor([False, False, True, True] * 2 + [False, True] * 2)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(12, generator=g)
    classes = torch.randint(0, 3, (12,), generator=g)
    sign, part = _box_draws(g, 12)
    assert q.valid.sum() == 12
    torch.testing.assert_close(q.boxes[q.valid], _dino_box_noise(gt_boxes, sign, part, negative, 0.4))
    assert torch.equal(_labels_of(dn, q), torch.where(p < 0.25, classes, gt_labels))
    assert torch.equal(q.positive[q.valid], ~negative)


def test_attention_mask_blocks_matching_rows_and_other_groups():
    mask = denoising_attn_mask(num_groups=3, group_size=2, num_matching=4)
    assert mask.shape == (10, 10)
    assert mask[6:, :6].all() and not mask[6:, 6:].any()  # matching sees no denoising query
    for g in range(3):
        rows = slice(2 * g, 2 * g + 2)
        assert not mask[rows, 2 * g:2 * g + 2].any()  # its own group
        assert not mask[rows, 6:].any()  # the matching queries
        assert mask[rows, :6].sum() == 2 * 4  # every other group's two columns, on both rows


def test_queries_layout_targets_and_padding():
    dn = QueryDenoising(num_classes=3, hidden_dim=32, num_groups=2, label_noise=0.0, box_noise=0.0,
                        contrastive=True)
    q = dn(_targets())
    assert (q.num_groups, q.group_size, q.num_queries) == (2, 4, 8)  # 2 boxes max, x2 for negatives
    # image 0: per group [pos 0, pos 1, neg 0, neg 1]; image 1: [pos 0, pad, neg 0, pad]; image 2: padding
    assert q.target_index.tolist() == [[0, 1, 0, 1] * 2, [0, -1, 0, -1] * 2, [-1] * 8]
    assert q.positive.tolist()[0] == [True, True, False, False] * 2
    assert not q.valid[2].any() and (q.content[2] == 0).all()
    assert torch.allclose(q.boxes[0, :2], _targets()[0]['boxes'])  # no noise asked for
    assert (q.content[0, :, -1] == 1).all()  # the denoising indicator
    assert [(a.tolist(), b.tolist()) for a, b in q.matching_indices()] == [
        ([0, 1, 4, 5], [0, 1, 0, 1]), ([0, 4], [0, 0]), ([], [])]
    assert dn([dict(labels=torch.zeros(0, dtype=torch.int64), boxes=torch.zeros(0, 4))]) is None


def _explicit(dn: DenoisingQueries, **changes) -> DenoisingQueries:
    fields = {k: getattr(dn, k) for k in ('content', 'boxes', 'query_pos', 'target_index', 'positive', 'valid',
                                          'num_groups', 'group_size')}
    fields.update(changes)
    return DenoisingQueries(**fields)


DEFORMABLE = dict(type='DeformableDETR', num_queries=5, num_feature_levels=3, **SMALL)
DETECTORS = {  # Detector arguments: the network, and whether it is trained with focal loss
    'detr': (dict(type='DETR', num_queries=5, denoising=dict(num_groups=3), **SMALL), False),
    'detr_contrastive': (dict(type='DETR', num_queries=5, denoising=dict(num_groups=3, contrastive=True),
                              **SMALL), False),
    'deformable': (dict(DEFORMABLE, denoising=dict(num_groups=3)), True),
    'deformable_refine': (dict(DEFORMABLE, with_box_refine=True, denoising=dict(num_groups=3)), True),
    'deformable_two_stage': (dict(DEFORMABLE, with_box_refine=True, two_stage=True,
                                  denoising=dict(num_groups=3, contrastive=True)), True),
}


def build(name) -> Detector:
    net, focal = DETECTORS[name]
    return Detector(dict(net, backbone=TinyBackbone()), num_classes=3, focal=focal)


@pytest.mark.parametrize('name', DETECTORS)
def test_no_information_leaks_from_denoising_queries(name):
    """The matching queries' outputs are those of a run without denoising; changing one group (or
    one query of it) changes that group's outputs and nothing else."""
    model = build(name).net.eval()
    with torch.no_grad():  # zero-initialised box deltas would hide what a query's content does
        for p in model.parameters():
            if (p == 0).all():
                p.normal_(std=0.1)
    images, masks = torch.randn(3, 3, 64, 96), torch.zeros(3, 64, 96, dtype=torch.bool)
    masks[1, :, 80:] = True
    dn = model.denoising(_targets())
    with torch.no_grad():
        plain = model(images, masks)
        with_dn = model(images, masks, denoising=dn)
        size = dn.group_size
        changed = dn.content.clone()
        changed[:, size:2 * size] = torch.randn_like(changed[:, size:2 * size])  # group 1
        other = model(images, masks, denoising=_explicit(dn, content=changed, query_pos=dn.query_pos + 0.5 * (
            torch.arange(dn.num_queries)[None, :, None] // size == 1)))
        one = dn.content.clone()
        one[0, 0] += 3.0  # a single query of group 0
        single = model(images, masks, denoising=_explicit(dn, content=one))
    assert 'dn_outputs' not in plain and 'dn_outputs' in with_dn
    for key in ('pred_logits', 'pred_boxes'):
        torch.testing.assert_close(with_dn[key], plain[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(other[key], plain[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single[key], plain[key], atol=1e-5, rtol=1e-5)
        for a, b in zip(with_dn['aux_outputs'], other['aux_outputs']):
            torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5)
        ref, new = with_dn['dn_outputs'][key], other['dn_outputs'][key]
        torch.testing.assert_close(new[:, :size], ref[:, :size], atol=1e-5, rtol=1e-5)  # group 0
        torch.testing.assert_close(new[:, 2 * size:], ref[:, 2 * size:], atol=1e-5, rtol=1e-5)  # group 2
        assert (new[:, size:2 * size] - ref[:, size:2 * size]).abs().max() > 1e-3  # group 1 did change
        new = single['dn_outputs'][key]
        torch.testing.assert_close(new[:, size:], ref[:, size:], atol=1e-5, rtol=1e-5)
        assert (new[0, :size] - ref[0, :size]).abs().max() > 1e-4
    if 'enc_outputs' in plain:
        torch.testing.assert_close(with_dn['enc_outputs']['pred_boxes'], plain['enc_outputs']['pred_boxes'])


@pytest.mark.parametrize('focal', [False, True])
def test_reconstruction_targets_and_losses_on_a_hand_built_case(focal):
    """Two groups for an image with boxes A, B and one with box C (padded). Group 0 predicts every
    box exactly; group 1 is off by 0.1 in cx on each box. With the loss weights 1, no matching:
    L1 = (0 + 0.1 * 3) / (3 boxes x 2 groups), GIoU from the shifted boxes alone, padding ignored."""
    boxes = [torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.4, 0.2]]), torch.tensor([[0.5, 0.5, 0.2, 0.4]])]
    targets = [dict(labels=torch.tensor([0, 1]), boxes=boxes[0]), dict(labels=torch.tensor([2]), boxes=boxes[1])]
    dn = QueryDenoising(num_classes=3, hidden_dim=8, num_groups=2, label_noise=0.0, box_noise=0.0)(targets)
    assert dn.target_index.tolist() == [[0, 1, 0, 1], [0, -1, 0, -1]]
    shift = torch.tensor([0.1, 0, 0, 0])
    pred_boxes = torch.zeros(2, 4, 4)
    pred_boxes[0] = torch.cat([boxes[0], boxes[0] + shift])
    pred_boxes[1, 0], pred_boxes[1, 2] = boxes[1][0], boxes[1][0] + shift
    pred_boxes[1, [1, 3]] = torch.tensor([0.9, 0.9, 0.05, 0.05])  # padding: far off, must not count
    c = 3 if focal else 4
    logits = torch.full((2, 4, c), -4.0)
    for i, t in enumerate(targets):
        for q in range(4):
            if dn.target_index[i, q] >= 0:
                logits[i, q, t['labels'][dn.target_index[i, q]]] = 4.0
    logits[1, [1, 3]] = 9.0  # padding's logits: would dominate the class loss if it counted
    criterion = SetCriterion(3, HungarianMatcher(focal=focal), weight_class=1, weight_bbox=1, weight_giou=1,
                             focal=focal)
    losses = criterion.denoising_losses(dict(pred_logits=logits, pred_boxes=pred_boxes, queries=dn), targets, 3.0)
    assert losses['dn.loss_bbox'].item() == pytest.approx(0.1 * 3 / 6, rel=1e-5)
    from torchvision.ops import box_convert, generalized_box_iou
    giou = [generalized_box_iou(box_convert(b[None] + shift, 'cxcywh', 'xyxy'),
                                box_convert(b[None], 'cxcywh', 'xyxy'))[0, 0] for b in (*boxes[0], boxes[1][0])]
    assert losses['dn.loss_giou'].item() == pytest.approx(sum(1 - g.item() for g in giou) / 6, rel=1e-5)
    valid_logits = logits[dn.valid]
    labels = torch.stack([targets[i]['labels'][dn.target_index[i, q]] for i, q in dn.valid.nonzero().tolist()])
    if focal:
        from torchvision.ops import sigmoid_focal_loss
        expected = sigmoid_focal_loss(valid_logits, torch.nn.functional.one_hot(labels, 3).float(),
                                      reduction='sum') / 6
    else:
        expected = torch.nn.functional.cross_entropy(valid_logits, labels)
    assert losses['dn.loss_class'].item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_negatives_are_trained_as_no_object():
    targets = [dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.2, 0.2]]))]
    dn = QueryDenoising(num_classes=3, hidden_dim=8, num_groups=1, contrastive=True)(targets)
    assert dn.positive.tolist() == [[True, False]] and dn.valid.all()
    criterion = SetCriterion(3, HungarianMatcher(), weight_class=1, weight_bbox=1, weight_giou=1)
    logits = torch.tensor([[[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 5.0]]])  # pos says class 1, neg no object
    good = criterion.denoising_losses(dict(pred_logits=logits, pred_boxes=dn.boxes, queries=dn), targets, 1.0)
    bad = criterion.denoising_losses(dict(pred_logits=logits.flip(1), pred_boxes=dn.boxes, queries=dn), targets, 1.0)
    assert good['dn.loss_class'] < 0.05 < bad['dn.loss_class']


@pytest.mark.parametrize('name', DETECTORS)
def test_training_step_with_denoising_and_an_image_without_boxes(name):
    detector = build(name)
    model = detector.net
    images, masks = torch.randn(3, 3, 64, 64), torch.zeros(3, 64, 64, dtype=torch.bool)
    targets = _targets()
    losses = detector(images, masks, targets, mode='loss')
    assert {'dn.loss_class', 'dn.loss_bbox', 'dn.loss_giou', 'dn.d0.loss_bbox', 'dn.d1.loss_giou'} <= set(losses)
    sum(losses.values()).backward()
    assert model.denoising.label_embed.weight.grad.abs().sum() > 0
    assert model.denoising.pos_head.fc1.weight.grad.abs().sum() > 0
    # no box anywhere in the batch: no denoising queries, the usual losses
    empty = [dict(labels=torch.zeros(0, dtype=torch.int64), boxes=torch.zeros(0, 4))] * 3
    losses = detector(images, masks, empty, mode='loss')
    assert not any(k.startswith('dn.') for k in losses) and torch.isfinite(sum(losses.values()))
    # inference: no denoising queries, whatever the targets
    detector.eval()
    out = detector(images, masks, [dict(t, orig_size=torch.tensor([64, 64]), image_id=i)
                                   for i, t in enumerate(targets)], mode='predict')
    assert len(out) == 3


def test_switched_off_the_detector_is_unchanged():
    torch.manual_seed(0)
    plain = DETR(TinyBackbone(), num_classes=3, num_queries=5, **SMALL)
    assert plain.denoising is None
    torch.manual_seed(0)
    with_dn = DETR(TinyBackbone(), num_classes=3, num_queries=5, denoising=True, **SMALL)
    assert with_dn.denoising.num_groups == 5 and with_dn.denoising.label_noise == 0.25
    assert with_dn.denoising.box_noise == 0.4
    assert set(plain.state_dict()) < set(with_dn.state_dict())
    missing = set(with_dn.state_dict()) - set(plain.state_dict())
    assert all(k.startswith('denoising.') for k in missing)


def test_checkpoints_from_before_the_shared_mlp_still_load():
    """Until today's refactor the denoising position head and the dense box head were
    nn.Sequential(Linear, ReLU, Linear), saved as ``.0.`` / ``.2.``: such a checkpoint loads, strict,
    into the same tensors."""
    detector = Detector(dict(SMALL, backbone=TinyBackbone(), denoising=dict(num_groups=2), dense_aux=True),
                        num_classes=3)
    state = detector.state_dict()
    old = {k.replace('.fc1.', '.0.').replace('.fc2.', '.2.')
           if any(m in k for m in ('pos_head', 'box_head')) else k: v.clone() + 1
           for k, v in state.items()}
    assert sum(k.endswith(('_head.0.weight', '_head.2.bias')) for k in old) == 4  # both heads renamed
    fresh = Detector(dict(SMALL, backbone=TinyBackbone(), denoising=dict(num_groups=2), dense_aux=True),
                     num_classes=3)
    fresh.load_state_dict(old, strict=True)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[key] + 1)
