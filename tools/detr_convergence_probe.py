"""Why does DETR learn the built-in set slowly? A plain training loop over the generated shapes
that reports validation AP50 every few steps, with a choice of backbone, queries and data.

    python tools/detr_convergence_probe.py --backbone t2t_vit_7 --steps 1000
    python tools/detr_convergence_probe.py --backbone colour-coords-oracle --queries 4 \
        --object-scale 0.2 0.45 --max-objects 3 --root data/shapes_big/

Besides any zoo backbone it offers two oracles that need no learning, to separate the
backbone's share of the problem from the transformer's:

- ``colour-oracle``: the mean colour of each 16x16 cell (3 channels, stride 16). Content is
  given; absolute position is not in the features, as with DETR's CNN backbone.
- ``colour-coords-oracle``: the same plus each cell's x and y in [-1, 1], so the position of what
  a query attends to can be read linearly from the attention output. DETR adds positions to
  queries and keys only, never to values; this shows what position in the values is worth.

The loop is the demo's recipe without mmengine: AdamW, linear warm-up, gradient clip 0.1, batch 8.
The curve is printed and, with ``--out``, written as json.
"""
import argparse
import contextlib
import io
import json
import time
from functools import partial

import _bootstrap  # noqa: F401
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from detection.coco_eval import coco_evaluate
from detection.data.coco import collate_detection
from detection.engine import Detector, RegisteredCocoDetection, predictions_to_coco
import zoo


class ColourOracle(nn.Module):
    """(B, 3, H, W) -> [(B, 3 (+2 with coords), H/16, W/16)]: each cell's mean colour and,
    with ``coords``, its x, y in [-1, 1]."""

    def __init__(self, coords: bool):
        super().__init__()
        self.coords = coords
        self.feature_info = [dict(channels=5 if coords else 3, stride=16)]

    def forward(self, x):
        cells = F.avg_pool2d(x, 16)
        if not self.coords:
            return [cells]
        b, _, h, w = cells.shape
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing='ij')
        return [torch.cat([cells, torch.stack([xs, ys]).expand(b, -1, -1, -1).to(cells)], 1)]


def probe_backbone(name: str):
    """A zoo backbone config, or an oracle module (not a zoo model, so not in its registry)."""
    if name in ('colour-oracle', 'colour-coords-oracle'):
        return ColourOracle(coords=name == 'colour-coords-oracle')
    # At the attention scale of the released weights (T2T-ViT: embed_dim ** -0.5), which the
    # README's figures were measured with; the official from-scratch scale is head_dim ** -0.5.
    return dict(name=name, pretrained=False, **zoo.get_model_info(name).weights_arch)


@torch.no_grad()
def evaluate(model, loader, dataset, ann_file) -> dict:
    model.eval()
    predictions = []
    for batch in loader:
        predictions += model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict')
    model.train()
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval's table, once per evaluation
        return coco_evaluate(ann_file, predictions_to_coco(predictions, dataset.cat_ids))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--backbone', default='t2t_vit_7',
                   help='a zoo model name, colour-oracle or colour-coords-oracle')
    p.add_argument('--steps', type=int, default=1000)
    p.add_argument('--eval-every', type=int, default=250)
    p.add_argument('--lr', type=float, default=2e-4)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--queries', type=int, default=16)
    p.add_argument('--hidden-dim', type=int, default=128)
    p.add_argument('--layers', type=int, default=2, help='encoder and decoder layers each')
    # Not data/shapes: a probe set with other settings would replace the demo's set there.
    p.add_argument('--root', default='data/shapes_probe/', help='where the generated set is (or goes)')
    p.add_argument('--size', type=int, default=128, help='image side of the generated set')
    p.add_argument('--object-scale', type=float, nargs=2, default=(1 / 8, 1 / 3))
    p.add_argument('--max-objects', type=int, default=4)
    p.add_argument('--num-images', type=int, nargs=2, default=(512, 128), help='train and val')
    p.add_argument('--train-scales', type=int, nargs='+', default=(112, 128, 144),
                   help='shortest-side sizes of the multi-scale resize')
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--out', help='write the curve here as json')
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    root = args.root.rstrip('/') + '/'
    synthetic = dict(root=root, num_train=args.num_images[0], num_val=args.num_images[1], size=args.size,
                     max_objects=args.max_objects, seed=0, object_scale=tuple(args.object_scale))
    ann_val = root + 'annotations/instances_val.json'
    train_tf = dict(type='shapes_train_transforms', scales=tuple(args.train_scales),
                    max_size=max(max(args.train_scales), args.size))
    train_set = RegisteredCocoDetection(root + 'train', root + 'annotations/instances_train.json',
                                        train_tf, True, synthetic)
    val_set = RegisteredCocoDetection(root + 'val', ann_val,
                                      dict(type='shapes_test_transforms', size=args.size), False, synthetic)
    collate = partial(collate_detection, size_divisor=32)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True, collate_fn=collate, drop_last=True)
    val_loader = DataLoader(val_set, 32, collate_fn=collate)

    model = Detector(dict(type='DETR', backbone=probe_backbone(args.backbone), num_queries=args.queries,
                          hidden_dim=args.hidden_dim, num_heads=4, enc_layers=args.layers,
                          dec_layers=args.layers, ffn_dim=4 * args.hidden_dim, dropout=0.0), num_classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))

    curve, step, start = [], 0, time.time()
    while step < args.steps:
        for batch in train_loader:
            losses = model(batch['inputs'], batch['masks'], batch['data_samples'], mode='loss')
            opt.zero_grad()
            sum(losses.values()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
            opt.step()
            warmup.step()
            step += 1
            if step % 50 == 0:
                terms = ' '.join(f'{k}={losses[k].item():.3f}' for k in ('loss_class', 'loss_bbox', 'loss_giou'))
                print(f'step {step} {time.time() - start:.0f}s {terms}', flush=True)
            if step % args.eval_every == 0 or step == args.steps:
                stats = evaluate(model, val_loader, val_set, ann_val)
                curve.append(dict(step=step, seconds=round(time.time() - start),
                                  AP50=stats['AP50'], AP=stats['AP']))
                print(f'  step {step}: AP50 {stats["AP50"]:.3f}  AP {stats["AP"]:.3f}', flush=True)
            if step >= args.steps:
                break
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), curve=curve), f, indent=1)


if __name__ == '__main__':
    main()
