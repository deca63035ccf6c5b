"""Whole detectors exported to ONNX (tools/export.py): onnxruntime gives PyTorch's boxes and
scores on real (generated) images of sizes the export never saw, for every backbone family and
Deformable DETR's refinement / two-stage; bad configs and checkpoints are refused clearly."""
import os
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS
from PIL import Image

from detection.data.coco import CocoDetection, collate_detection
from detection.data.synthetic import make_shapes_dataset
from detection.data.transforms import shapes_test_transforms
from detection.export import ExportableDetector, OnnxDetector, export_onnx
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))
import export as export_tool  # noqa: E402
import infer  # noqa: E402

SMALLEST = dict(t2t_vit_14='t2t_vit_7', vit_base_patch16_224='vit_tiny_patch16_224',
                deit_small_patch16_224='deit_tiny_patch16_224', cait_s24_224='cait_xxs24_224',
                cpvt_s='cpvt_ti', ceit_s='ceit_t')
# float32 through two graphs: logits and normalised boxes agree to ~1e-6, pixel boxes to ~1e-4
ATOL = dict(pred_logits=1e-4, pred_boxes=1e-5, scores=1e-5, boxes=1e-3)


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return make_shapes_dataset(str(tmp_path_factory.mktemp('shapes')), num_train=2, num_val=3, size=96, seed=5)


def tiny(config: str, **overrides):
    cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
    name = cfg.model.detector.backbone.name
    cfg.merge_from_dict({'model.detector.backbone.name': SMALLEST.get(name, name),
                         'model.detector.backbone.pretrained': False, 'model.num_classes': 3,
                         'model.detector.num_queries': 10, 'model.detector.enc_layers': 1,
                         'model.detector.dec_layers': 2, **overrides})
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():  # no head at its structured init: the comparison must mean something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def real_batches(root: str):
    """The generated validation images at two sizes the export (64 x 96) does not use:
    two images at shorter side 128 (padded 128 x 128), one at 160."""
    out = []
    for size, n in ((128, 2), (160, 1)):
        ds = CocoDetection(root + '/val', root + '/annotations/instances_val.json', shapes_test_transforms(size))
        out.append(collate_detection([ds[i] for i in range(n)]))
    return out


def assert_onnx_matches(model, path, root):
    wrapper, session = ExportableDetector(model), OnnxDetector(path)
    for batch in real_batches(root):
        sizes = torch.stack([t['orig_size'] for t in batch['data_samples']])
        with torch.no_grad():
            ref = dict(zip(ATOL, [t for i, t in enumerate(wrapper(batch['inputs'], batch['masks'], sizes)) if i != 3]))
        got = session.run(batch['inputs'], batch['masks'], sizes)
        assert got['pred_boxes'].shape == ref['pred_boxes'].shape and ref['pred_boxes'].std() > 1e-3
        for key, atol in ATOL.items():
            torch.testing.assert_close(got[key], ref[key], atol=atol, rtol=0, msg=key)


FAMILY_CONFIGS = [f'detr_{f}.py' for f in ('r50', 'cvt', 't2t', 'vit', 'deit', 'deepvit', 'cait', 'cpvt', 'ceit')]


@pytest.mark.parametrize('config', ['detr_cvt.py', 'deformable_detr_t2t.py', 'deformable_detr_t2t_two_stage.py'])
def test_export_matches_onnxruntime_on_other_sizes(config, shapes, tmp_path):
    model = tiny(config)
    path = export_onnx(model, str(tmp_path / 'model.onnx'), size=(64, 96))
    assert_onnx_matches(model, path, shapes)
    assert OnnxDetector(path).pad_exact is False  # a token backbone, traced without the padding mask


def test_the_graph_records_whether_padded_inputs_are_exact():
    """``pad_exact``: False where PyTorch masks the padding in the backbone and the trace cannot (a
    zoo backbone), True for ResNet-50, which takes no mask in PyTorch either (built on the meta
    device: only its modules are looked at)."""
    from detection.export import pad_exact
    with torch.device('meta'):
        for config, exact in (('detr_r50.py', True), ('detr_t2t.py', False), ('deformable_detr_r50.py', True)):
            cfg = Config.fromfile(os.path.join(ROOT, 'configs', config))
            cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
            assert pad_exact(MODELS.build(cfg.model)) is exact, config


@pytest.mark.slow
@pytest.mark.parametrize('config', FAMILY_CONFIGS + ['deformable_detr_r50_refine.py', 'deformable_detr_cait.py',
                                                    'deformable_detr_cvt.py'])
def test_every_family_exports(config, shapes, tmp_path):
    model = tiny(config)
    path = export_onnx(model, str(tmp_path / 'model.onnx'), size=(64, 96))
    assert_onnx_matches(model, path, shapes)


def test_export_tool_and_infer_draw_the_same_picture(shapes, tmp_path):
    config = os.path.join(ROOT, 'configs', 'demo', 'detr_t2t_shapes.py')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
    model = MODELS.build(cfg.model)
    ckpt = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {'classes': ['a', 'b', 'c']}}}, ckpt)
    onnx_path = str(tmp_path / 'detr.onnx')
    export_tool.main([config, str(ckpt), '--out', onnx_path, '--size', '64', '96'])
    assert OnnxDetector(onnx_path).metadata['classes'] == ['a', 'b', 'c']
    image = os.path.join(shapes, 'val', sorted(os.listdir(os.path.join(shapes, 'val')))[0])
    pictures = []
    for weights, out_dir in ((str(ckpt), tmp_path / 'torch'), (onnx_path, tmp_path / 'onnx')):
        infer.main([config, weights, image, '--out-dir', str(out_dir), '--score-thr', '0'])
        (name,) = [f for f in os.listdir(out_dir) if f.endswith('.png')]  # beside detections.json, images.json
        pictures.append(torch.from_numpy(np.asarray(Image.open(out_dir / name))))
    assert pictures[0].shape == pictures[1].shape
    differs = (pictures[0] != pictures[1]).any(-1).float().mean()
    assert differs < 1e-3  # the same boxes and labels; at most a rounding pixel on an edge


def test_export_refuses_unknown_configs_and_foreign_checkpoints(tmp_path):
    with pytest.raises(SystemExit, match='not found'):
        export_tool.main(['configs/detr_nonexistent.py', '--out', str(tmp_path / 'x.onnx')])
    with pytest.raises(SystemExit, match='not a detector'):
        export_tool.main([os.path.join(ROOT, 'configs', 'classification', sorted(
            f for f in os.listdir(os.path.join(ROOT, 'configs', 'classification')) if f.endswith('.py'))[0]),
            '--out', str(tmp_path / 'x.onnx')])
    detr_cfg = Config.fromfile(os.path.join(ROOT, 'configs', 'demo', 'detr_t2t_shapes.py'))
    detr_cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
    ckpt = tmp_path / 'detr.pth'
    torch.save({'state_dict': MODELS.build(detr_cfg.model).state_dict()}, ckpt)
    with pytest.raises(ValueError, match="not a checkpoint of this config's detector"):
        export_tool.main([os.path.join(ROOT, 'configs', 'demo', 'deformable_detr_t2t_shapes.py'), str(ckpt),
                          '--out', str(tmp_path / 'x.onnx')])
