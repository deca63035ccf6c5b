"""Every backbone family trains and evaluates through its DETR config (small inputs)."""
import glob
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS

from detection.engine import predictions_to_coco
from detection import coco_evaluate
from detection.data.coco import CocoDetection, collate_detection
from detection.data.synthetic import make_shapes_dataset
from detection.data.transforms import shapes_test_transforms
from helpers import ROOT

CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'detr_*.py')))
FAMILIES = ['cait', 'ceit', 'cpvt', 'cvt', 'deepvit', 'deit', 'r50', 't2t', 'vit']
# The smallest variant of each config's family keeps the test quick on a 2-core CPU; the config
# itself (its backbone adapter, neck, optimiser groups) is what is exercised.
SMALLEST = dict(t2t_vit_14='t2t_vit_7', vit_base_patch16_224='vit_tiny_patch16_224',
                deit_small_patch16_224='deit_tiny_patch16_224', cait_s24_224='cait_xxs24_224',
                cpvt_s='cpvt_ti', ceit_s='ceit_t')


def test_one_config_per_family():
    assert sorted(os.path.basename(c)[5:-3] for c in CONFIGS) == FAMILIES


def test_backbone_swap_is_one_line():
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'detr_t2t.py'))
    cfg.merge_from_dict({'model.detector.backbone.name': 'cvt_13'})
    assert cfg.model.detector.backbone.name == 'cvt_13'
    assert cfg.model.detector.num_queries == 100 and cfg.model.detector.hidden_dim == 256


def test_official_detr_schedule_ships_and_every_config_names_its_schedule():
    official = Config.fromfile(os.path.join(ROOT, 'configs', '_base_', 'schedules', 'detr_300e.py'))
    assert official.train_cfg.max_epochs == 300
    assert official.param_scheduler[-1].milestones == [200]
    short = Config.fromfile(os.path.join(ROOT, 'configs', '_base_', 'schedules', 'detr_150e.py'))
    assert short.train_cfg.max_epochs == 150 and short.param_scheduler[-1].milestones == [100]
    for path in glob.glob(os.path.join(ROOT, 'configs', '*detr_*.py')):
        with open(path) as f:
            assert '# Schedule:' in f.read(), path


@pytest.mark.parametrize('config, base_lr, base_batch', [('detr_r50.py', 1e-4, 16),
                                                         ('deformable_detr_r50.py', 2e-4, 32)])
def test_lr_scales_with_the_total_batch(config, base_lr, base_batch):
    from zoo.runtime.engine import lr_scale_ratio
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
    assert cfg.optim_wrapper.optimizer.lr == base_lr
    per_process = cfg.train_dataloader.batch_size
    # The configured rate at the base total batch, linearly less on one process.
    assert lr_scale_ratio(cfg.auto_scale_lr, per_process, base_batch // per_process) == 1.0
    assert lr_scale_ratio(cfg.auto_scale_lr, per_process, 1) == per_process / base_batch
    assert lr_scale_ratio(dict(cfg.auto_scale_lr, enable=False), per_process, 1) == 1.0
    with pytest.raises(ValueError, match='base_batch_size must be a positive int'):
        lr_scale_ratio(dict(enable=True), 2, 1)


@pytest.fixture(scope='module')
def tiny_batch(tmp_path_factory):
    root = make_shapes_dataset(str(tmp_path_factory.mktemp('shapes')), num_train=2, num_val=2, size=64, seed=3)
    ds = CocoDetection(root + '/val', root + '/annotations/instances_val.json', shapes_test_transforms(64))
    return ds, collate_detection([ds[0], ds[1]])


def check_trains_and_evaluates(config: str, tiny_batch, overrides: dict | None = None,
                               trained=('net.backbone', 'net.transformer')):
    """Builds ``config`` with its family's smallest backbone, 10 queries, 1 + 2 layers (and
    ``overrides``), takes two training steps and evaluates the two images: losses finite, the
    ``trained`` modules moved, one detection per query (per query and class for focal models)."""
    ds, batch = tiny_batch
    cfg = Config.fromfile(config)
    name = cfg.model.detector.backbone.name
    cfg.merge_from_dict({
        'model.detector.backbone.name': SMALLEST.get(name, name),
        'model.num_classes': 3,
        'model.detector.backbone.pretrained': False,  # no download here
        'model.detector.num_queries': 10, 'model.detector.enc_layers': 1, 'model.detector.dec_layers': 2,
        **(overrides or {}),
    })
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    for _ in range(2):
        losses = model.train_step(dict(batch), optim)
        assert all(torch.isfinite(v) for v in losses.values())
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    for prefix in trained:
        assert any(n.startswith(prefix) for n in moved), f'{prefix} did not train'
    preds = model.val_step(dict(batch))
    dets = predictions_to_coco(preds, ds.cat_ids)
    stats = coco_evaluate(ds.ann_file, dets)
    per_image = 10 * 3 if cfg.model.get('focal', False) else 10
    assert len(dets) == 2 * min(per_image, 100) and 0.0 <= stats['AP'] <= 1.0
    return model, losses


@pytest.mark.parametrize('config', CONFIGS, ids=lambda c: os.path.basename(c)[:-3])
def test_family_trains_and_evaluates_through_its_config(config, tiny_batch):
    check_trains_and_evaluates(config, tiny_batch)


@pytest.mark.parametrize('family', ['vit', 'deit', 'deepvit', 'cait', 'cpvt', 'ceit', 't2t'])
def test_token_family_configs_ship_window_attention_and_stride_32(family):
    """As ViTDet: 14 x 14-token windows with four global blocks, the last one included, and the
    decomposed relative position bias; Deformable DETR's pyramid levels take ViTDet's convs; DETR
    reads the stride-32 map, as it reads R50's C5."""
    for prefix in ('detr', 'deformable_detr'):
        cfg = Config.fromfile(os.path.join(ROOT, 'configs', f'{prefix}_{family}.py'))
        backbone = cfg.model.detector.backbone
        assert backbone.window_size == 14 and backbone.global_blocks in (4, [2, 5, 8, 15]), prefix
        assert backbone.rel_pos is True, prefix
        assert backbone.frozen_blocks >= 3, prefix  # the stem and a quarter of the blocks
    assert cfg.model.detector.get('feature_stride') is None  # Deformable DETR reads every level
    assert cfg.model.detector.vitdet_pyramid is True
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', f'detr_{family}.py'))
    assert cfg.model.detector.feature_stride == 32
    name = cfg.model.detector.backbone.name
    cfg.merge_from_dict({'model.detector.backbone.name': SMALLEST.get(name, name),
                         'model.detector.backbone.pretrained': False})
    net = MODELS.build(cfg.model).net
    windows = [b.window_size for b in net.backbone.body.window_blocks]
    assert windows.count(0) == 4 and set(windows) == {0, 14} and windows[-1] == 0  # ends global
    tables = [None if b.attn.rel_pos_h is None else b.attn.rel_pos_h.shape[0]
              for b in net.backbone.body.window_blocks]
    assert tables == [2 * w - 1 if w else None for w in windows]  # window blocks only
    feat = net.feature_pool(net.backbone(torch.randn(1, 3, 64, 96))[-1])
    assert feat.shape[-2:] == (2, 3)


def test_windows_with_padding_train_through_a_config(tiny_batch):
    """3 x 3 windows on the 4 x 4 grid of 64 px images: padded windows, masked keys."""
    check_trains_and_evaluates(os.path.join(ROOT, 'configs', 'detr_deit.py'), tiny_batch,
                               {'model.detector.backbone.window_size': 3,
                                'model.detector.feature_stride': 16})


def test_evaluating_a_checkpoint_fetches_no_imagenet_weights_and_keeps_their_architecture():
    """test.py / infer.py replace every weight with the checkpoint's: the backbone is built without
    downloading, but as it is with weights (T2T-ViT's attention scale follows them)."""
    from zoo.runtime.engine import without_pretrained
    from zoo.registry import get_model_info
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'detr_t2t.py'))
    assert cfg.model.detector.backbone.pretrained
    model = without_pretrained(cfg.model)
    backbone = model.detector.backbone
    assert backbone.pretrained is False
    assert backbone.qk_scale == get_model_info(backbone.name).weights_arch['qk_scale']
    assert cfg.model.detector.backbone.pretrained  # the config itself is left alone
    r50 = without_pretrained(Config.fromfile(os.path.join(ROOT, 'configs', 'detr_r50.py')).model)
    assert r50.detector.backbone.pretrained is False and 'qk_scale' not in r50.detector.backbone
