"""Export a whole DETR / Deformable DETR (any backbone family, refinement and two-stage too) to
ONNX: dynamic batch and image size, raw outputs and top-k detections in pixels.

    python tools/export.py configs/demo/detr_t2t_shapes.py work_dirs/demo --out detr.onnx
    python tools/export.py configs/deformable_detr_r50.py --out smoke.onnx   # random weights: a smoke test

Graph inputs: images (B, 3, H, W) float32, normalised and padded to multiples of 32; mask (B, H, W)
bool, True on padding; orig_sizes (B, 2) int64 (H, W of each original image). Outputs:
pred_logits, pred_boxes (normalised cxcywh), scores, labels, boxes (xyxy, original pixels).
``--check`` runs the written graph in onnxruntime on two other sizes and prints the largest
difference from PyTorch, on unpadded batches and on batches with a padded image: a zoo backbone is
traced without the padding mask, so padded images differ more (``detection.export``), which is why
``tools/infer.py CONFIG model.onnx images...`` (the Predictor) runs the graph one image at a time.
"""
import argparse
import os
import os.path as osp
from types import SimpleNamespace

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config, DictAction

import detection.engine  # noqa: F401  (registers Detector)
from detection.export import OnnxDetector, export_onnx
from detection.run_settings import use_checkpoint_settings
from infer import load_detector
from zoo.runtime.cli import resolve_config
from zoo.runtime.config_check import merge_options


def build(config: str, checkpoint: str | None, cfg_options=None):
    """The config's detector, eval mode, with the checkpoint's weights (random without one), and
    its class names. An unknown config, a config that is not a detector, or a checkpoint of
    another model: SystemExit / ValueError saying which."""
    config = resolve_config(config)  # or the name of a shipped config (zoo.runtime.cli)
    if not osp.isfile(config):
        raise SystemExit(f'config {config} not found; the detector configs are configs/detr_*.py and '
                         'configs/deformable_detr_*.py')
    cfg = merge_options(Config.fromfile(config), cfg_options)  # misspelt keys: the nearest names
    if cfg.get('model', {}).get('type') != 'Detector':
        raise SystemExit(f'{config} builds {cfg.get("model", {}).get("type")!r}, not a detector: '
                         'tools/export.py exports DETR and Deformable DETR configs')
    if checkpoint is None:
        # random weights: nothing to fetch for the backbone either
        cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
        from mmengine.registry import MODELS
        return MODELS.build(cfg.model).eval(), [str(i) for i in range(cfg.model.num_classes)], cfg
    # a work dir -> its last checkpoint; the class count the run had (detection.run_settings)
    checkpoint = use_checkpoint_settings(cfg, SimpleNamespace(checkpoint=checkpoint, cfg_options=cfg_options),
                                         need_data=False)
    # load_detector builds without fetching backbone weights, as they were trained (without_pretrained)
    model, classes = load_detector(cfg, checkpoint)
    return model, classes, cfg


@torch.no_grad()
def check(model, path: str, sizes=((1, 224, 288), (3, 288, 192)), padded: bool = True) -> float:
    """Largest |onnxruntime - PyTorch| over all outputs, on random batches of other sizes; with
    ``padded`` the last image of each batch has 32 rows of padding."""
    session, worst = OnnxDetector(path), 0.0
    from detection.export import ExportableDetector
    wrapper = ExportableDetector(model).eval()
    for b, h, w in sizes:
        images, mask = torch.randn(b, 3, h, w), torch.zeros(b, h, w, dtype=torch.bool)
        pad = 32 if padded else 0
        mask[-1, h - pad:] = True
        orig = torch.tensor([[h - pad * (i == b - 1), w] for i in range(b)])
        ref = dict(zip(['pred_logits', 'pred_boxes', 'scores', 'labels', 'boxes'], wrapper(images, mask, orig)))
        got = session.run(images, mask, orig)
        worst = max(worst, *[float((got[k].float() - ref[k].float()).abs().max()) for k in ref])
    return worst


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', nargs='?',
                   help='trained weights, or a work dir for its last checkpoint (default: random, a smoke test)')
    p.add_argument('--out', required=True, help='the .onnx file to write')
    p.add_argument('--size', type=int, nargs=2, default=(320, 416), metavar=('H', 'W'),
                   help='the traced batch\'s size (multiples of 32); the graph takes any size')
    p.add_argument('--check', action='store_true', help='compare onnxruntime with PyTorch on two other sizes')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    if not args.out.endswith('.onnx'):
        raise SystemExit(f'--out {args.out}: give a .onnx file name')
    model, classes, cfg = build(args.config, args.checkpoint, args.cfg_options)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    export_onnx(model, args.out, tuple(args.size),
                metadata=dict(classes=classes, focal=bool(model.focal), config=osp.basename(args.config)))
    print(args.out)
    if args.check:
        print(f'max |onnxruntime - PyTorch| over all outputs: {check(model, args.out, padded=False):.2e} without '
              f'padding, {check(model, args.out):.2e} with a padded image'
              + ('' if OnnxDetector(args.out).pad_exact else ' (the backbone was traced without the padding mask)'))
    return args.out


if __name__ == '__main__':
    main()
