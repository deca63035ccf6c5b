"""Draw a detector's boxes on images and write the pictures.

    python tools/infer.py CONFIG CHECKPOINT img1.jpg [img2.jpg ...] --out-dir work_dirs/vis
    python tools/infer.py CONFIG CHECKPOINT --val 8 --out work_dirs/demo/predictions.png
    python tools/infer.py CONFIG CHECKPOINT --data my_coco_folder --img-size 256 --val 8

``--amp`` runs the detector under autocast (bfloat16 on a CPU, float16 on a GPU).

``--val N`` draws the first N images of the config's validation set in one grid, predictions
in colour and ground truth in white.
"""
import argparse
import contextlib
import os
import os.path as osp
import re

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DATASETS, MODELS
from PIL import Image
from torchvision.io import decode_image
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes, make_grid

import detection.engine  # noqa: F401
from detection.data import transforms as recipes
from detection.data.coco import collate_detection
from detection.data.folder import add_data_arguments, apply_data_arguments
from zoo.engine import autocast_for
from zoo.pretrained import read_checkpoint

COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45']


# Checkpoints written before the denoising position head, the anchor embedding and the dense box
# head became zoo Mlps (commit f473960, same parameters) name their two Linears by Sequential index.
_SEQUENTIAL_MLP = re.compile(r'^(net\.(?:denoising\.pos_head|dense_head\.box_head|anchor_pos))\.([02])\.')


def load_detector(cfg: Config, checkpoint: str):
    """The config's detector with the checkpoint's weights, and the class names the checkpoint
    was trained with (mmengine stores the dataset's metainfo in it). A checkpoint of another
    detector raises a ValueError that names the disagreeing keys."""
    model = MODELS.build(cfg.model)
    state = read_checkpoint(checkpoint)
    weights = {_SEQUENTIAL_MLP.sub(lambda m: f'{m[1]}.fc{int(m[2]) // 2 + 1}.', k): v
               for k, v in state.get('state_dict', state).items()}
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f'{checkpoint} is not a checkpoint of this config\'s detector: {str(e)[:600]} '
                         '... Pass the checkpoint trained with this config, or the config it was '
                         'trained with') from e
    classes = state.get('meta', {}).get('dataset_meta', {}).get('classes')
    classes = classes or [str(i) for i in range(cfg.model.num_classes)]
    return model.eval(), list(classes)


def draw(image_uint8: torch.Tensor, pred: dict, classes: list[str], score_thr: float,
         gt_boxes: torch.Tensor | None = None) -> torch.Tensor:
    keep = pred['scores'] >= score_thr
    labels = [f'{classes[int(l)]} {s:.2f}' for l, s in zip(pred['labels'][keep], pred['scores'][keep])]
    colors = [COLORS[int(l) % len(COLORS)] for l in pred['labels'][keep]]
    out = image_uint8
    if gt_boxes is not None and len(gt_boxes):
        out = draw_bounding_boxes(out, gt_boxes, colors='white', width=1)
    if keep.any():
        out = draw_bounding_boxes(out, pred['boxes'][keep], labels=labels, colors=colors, width=2)
    return out


def save(img: torch.Tensor, path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)


@torch.no_grad()
def visualize_val(cfg, model, classes, n: int, out: str, score_thr: float) -> str:
    """The first ``n`` validation images with predictions (colour) and ground truth (white)."""
    ds = DATASETS.build(cfg.val_dataloader.dataset)
    tiles = []
    for i in range(min(n, len(ds))):
        batch = collate_detection([ds[i]])
        (pred,) = model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict')
        image_id = ds.ids[i]
        img = TF.pil_to_tensor(ds.load_image(image_id))
        h, w = img.shape[-2:]
        gt = batch['data_samples'][0]['boxes']
        gt = box_convert(gt, 'cxcywh', 'xyxy') * torch.tensor([w, h, w, h])
        zoom = max(1, 256 // max(h, w))  # small images are enlarged so labels stay legible
        if zoom > 1:
            img = TF.resize(img, [h * zoom, w * zoom], interpolation=TF.InterpolationMode.NEAREST)
            gt, pred = gt * zoom, dict(pred, boxes=pred['boxes'] * zoom)
        tiles.append(draw(img, pred, classes, score_thr, gt))
    size = max(max(t.shape[-2:]) for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, size - t.shape[2], 0, size - t.shape[1])) for t in tiles]
    save(make_grid(tiles, nrow=min(4, len(tiles)), padding=4), out)
    return out


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('images', nargs='*')
    p.add_argument('--val', type=int, help='draw the first N validation images in one grid')
    p.add_argument('--out', default='work_dirs/predictions.png', help='the grid picture (--val)')
    p.add_argument('--out-dir', default='work_dirs/vis', help='one picture per input image')
    p.add_argument('--score-thr', type=float, default=0.5)
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--amp', action='store_true', help='autocast: bfloat16 on a CPU, float16 on a GPU')
    p.add_argument('--amp-dtype', choices=['auto', 'bfloat16', 'float16'], default='auto')
    add_data_arguments(p)
    args = p.parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    apply_data_arguments(cfg, args)
    model, classes = load_detector(cfg, args.checkpoint)
    with (autocast_for(model, None if args.amp_dtype == 'auto' else args.amp_dtype) if args.amp
          else contextlib.nullcontext()):
        run(args, cfg, model, classes)


def run(args, cfg, model, classes):
    if args.val:
        print(visualize_val(cfg, model, classes, args.val, args.out, args.score_thr))
    if not args.images:
        return
    test_cfg = dict(cfg.val_dataloader.dataset.transforms)
    transform = getattr(recipes, test_cfg.pop('type'))(**test_cfg)
    for path in args.images:
        img = decode_image(path, mode='RGB')
        x = transform(img)
        h, w = img.shape[-2:]
        batch = collate_detection([(x, dict(image_id=0, orig_size=torch.tensor([h, w])))])
        (pred,) = model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict')
        out = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0] + '_pred.png')
        save(draw(img, pred, classes, args.score_thr), out)
        print(out)


if __name__ == '__main__':
    main()
