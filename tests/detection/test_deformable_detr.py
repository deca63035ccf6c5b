"""Deformable DETR: the attention op against two independent forms, Hugging Face parity, the
neck, every backbone family through its config, refinement, two-stage, and learning."""
import glob
import os

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from mmengine.config import Config
from torch.autograd.graph import saved_tensors_hooks

from detection import ms_deform_attn
from detection.deformable_detr import DeformableDETR, convert_hf_deformable_detr
from detection.ms_deform_attn import MSDeformAttn
from test_detr_configs import ROOT, check_trains_and_evaluates, tiny_batch  # noqa: F401 (fixture)

SHAPES = [(6, 8), (3, 4), (2, 2), (1, 1)]


def _inputs(n=2, q=5, m=2, d=3, p=3, shapes=SHAPES, dtype=torch.float32):
    spatial = torch.tensor(shapes)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(n, int(sizes.sum()), m, d, dtype=dtype)
    # a margin beyond [0, 1] so some samples fall (partly) outside and read zeros
    locations = (torch.rand(n, q, m, len(shapes), p, 2, dtype=dtype) * 1.2 - 0.1)
    weights = torch.rand(n, q, m, len(shapes), p, dtype=dtype)
    return value, spatial, starts, locations, weights


def reference_form(value, spatial, starts, locations, weights):
    """The reference pure-PyTorch form: every level's samples stacked, then weighted and summed."""
    n, _, m, d = value.shape
    q, num_levels, p = locations.shape[1], locations.shape[3], locations.shape[4]
    samples = []
    for level, (h, w) in enumerate(spatial.tolist()):
        v = value[:, starts[level]:starts[level] + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        grid = (2 * locations[:, :, :, level] - 1).transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    stacked = torch.stack(samples, dim=-2).flatten(-2)  # (N*M, D, Lq, L*P)
    a = weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
    return (stacked * a).sum(-1).view(n, m * d, q).transpose(1, 2)


def naive_bilinear(value, spatial, starts, locations, weights):
    """Bilinear interpolation by hand: location (x, y) in [0, 1] is pixel (x W - 0.5, y H - 0.5),
    the four neighbours weighted by area, neighbours outside the map read zero."""
    n, _, m, d = value.shape
    out = 0
    for level, (h, w) in enumerate(spatial.tolist()):
        v = value[:, starts[level]:starts[level] + h * w].reshape(n, h, w, m, d)
        x = locations[:, :, :, level, :, 0] * w - 0.5  # (N, Lq, M, P)
        y = locations[:, :, :, level, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        for dx in (0, 1):
            for dy in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                corner = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                xi, yi = xi.clamp(0, w - 1).long(), yi.clamp(0, h - 1).long()
                heads = torch.arange(m)[None, None, :, None].expand_as(xi)
                batch = torch.arange(n)[:, None, None, None].expand_as(xi)
                picked = v[batch, yi, xi, heads]  # (N, Lq, M, P, D)
                coef = corner * inside * weights[:, :, :, level]
                out = out + (picked * coef[..., None]).sum(3)
    return rearrange(out, 'n q m d -> n q (m d)')


def test_matches_the_reference_form_and_hand_bilinear():
    args = _inputs()
    ours = ms_deform_attn(*args)
    assert ours.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(ours, reference_form(*args), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, naive_bilinear(*args), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_low_precision_stays_close_to_float32(dtype):
    args = _inputs(d=8, p=4)
    expected = ms_deform_attn(*args)
    low = [a.to(dtype) if a.is_floating_point() else a for a in args]
    out = ms_deform_attn(*low)
    assert out.dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-2
    torch.testing.assert_close(out.float(), expected, rtol=tol, atol=tol)


def test_bfloat16_value_with_float32_locations_samples_in_float32():
    value, spatial, starts, locations, weights = _inputs(d=8, p=4, shapes=[(40, 167), (20, 84)])
    expected = ms_deform_attn(value, spatial, starts, locations, weights)
    mixed = ms_deform_attn(value.bfloat16(), spatial, starts, locations, weights)
    all_low = ms_deform_attn(value.bfloat16(), spatial, starts, locations.bfloat16(), weights.bfloat16())
    assert mixed.dtype == torch.bfloat16
    err_mixed, err_low = [(o.float() - expected).abs().mean() for o in (mixed, all_low)]
    assert err_mixed < err_low  # bfloat16 locations lose sub-pixel precision on a 167-wide map


def test_gradcheck_float64():
    value, spatial, starts, locations, weights = _inputs(n=1, q=2, m=2, d=2, p=2, shapes=[(3, 4), (2, 2)],
                                                         dtype=torch.float64)
    # away from pixel-centre lines, where bilinear interpolation has kinks
    locations = (locations * 0.8 + 0.1).requires_grad_()
    value.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, loc, a: ms_deform_attn(v, spatial, starts, loc, a),
                                    (value, locations, weights), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('queries', [5, 50])
def test_keeps_fewer_tensors_for_backward_than_the_reference(queries):
    """Few queries (the decoder) or many (the encoder), level by level holds no more than the
    stacked form: measured as the bytes autograd saves for the backward pass, at Deformable
    DETR's head size D=32."""
    def saved_bytes(fn, args):
        total = []
        with saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t, lambda t: t):
            fn(*args)
        return sum(total)
    value, spatial, starts, locations, weights = _inputs(q=queries, m=4, d=32, p=4)
    args = (value.requires_grad_(), spatial, starts, locations.requires_grad_(), weights.requires_grad_())
    assert saved_bytes(ms_deform_attn, args) <= saved_bytes(reference_form, args)


@pytest.mark.parametrize('regime', ['decoder', 'encoder'])
def test_equals_the_reference_in_value_and_gradients(regime):
    """Few queries (the decoder) and every position a query (the encoder), float64, with points
    partly and wholly outside their map: the output and the gradients of value, locations and
    weights, for each subset of inputs that needs a gradient."""
    size = sum(h * w for h, w in SHAPES)
    queries = 4 if regime == 'decoder' else size
    value, spatial, starts, locations, weights = _inputs(q=queries, m=2, d=4, p=3, dtype=torch.float64)
    # wholly outside (beyond every side, and far), on a corner, and straddling an edge
    locations[:, 0, 0, :, 0] = torch.tensor([-0.9, 0.5], dtype=torch.float64)
    locations[:, 0, 1, :, 1] = torch.tensor([0.5, 1.7], dtype=torch.float64)
    locations[:, 1, 0, :, 2] = torch.tensor([-1e4, 3e4], dtype=torch.float64)
    locations[:, 1, 1, :, 0] = torch.tensor([1.01, -0.02], dtype=torch.float64)
    locations[:, 2, :, :, 1] = torch.tensor([0.0, 1.0], dtype=torch.float64)
    gradient = torch.randn(2, queries, 2 * 4, dtype=torch.float64)
    for needs in [(True, True, True), (False, True, True), (True, False, False)]:
        results = []
        for fn in (ms_deform_attn, reference_form):
            inputs = [t.detach().clone().requires_grad_(r) for t, r in zip((value, locations, weights), needs)]
            out = fn(inputs[0], spatial, starts, inputs[1], inputs[2])
            wanted = [t for t in inputs if t.requires_grad]
            results.append([out, *torch.autograd.grad(out, wanted, gradient)])
        assert results[0][0].dtype == torch.float64
        for ours, expected in zip(*results):
            torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('change, message', [
    (lambda a: a.__setitem__(0, a[0][..., 0]), 'value must be'),
    (lambda a: a.__setitem__(1, a[1][:3]), 'spatial_shapes must be'),
    (lambda a: a.__setitem__(1, a[1] + 1), 'positions but the levels'),
    (lambda a: a.__setitem__(2, a[2].flip(0)), 'level_start_index'),
    (lambda a: a.__setitem__(3, a[3][..., 0]), 'sampling_locations must be'),
    (lambda a: a.__setitem__(4, a[4][..., :2]), 'attention_weights must be'),
    (lambda a: a.__setitem__(3, a[3][:, :, :1]) or a.__setitem__(4, a[4][:, :, :1]), '2 heads'),
])
def test_bad_shapes_are_explained(change, message):
    args = list(_inputs())
    change(args)
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*args)


def test_module_init_ignores_padding_and_takes_boxes():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=16, num_levels=2, num_heads=8, num_points=2)
    bias = attn.sampling_offsets.bias.view(8, 2, 2, 2)
    torch.testing.assert_close(bias[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0]]))  # head 0: +x
    torch.testing.assert_close(bias[2, 1], torch.tensor([[0.0, 1.0], [0.0, 2.0]]), atol=1e-6, rtol=0)
    shapes = torch.tensor([[4, 4], [2, 2]])
    starts = torch.tensor([0, 16])
    query, value = torch.randn(1, 3, 16), torch.randn(1, 20, 16)
    padding = torch.zeros(1, 20, dtype=torch.bool)
    padding[0, [3, 7, 19]] = True
    ref = torch.rand(1, 3, 2, 2)
    out = attn(query, ref, value, shapes, starts, padding)
    noisy = value.clone()
    noisy[0, [3, 7, 19]] = 100.0
    torch.testing.assert_close(attn(query, ref, noisy, shapes, starts, padding), out)
    assert not torch.allclose(attn(query, ref, noisy, shapes, starts, None), out)
    boxes = attn(query, torch.rand(1, 3, 2, 4), value, shapes, starts, padding)
    assert boxes.shape == (1, 3, 16)
    with pytest.raises(ValueError, match='end in 2'):
        attn(query, torch.rand(1, 3, 2, 3), value, shapes, starts)


# --- parity with Hugging Face -------------------------------------------------------------------

@pytest.mark.parametrize('refine, two_stage', [(False, False), (True, False), (True, True)],
                         ids=['plain', 'refine', 'two_stage'])
def test_matches_hugging_face(refine, two_stage):
    """Hugging Face's DeformableDetrForObjectDetection (random ResNet-50 from timm, offline),
    weights perturbed so nothing is at its zero init, ported through convert_hf_deformable_detr:
    the same logits and boxes (and two-stage encoder scores) on a padded batch."""
    transformers = pytest.importorskip('transformers')
    cfg = transformers.DeformableDetrConfig(
        backbone='resnet50', use_timm_backbone=True, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=20, two_stage_num_proposals=20,
        num_labels=5, with_box_refine=refine, two_stage=two_stage)
    hf = transformers.DeformableDetrForObjectDetection(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if 'backbone' not in name:
                p.add_(torch.randn_like(p) * 0.1)
    ours = DeformableDETR(dict(name='resnet50', out_indices=(0, 1, 2)), num_classes=5, num_queries=20,
                          hidden_dim=64, enc_layers=2, dec_layers=2, ffn_dim=128,
                          with_box_refine=refine, two_stage=two_stage).eval()
    ours.load_state_dict(convert_hf_deformable_detr(hf.state_dict()), strict=True)
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 64:] = True  # image 1 is 64 x 96 inside the padded batch
    mask[1, :, 96:] = True
    with torch.no_grad():
        theirs = hf(pixel_values=images, pixel_mask=(~mask).long())
        out = ours(images, mask)
    assert out['pred_logits'].shape == (2, 20, 5)
    assert theirs.pred_boxes.std() > 0.01  # not a degenerate comparison
    assert (out['pred_logits'] - theirs.logits).abs().max() <= 1e-4
    assert (out['pred_boxes'] - theirs.pred_boxes).abs().max() <= 1e-4
    if two_stage:
        enc = out['enc_outputs']
        assert (enc['pred_logits'] - theirs.enc_outputs_class).abs().max() <= 1e-4
        assert (enc['pred_boxes'] - theirs.enc_outputs_coord_logits.sigmoid()).abs().max() <= 1e-4


# --- every family through its config -------------------------------------------------------------

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'deformable_detr_*.py')))
FAMILIES = ['cait', 'ceit', 'cpvt', 'cvt', 'deepvit', 'deit', 'r50', 't2t', 'vit']
FAMILY_CONFIGS = [c for c in CONFIGS if os.path.basename(c)[16:-3] in FAMILIES]


def test_one_config_per_family_and_switches_are_one_line():
    assert sorted(os.path.basename(c)[16:-3] for c in FAMILY_CONFIGS) == FAMILIES
    refine = Config.fromfile(os.path.join(ROOT, 'configs', 'deformable_detr_t2t_refine.py'))
    two = Config.fromfile(os.path.join(ROOT, 'configs', 'deformable_detr_t2t_two_stage.py'))
    assert refine.model.detector.with_box_refine and not refine.model.detector.two_stage
    assert two.model.detector.with_box_refine and two.model.detector.two_stage
    assert two.model.focal and two.model.matcher.cost_class == 2.0 and two.optim_wrapper.optimizer.lr == 2e-4


def test_configured_levels_and_lr_groups():
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'deformable_detr_cvt.py'))
    cfg.merge_from_dict({'model.detector.backbone.pretrained': False, 'model.detector.enc_layers': 1,
                         'model.detector.dec_layers': 1})
    model = MODELS.build(cfg.model)
    assert model.net.neck.strides == [8, 16, 32, 64] and model.net.neck.pyramid is None
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = {}
    for group in optim.optimizer.param_groups:
        for p in group['params']:
            lrs[id(p)] = group['lr']
    named = dict(model.named_parameters())
    assert lrs[id(named['net.transformer.decoder.0.cross_attn.sampling_offsets.weight'])] == pytest.approx(2e-5)
    assert lrs[id(named['net.transformer.reference_points.weight'])] == pytest.approx(2e-5)
    backbone = [p for n, p in named.items() if n.startswith('net.backbone') and p.requires_grad]
    assert backbone and all(lrs[id(p)] == pytest.approx(2e-5) for p in backbone)
    # the frozen stage 1 is left out of the optimiser
    assert not any(id(p) in lrs for n, p in named.items() if n.startswith('net.backbone.body.stages.0'))
    assert lrs[id(named['net.transformer.decoder.0.cross_attn.value_proj.weight'])] == pytest.approx(2e-4)


@pytest.mark.slow
@pytest.mark.parametrize('config', FAMILY_CONFIGS, ids=lambda c: os.path.basename(c)[:-3])
def test_family_trains_and_evaluates_through_its_config(config, tiny_batch):  # noqa: F811
    check_trains_and_evaluates(config, tiny_batch, trained=('net.backbone', 'net.neck', 'net.transformer'))


@pytest.mark.parametrize('name', ['refine', 'two_stage'])
def test_refine_and_two_stage_train(name, tiny_batch):  # noqa: F811
    config = os.path.join(ROOT, 'configs', f'deformable_detr_t2t_{name}.py')
    model, losses = check_trains_and_evaluates(config, tiny_batch, {'model.detector.hidden_dim': 64},
                                               trained=('net.neck', 'net.transformer', 'net.class_embed.1'))
    heads = model.net.bbox_embed
    assert heads[0] is not heads[1]  # refinement: one box head per layer
    assert ('enc.loss_class' in losses) == (name == 'two_stage')


def test_two_stage_encoder_loss_treats_every_box_as_class_zero():
    """As the official criterion: encoder proposals are matched and scored class-agnostically,
    every target relabelled 0; the same weights as the decoder's losses."""
    from torchvision.ops import sigmoid_focal_loss

    from detection import HungarianMatcher, SetCriterion
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    enc_boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.5, 0.5, 0.2, 0.2], [0.8, 0.8, 0.1, 0.1]]])
    enc_logits = torch.randn(1, 3, 4)
    outputs = dict(pred_logits=torch.randn(1, 2, 4), pred_boxes=enc_boxes[:, :2],
                   enc_outputs=dict(pred_logits=enc_logits, pred_boxes=enc_boxes))
    targets = [dict(labels=torch.tensor([3]), boxes=box)]
    criterion = SetCriterion(4, HungarianMatcher(cost_class=2, focal=True), weight_class=2.0, focal=True)
    losses = criterion(outputs, targets)
    onehot = torch.zeros(1, 3, 4)
    onehot[0, 1, 0] = 1  # the query on the box, class 0 whatever the label
    expected = sigmoid_focal_loss(enc_logits, onehot, 0.25, 2.0, reduction='sum') / 1 * 2.0
    torch.testing.assert_close(losses['enc.loss_class'], expected)
    assert losses['enc.loss_bbox'].item() == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize('info, levels', [
    ([dict(channels=48, stride=16)], 4),                                  # plain ViT: pyramid
    ([dict(channels=24, stride=8), dict(channels=48, stride=16)], 4),     # CvT stages 2, 3
    ([dict(channels=8, stride=8), dict(channels=16, stride=16), dict(channels=32, stride=32)], 4),
    ([dict(channels=8, stride=8), dict(channels=16, stride=16), dict(channels=32, stride=32)], 3),
])
def test_neck_gives_every_level_at_its_stride(info, levels):
    from detection.neck import MultiScaleNeck
    neck = MultiScaleNeck(info, hidden_dim=32, num_levels=levels)
    maps = [torch.randn(2, f['channels'], 128 // f['stride'], 192 // f['stride']) for f in info]
    out = neck(maps)
    assert neck.strides == [8, 16, 32, 64][:levels]
    assert [tuple(x.shape) for x in out] == [(2, 32, 128 // s, 192 // s) for s in neck.strides]


@pytest.mark.slow
def test_deformable_detr_overfits_a_few_images(tmp_path):
    """Learning is real: 4 images, 120 steps, AP50 on those images >= 0.9 (1.0 when this test
    was written, 0.92 after 80 steps)."""
    from detection.engine import Detector
    from test_detection_pipeline import TINY_DETR, overfit_ap50
    # window attention on, as in the shipped configs: 2 x 2 windows in the first block
    model = Detector(dict(type='DeformableDETR', backbone=dict(name='deit_tiny_patch16_224', depth=2, img_size=64,
                                                              window_size=2, global_blocks=1),
                          **TINY_DETR), num_classes=3, focal=True,
                     matcher=dict(cost_class=2.0), criterion=dict(weight_class=2.0))
    assert overfit_ap50(model, 120, tmp_path) >= 0.9
