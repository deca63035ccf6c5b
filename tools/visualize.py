"""Figures of what backbones and detectors compute, as PNG files (the functions are in
zoo.analysis and detection.analysis, for notebooks).

    python tools/visualize.py features  --models resnet50 vit_base_patch16_224 t2t_vit_14 --out docs/features.png
    python tools/visualize.py attention --model deit_tiny_patch16_224 --pixel 40 50 --out docs/attention.png
    python tools/visualize.py rollout   --models vit_tiny_patch16_224 cait_xxs24_224 --out docs/rollout.png
    python tools/visualize.py detection CONFIG [CHECKPOINT] --out docs/detr_attention.png

Sub-commands:
  features   feature maps by depth, one column per model (ResNet-50 from torchvision as
             ``resnet50``, any registered zoo model), with the dead / extreme channel fractions
             of every layer printed and written as CSV (``--csv``; zoo.analysis.channel_fractions
             defines them)
  attention  one model's attention of a token (the class token, or ``--pixel Y X``) per block
             and head, up-sampled onto the image
  rollout    attention rollout of the class token (each family's own form), one column per model
  detection  a DETR or Deformable DETR config (and checkpoint): per kept detection its box and
             decoder cross-attention (DETR) or sampling points per level (Deformable DETR), and
             the encoder's attention at ``--pixels`` (default: the detections' centres)

Weights: random unless ``--checkpoint`` (``PATH`` for one model, ``NAME=PATH`` for several) or
``--pretrained`` (released weights, needs a connection). Image: ``--image PATH``, else image
``--index`` of the built-in shapes validation set (generated under data/shapes on first use).
Every model / block prints a progress line.
"""
import argparse
import os
import sys

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config
from mmengine.registry import DATASETS
from torchvision.transforms.v2 import functional as TF

import detection.engine  # noqa: F401  (registers the detector and the datasets)
from detection import analysis as det
from detection.data import transforms as recipes
from infer import load_detector
from zoo import analysis as za
from zoo.runtime.allocator import reuse_freed_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = os.path.join(ROOT, 'configs/_base_/datasets/shapes_detection.py')


def builtin_image(index: int, dataset_cfg: str = SHAPES):
    """Image ``index`` of a config's validation set as an RGB PIL image (generated if missing)."""
    cfg = Config.fromfile(dataset_cfg)
    ds_cfg = cfg.val_dataloader.dataset
    ds = DATASETS.build(ds_cfg)
    if not 0 <= index < len(ds):
        raise ValueError(f'--index {index} is outside the built-in set of {len(ds)} images')
    return ds.load_image(ds.ids[index])


def read_image(args):
    return za.load_image(args.image) if args.image else builtin_image(args.index)


def checkpoints(args, names: list[str]) -> dict:
    """--checkpoint PATH (one model) or NAME=PATH pairs -> {name: path}."""
    out = {}
    for item in args.checkpoint or []:
        name, sep, path = item.partition('=')
        if not sep:
            if len(names) != 1:
                raise ValueError(f'--checkpoint {item}: with several models write NAME=PATH')
            name, path = names[0], item
        if name not in names:
            raise ValueError(f'--checkpoint {item}: {name} is not one of --models {names}')
        out[name] = path
    return out


def model_input(model, image, img_size: int | None):
    size, mean, std = za.input_spec(model)
    size = img_size or size
    return za.preprocess(image, size, mean, std), mean, std


def cmd_features(args):
    image = read_image(args)
    ckpts = checkpoints(args, args.models)
    results, rows = {}, []
    for name in args.models:
        model = za.create_analysis_model(name, ckpts.get(name), args.pretrained)
        x, _, _ = model_input(model, image, args.img_size)
        records = za.feature_maps_by_depth(model, x, args.depths, args.channels, args.dead_thr,
                                           args.extreme_thr, log=print)
        results[name] = records
        rows += [(name, r) for r in records]
        del model
    weights = 'checkpoint' if args.checkpoint else 'released weights' if args.pretrained else 'random weights'
    print(za.plot_feature_depths(results, args.out, title=f'feature maps by depth ({weights}); '
                                 f'dead: peak <= {args.dead_thr} x mean channel RMS, '
                                 f'extreme: peak > {args.extreme_thr} x'))
    csv = args.csv or os.path.splitext(args.out)[0] + '.csv'
    za.write_fractions_csv(rows, csv)
    print(csv)


def scaled_pixel(pixel, image, x):
    """A (y, x) pixel of the original image -> the same point of the resized input x."""
    za.check_pixel(pixel, image.height, image.width)
    return pixel[0] * x.shape[-2] // image.height, pixel[1] * x.shape[-1] // image.width


def cmd_attention(args):
    image = read_image(args)
    model = za.create_analysis_model(args.model, args.checkpoint[0] if args.checkpoint else None,
                                     args.pretrained)
    x, mean, std = model_input(model, image, args.img_size)
    token = 'cls' if args.pixel is None else scaled_pixel(tuple(args.pixel), image, x)
    records = za.token_attention(model, x, token)
    for r in records:
        print(f'{args.model}: {r.name} {tuple(r.attn.shape[1:])}')
    if not records:
        raise ValueError(f'{args.model} has no block with a {token!r} query (no class token?): '
                         'pass --pixel Y X')
    if args.blocks:
        records = [records[i] for i in args.blocks]
    elif len(records) > 6:
        records = [records[i] for i in za.default_depths(len(records), 6)]
    what = 'class token' if token == 'cls' else f'pixel {tuple(args.pixel)}'
    print(za.plot_token_attention(za.denormalise(x[0], mean, std), records, token, args.out,
                                  title=f'{args.model}: attention of the {what} per block and head'))


def cmd_rollout(args):
    image = read_image(args)
    ckpts = checkpoints(args, args.models)
    panels = []
    for name in args.models:
        model = za.create_analysis_model(name, ckpts.get(name), args.pretrained)
        x, mean, std = model_input(model, image, args.img_size)
        rollout = za.attention_rollout(model, x)[0]
        print(f'{name}: {za.rollout_form(model)} {tuple(rollout.shape)}')
        panels.append((f'{name}\n{za.rollout_form(model)}', za.denormalise(x[0], mean, std), rollout))
    print(za.plot_rollouts(panels, args.out, title='attention rollout (Abnar and Zuidema, 2020), '
                           'class token over the patches, per-panel scale'))


def cmd_detection(args):
    cfg = Config.fromfile(args.config)
    if args.checkpoint:
        from zoo.runtime.checkpointing import resolve_checkpoint
        detector, classes = load_detector(cfg, resolve_checkpoint(args.checkpoint))  # a work dir: its last
    else:
        from mmengine.registry import MODELS
        detector = MODELS.build(cfg.model).eval()
        classes = [str(i) for i in range(cfg.model.num_classes)]
    if args.image:
        image = TF.pil_to_tensor(za.load_image(args.image))
    else:
        image = TF.pil_to_tensor(builtin_image(args.index, args.config))
    test_cfg = dict(cfg.val_dataloader.dataset.transforms)
    transform = getattr(recipes, test_cfg.pop('type'))(**test_cfg)
    pixels = [tuple(p) for p in args.pixels] if args.pixels else None
    result = det.detection_attention(detector, image, transform, pixels, args.score_thr,
                                     args.max_detections)
    for d in result.detections:
        print(f'query {d["query"]}: {classes[d["label"]]} {d["score"]:.2f} box {[round(v) for v in d["box"].tolist()]}')
    weights = os.path.basename(args.checkpoint) if args.checkpoint else 'random weights'
    title = f'{os.path.basename(args.config)} ({weights})'
    print(det.plot_detection_attention(result, classes, args.out, title=title))


def parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)

    def common(s, out):
        s.add_argument('--image', help='an image file (default: a built-in shapes image)')
        s.add_argument('--index', type=int, default=0, help='the built-in image to use')
        s.add_argument('--out', default=out, help='the PNG to write')

    def backbone(s, several: bool):
        if several:
            s.add_argument('--models', nargs='+', required=True,
                           help="registered zoo names (zoo.list_models()) or 'resnet50'")
        else:
            s.add_argument('--model', required=True, help="a registered zoo name")
        s.add_argument('--checkpoint', action='append', metavar='[NAME=]PATH',
                       help='local weights: PATH for one model, NAME=PATH for each of several')
        s.add_argument('--pretrained', action='store_true', help='the released weights (online)')
        s.add_argument('--img-size', type=int, help="square input side (default: the model's)")

    s = sub.add_parser('features', help='feature maps by depth with dead / extreme fractions')
    backbone(s, True)
    common(s, 'work_dirs/vis/features.png')
    s.add_argument('--depths', type=int, nargs='+', help='layer indices to draw (default: 4 spread)')
    s.add_argument('--channels', type=int, default=16, help='channels drawn per depth')
    s.add_argument('--dead-thr', type=float, default=0.05)
    s.add_argument('--extreme-thr', type=float, default=10.0)
    s.add_argument('--csv', help='the fractions table (default: next to --out)')
    s.set_defaults(run=cmd_features)

    s = sub.add_parser('attention', help='per block and head attention of one token')
    backbone(s, False)
    common(s, 'work_dirs/vis/attention.png')
    s.add_argument('--pixel', type=int, nargs=2, metavar=('Y', 'X'),
                   help='the query: the patch at this pixel of the image (default: the class token)')
    s.add_argument('--blocks', type=int, nargs='+', help='block indices (default: up to 6 spread)')
    s.set_defaults(run=cmd_attention)

    s = sub.add_parser('rollout', help='attention rollout of the class token, one column per model')
    backbone(s, True)
    common(s, 'work_dirs/vis/rollout.png')
    s.set_defaults(run=cmd_rollout)

    s = sub.add_parser('detection', help='DETR / Deformable DETR attention per detection and pixel')
    s.add_argument('config')
    s.add_argument('checkpoint', nargs='?', help='the detector weights (default: random)')
    common(s, 'work_dirs/vis/detection.png')
    s.add_argument('--pixels', type=int, nargs=2, action='append', metavar=('Y', 'X'),
                   help='an image pixel for the encoder maps (repeat; default: detection centres)')
    s.add_argument('--score-thr', type=float, default=0.5)
    s.add_argument('--max-detections', type=int, default=6)
    s.set_defaults(run=cmd_detection)
    return p


@torch.no_grad()
def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    reuse_freed_memory()
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f'{p.prog} {args.command}: error: {e}\n')


if __name__ == '__main__':
    main()
