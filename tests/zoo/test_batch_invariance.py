"""An image gives the same features and detections alone or batched beside a larger image.

A detector pads a batch to its largest image; before the backbone took the padding mask, real
tokens attended to padding and position tables were resampled to the padded grid, so an image's
boxes moved with its batch-mates. Reference here: the same image run alone (padded only to the
collate function's multiple of 32), compared on its real region. Tolerance: float32 rounding of
sums taken in another order (1e-4 absolute on unit-scale features)."""
import pytest
import torch

import zoo
from detection.data.coco import collate_detection

from test_window_attention import ALL_FAMILIES

ATOL = 1e-4


def _image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, h, w, generator=g)


def _batch(*images):
    batch = collate_detection([(img, {}) for img in images])
    return batch['inputs'], batch['masks']


def _model(name, **kw):
    torch.manual_seed(0)
    depth = {'cvt_13': {}, 'ceit_t': dict(depth=3)}.get(name, dict(depth=3))
    model = zoo.create_model(name, num_classes=0, **depth, **kw)
    for m in model.modules():  # non-trivial running statistics, as a trained model has
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _assert_same_on_real_region(alone, batched, image, strides):
    for a, b, s in zip(alone, batched, strides):
        h, w = -(-image.shape[1] // s), -(-image.shape[2] // s)
        torch.testing.assert_close(b[0, :, :h, :w], a[0, :, :h, :w], rtol=0, atol=ATOL)
        assert (b[0, :, h:] == 0).all() and (b[0, :, :, w:] == 0).all()


# CvT has no window attention (set_window_attention refuses it)
@pytest.mark.parametrize('name, window', [(n, w) for n in ALL_FAMILIES for w in (0, 3)
                                          if not (w and n == 'cvt_13')])
def test_backbone_features_do_not_depend_on_the_batch(name, window):
    model = _model(name)
    if window:
        model.set_window_attention(window, global_blocks=1)
    small, large = _image(80, 112, 1), _image(160, 224, 2)
    strides = [f['stride'] for f in model.feature_info]
    with torch.no_grad():
        alone = model.forward_feature_maps(*_batch(small))
        batched = model.forward_feature_maps(*_batch(small, large))
        large_alone = model.forward_feature_maps(*_batch(large))
    _assert_same_on_real_region(alone, batched, small, strides)
    # the large image, padded by nothing, is unchanged by its smaller batch-mate too
    for a, b in zip(large_alone, batched):
        torch.testing.assert_close(b[1:], a, rtol=0, atol=ATOL)


def test_unpadded_batch_takes_the_unmasked_path():
    """A mask with no padding changes nothing: the same tensors as without a mask."""
    model = _model('deit_tiny_patch16_224')
    images, mask = _batch(_image(64, 96, 3), _image(64, 96, 4))
    assert not mask.any()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_feature_maps(images, mask)[0],
                                   model.forward_feature_maps(images)[0], rtol=0, atol=0)


# --- the detectors --------------------------------------------------------------------------------

TINY = dict(num_queries=8, hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64,
            dropout=0.0)


def _detector(kind, name):
    from detection.deformable_detr import DeformableDETR
    from detection.detr import DETR
    torch.manual_seed(0)
    backbone = dict(name=name, depth=2) if name != 'cvt_13' else dict(name=name, out_indices=(1, 2))
    if kind == 'detr':
        return DETR(backbone, num_classes=3, **TINY).eval()
    model = DeformableDETR(backbone, num_classes=3, num_feature_levels=3, enc_points=2, dec_points=2,
                           **TINY).eval()
    with torch.no_grad():  # the official init zeroes the box deltas: boxes would ignore the image
        model.bbox_embed[0].layers[-1].weight.normal_(0, 0.1)
    return model


@pytest.mark.parametrize('kind', ['detr', 'deformable'])
@pytest.mark.parametrize('name', ALL_FAMILIES)
def test_detections_do_not_depend_on_the_batch(kind, name):
    """Class logits and boxes (normalised by the image's own size) of the small image, alone
    and beside a larger one."""
    model = _detector(kind, name)
    small, large = _image(80, 112, 1), _image(160, 224, 2)
    with torch.no_grad():
        alone = model(*_batch(small))
        batched = model(*_batch(small, large))
    torch.testing.assert_close(batched['pred_logits'][:1], alone['pred_logits'], rtol=0, atol=ATOL)
    torch.testing.assert_close(batched['pred_boxes'][:1], alone['pred_boxes'], rtol=0, atol=ATOL)


def _detect(model, images, batch_size, focal):
    from detection.detr import postprocess
    dets = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        with torch.no_grad():
            out = model(*_batch(*chunk))
        sizes = torch.tensor([img.shape[1:] for img in chunk])
        for i, res in enumerate(postprocess(out, sizes, focal=focal)):
            for score, label, box in zip(res['scores'].tolist(), res['labels'].tolist(),
                                         res['boxes'].tolist()):
                dets.append(dict(image_id=start + i, category_id=label + 1, score=score,
                                 bbox=[box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    return dets


@pytest.mark.parametrize('kind', ['detr', 'deformable'])
def test_coco_stats_are_the_same_at_batch_1_and_16(kind):
    """A val set of mixed aspect ratios (every fourth image 96x144, the rest 96x96, as COCO's
    images are in every shape). The ground truth is the model's own best boxes at batch 1, so AP
    there is high and any box that moves in a batch of 16 lowers it."""
    from detection.coco_eval import coco_evaluate
    model = _detector(kind, 't2t_vit_7')
    images = [_image(96, 144 if i % 4 == 0 else 96, 10 + i) for i in range(16)]
    ones = _detect(model, images, 1, focal=kind == 'deformable')
    anns = []
    for i in range(len(images)):
        best = sorted((d for d in ones if d['image_id'] == i), key=lambda d: -d['score'])[:2]
        anns += [dict(id=len(anns) + 1, image_id=i, category_id=d['category_id'], bbox=d['bbox'],
                      area=d['bbox'][2] * d['bbox'][3], iscrowd=0) for d in best]
    gt = dict(images=[dict(id=i, height=img.shape[1], width=img.shape[2]) for i, img in enumerate(images)],
              annotations=anns, categories=[dict(id=c, name=str(c)) for c in (1, 2, 3)])
    at_1 = coco_evaluate(gt, ones)
    at_16 = coco_evaluate(gt, _detect(model, images, 16, focal=kind == 'deformable'))
    assert at_1['AP'] > 0.3
    assert {k: round(v, 3) for k, v in at_16.items()} == {k: round(v, 3) for k, v in at_1.items()}
