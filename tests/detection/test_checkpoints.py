"""Official DETR / Deformable DETR checkpoints (and Hugging Face's DETR) load into our detectors.

The official layouts are written out here from the official module trees (facebookresearch/detr
models/transformer.py and detr.py; fundamentalvision/Deformable-DETR models/deformable_transformer.py
and deformable_detr.py), name by name, independently of the converter's rename rules: each
official name is paired with the module of ours that does the same job. A random model is saved
in that layout (class heads spread over the 91 raw COCO ids as the releases have them), loaded
into a fresh COCO-80 model through the paths users take (``load_state_dict`` on the whole
official file, mmengine's ``load_checkpoint`` as ``tools/test.py`` does), and must come back
key by key and give the same outputs.
"""
import pytest
import torch
from mmengine.runner.checkpoint import load_checkpoint

from detection.checkpoints import COCO_CATEGORY_IDS, convert_hf_detr, detect_layout
from detection.detr import DETR
from detection.engine import Detector

SMALL = dict(hidden_dim=64, num_heads=8, enc_layers=2, dec_layers=2, ffn_dim=128)


def _wb(official: str, ours: str) -> dict:
    return {f'{official}.{p}': f'{ours}.{p}' for p in ('weight', 'bias')}


def _mha(official: str, ours: str) -> dict:
    return {f'{official}.in_proj_weight': f'{ours}.in_proj_weight',
            f'{official}.in_proj_bias': f'{ours}.in_proj_bias',
            **_wb(f'{official}.out_proj', f'{ours}.out_proj')}


def _backbone(ours_sd: dict) -> dict:
    # Joiner(Backbone, PositionEmbeddingSine): backbone.0.body is the IntermediateLayerGetter
    return {'backbone.0.body.' + k[len('backbone.body.'):]: k for k in ours_sd if k.startswith('backbone.body.')}


def official_detr_names(ours_sd: dict, enc: int, dec: int) -> dict:
    """official name -> our name, for facebookresearch/detr's DETR (post-norm)."""
    names = _backbone(ours_sd)
    for i in range(enc):
        o, u = f'transformer.encoder.layers.{i}', f'transformer.encoder.{i}'
        names |= _mha(f'{o}.self_attn', f'{u}.self_attn')
        names |= _wb(f'{o}.linear1', f'{u}.ffn.0') | _wb(f'{o}.linear2', f'{u}.ffn.3')
        names |= _wb(f'{o}.norm1', f'{u}.norm1') | _wb(f'{o}.norm2', f'{u}.norm2')
    for i in range(dec):
        o, u = f'transformer.decoder.layers.{i}', f'transformer.decoder.{i}'
        names |= _mha(f'{o}.self_attn', f'{u}.self_attn') | _mha(f'{o}.multihead_attn', f'{u}.cross_attn')
        names |= _wb(f'{o}.linear1', f'{u}.ffn.0') | _wb(f'{o}.linear2', f'{u}.ffn.3')
        for n in (1, 2, 3):
            names |= _wb(f'{o}.norm{n}', f'{u}.norm{n}')
    names |= _wb('transformer.decoder.norm', 'transformer.decoder_norm')
    names |= _wb('input_proj', 'input_proj') | _wb('class_embed', 'class_embed')
    names |= {'query_embed.weight': 'query_embed.weight'}
    for j in range(3):
        names |= _wb(f'bbox_embed.layers.{j}', f'bbox_embed.layers.{j}')
    return names


def _msda(official: str, ours: str) -> dict:
    names = {}
    for part in ('sampling_offsets', 'attention_weights', 'value_proj', 'output_proj'):
        names |= _wb(f'{official}.{part}', f'{ours}.{part}')
    return names


def official_deformable_names(ours_sd: dict, enc: int, dec: int, levels: int, backbone_levels: int,
                              refine: bool, two_stage: bool) -> dict:
    """official name -> our name, for fundamentalvision/Deformable-DETR's DeformableDETR."""
    names = _backbone(ours_sd)
    for lvl in range(levels):
        names |= _wb(f'input_proj.{lvl}.0', f'neck.input_proj.{lvl}.0')  # conv
        names |= _wb(f'input_proj.{lvl}.1', f'neck.input_proj.{lvl}.1')  # GroupNorm
    for i in range(enc):
        o, u = f'transformer.encoder.layers.{i}', f'transformer.encoder.{i}'
        names |= _msda(f'{o}.self_attn', f'{u}.self_attn')
        names |= _wb(f'{o}.norm1', f'{u}.norm1') | _wb(f'{o}.norm2', f'{u}.norm2')
        names |= _wb(f'{o}.linear1', f'{u}.ffn.fc1') | _wb(f'{o}.linear2', f'{u}.ffn.fc2')
    for i in range(dec):
        o, u = f'transformer.decoder.layers.{i}', f'transformer.decoder.{i}'
        names |= _msda(f'{o}.cross_attn', f'{u}.cross_attn') | _mha(f'{o}.self_attn', f'{u}.self_attn')
        # official forward: self_attn -> norm2, cross_attn -> norm1, ffn -> norm3
        names |= _wb(f'{o}.norm2', f'{u}.norm1') | _wb(f'{o}.norm1', f'{u}.norm2') | _wb(f'{o}.norm3', f'{u}.norm3')
        names |= _wb(f'{o}.linear1', f'{u}.ffn.fc1') | _wb(f'{o}.linear2', f'{u}.ffn.fc2')
    names['transformer.level_embed'] = 'transformer.level_embed'
    if two_stage:
        for part in ('enc_output', 'enc_output_norm', 'pos_trans', 'pos_trans_norm'):
            names |= _wb(f'transformer.{part}', f'transformer.{part}')
    else:
        names |= _wb('transformer.reference_points', 'transformer.reference_points')
        names['query_embed.weight'] = 'query_embed.weight'
    for k in range(dec + int(two_stage)):
        names |= _wb(f'class_embed.{k}', f'class_embed.{k}')
        for j in range(3):
            names |= _wb(f'bbox_embed.{k}.layers.{j}', f'bbox_embed.{k}.layers.{j}')
            if refine:  # the decoder holds the same per-layer box heads a second time
                names |= _wb(f'transformer.decoder.bbox_embed.{k}.layers.{j}', f'bbox_embed.{k}.layers.{j}')
        if two_stage:
            names |= _wb(f'transformer.decoder.class_embed.{k}', f'class_embed.{k}')
    return names


def _perturbed(detector: Detector) -> Detector:
    """No tensor at its structured init (zero box deltas, equal biases), eval mode."""
    with torch.no_grad():
        for p in detector.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return detector.eval()


def _spread_classes(value: torch.Tensor, no_object: bool, encoder_head: bool = False) -> torch.Tensor:
    """Our 80 class rows (+ no-object) -> the release's 91 raw-id rows (+ no-object): row of id
    COCO_CATEGORY_IDS[i] = our row i, unused ids random. A two-stage encoder head's row 0 is
    its proposal score and stays at raw row 0."""
    full = torch.randn(91 + int(no_object), *value.shape[1:])
    ids = [0] + COCO_CATEGORY_IDS[1:] if encoder_head else COCO_CATEGORY_IDS
    full[torch.tensor(ids)] = value[:80]
    if no_object:
        full[91] = value[80]
    return full


def official_checkpoint(ours: Detector, names: dict, no_object: bool, encoder_head: str | None = None) -> dict:
    sd = ours.net.state_dict()
    assert sorted(set(names.values())) == sorted(k for k in sd if not k.endswith('num_batches_tracked'))
    official = {}
    for o, u in names.items():
        value = sd[u]
        if u.startswith('class_embed'):
            value = _spread_classes(value, no_object, encoder_head is not None and u.startswith(encoder_head + '.'))
        official[o] = value.clone()
    # the release's file: weights under 'model', with the training state next to them
    return {'model': official, 'optimizer': {'state': {}}, 'lr_scheduler': {}, 'epoch': 499, 'args': None}


def _inputs():
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 64:] = True
    mask[1, :, 96:] = True
    return images, mask


def _assert_same(a: Detector, b: Detector):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    images, mask = _inputs()
    with torch.no_grad():
        oa, ob = a(images, mask), b(images, mask)
    assert oa['pred_boxes'].std() > 0.01
    torch.testing.assert_close(ob['pred_logits'], oa['pred_logits'], atol=0, rtol=0)
    torch.testing.assert_close(ob['pred_boxes'], oa['pred_boxes'], atol=0, rtol=0)


def detr(**kw):
    return Detector(dict(type='DETR', backbone=dict(name='resnet50'), num_queries=10, **dict(SMALL, **kw)),
                    num_classes=80)


def deformable(refine=False, two_stage=False):
    return Detector(dict(type='DeformableDETR', backbone=dict(name='resnet50', out_indices=(0, 1, 2)),
                         num_queries=10, with_box_refine=refine, two_stage=two_stage, **SMALL),
                    num_classes=80, focal=True)


def test_official_detr_loads_key_by_key_with_the_same_outputs(tmp_path):
    ours = _perturbed(detr())
    ckpt = official_checkpoint(ours, official_detr_names(ours.net.state_dict(), 2, 2), no_object=True)
    assert ckpt['model']['class_embed.weight'].shape == (92, 64)
    assert detect_layout(ckpt['model']) == 'official_detr'
    fresh = detr().eval()
    fresh.load_state_dict(ckpt, strict=True)  # the whole file, as torch.load gives it
    _assert_same(ours, fresh)
    # tools/test.py's path: cfg.load_from -> mmengine's load_checkpoint (non-strict by itself)
    path = tmp_path / 'detr-r50-e632da11.pth'
    torch.save(ckpt, path)
    via_mmengine = detr().eval()
    load_checkpoint(via_mmengine, str(path), map_location='cpu')
    _assert_same(ours, via_mmengine)


@pytest.mark.parametrize('refine, two_stage', [(False, False), (True, False), (True, True)],
                         ids=['plain', 'refine', 'two_stage'])
def test_official_deformable_detr_loads_key_by_key_with_the_same_outputs(refine, two_stage, tmp_path):
    ours = _perturbed(deformable(refine, two_stage))
    names = official_deformable_names(ours.net.state_dict(), 2, 2, 4, 3, refine, two_stage)
    ckpt = official_checkpoint(ours, names, no_object=False, encoder_head='class_embed.2' if two_stage else None)
    assert detect_layout(ckpt['model']) == 'official_deformable_detr'
    path = tmp_path / 'r50_deformable_detr-checkpoint.pth'
    torch.save(ckpt, path)
    fresh = deformable(refine, two_stage).eval()
    load_checkpoint(fresh, str(path), map_location='cpu')
    _assert_same(ours, fresh)
    if two_stage:
        images, mask = _inputs()
        with torch.no_grad():
            torch.testing.assert_close(fresh(images, mask)['enc_outputs']['pred_logits'],
                                       ours(images, mask)['enc_outputs']['pred_logits'], atol=0, rtol=0)


def test_wrong_layouts_are_named():
    ours = _perturbed(detr())
    ckpt = official_checkpoint(ours, official_detr_names(ours.net.state_dict(), 2, 2), no_object=True)
    with pytest.raises(ValueError, match=r'official DETR layout.*builds DeformableDETR.*detr_r50'):
        deformable().load_state_dict(ckpt)
    plain = _perturbed(deformable())
    plain_ckpt = official_checkpoint(plain, official_deformable_names(plain.net.state_dict(), 2, 2, 4, 3, False, False),
                                     no_object=False)
    with pytest.raises(ValueError, match=r'with_box_refine=False.*model\.detector\.with_box_refine=False'):
        deformable(refine=True).load_state_dict(plain_ckpt)
    # a deeper model than the checkpoint: the layers that are not there are named
    with pytest.raises(ValueError, match=r'official DETR layout.*missing.*transformer\.encoder\.2'):
        detr(enc_layers=3).load_state_dict(ckpt)
    small = Detector(dict(type='DETR', backbone=dict(name='resnet50'), num_queries=10, **SMALL), num_classes=5)
    with pytest.raises(ValueError, match=r'91 classes \+ no-object and the model 5.*model\.num_classes=91'):
        small.load_state_dict(ckpt)


def test_hugging_face_detr_matches_after_conversion():
    """Hugging Face's DetrForObjectDetection (random timm ResNet-50, offline) through
    convert_hf_detr: the same logits and boxes on a padded batch."""
    transformers = pytest.importorskip('transformers')
    cfg = transformers.DetrConfig(
        backbone='resnet50', use_timm_backbone=True, use_pretrained_backbone=False, d_model=64,
        encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=10, num_labels=5)
    hf = transformers.DetrForObjectDetection(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if 'backbone' not in name:
                p.add_(torch.randn_like(p) * 0.1)
    assert detect_layout(hf.state_dict()) == 'hf_detr'
    ours = DETR(dict(name='resnet50'), num_classes=5, num_queries=10, **SMALL).eval()
    ours.load_state_dict(convert_hf_detr(hf.state_dict()), strict=True)
    images, mask = _inputs()
    with torch.no_grad():
        theirs = hf(pixel_values=images, pixel_mask=(~mask).long())
        out = ours(images, mask)
    assert theirs.pred_boxes.std() > 0.01
    torch.testing.assert_close(out['pred_logits'], theirs.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(out['pred_boxes'], theirs.pred_boxes, atol=1e-4, rtol=0)
