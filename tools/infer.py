"""Draw a detector's boxes on images and write the pictures.

    python tools/infer.py CONFIG CHECKPOINT img1.jpg [img2.jpg ...] --out-dir work_dirs/vis
    python tools/infer.py CONFIG CHECKPOINT --val 8 --out work_dirs/demo/predictions.png
    python tools/infer.py CONFIG CHECKPOINT --data my_coco_folder --img-size 256 --val 8
    python tools/infer.py CONFIG model.onnx img1.jpg    # tools/export.py's graph, in onnxruntime

``--amp`` runs the detector under autocast (bfloat16 on a CPU, float16 on a GPU).

``--val N`` draws the first N images of the config's validation set in one grid, predictions
in colour and ground truth in white. Small images are drawn enlarged (the longer side at least
384 px per grid tile, 512 px per picture) so the labels stay legible; ``--score-thr`` chooses
which predictions are drawn (default 0.5 for DETR's softmax scores, 0.3 for Deformable DETR's
sigmoid scores).
"""
import argparse
import contextlib
import os
import os.path as osp

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DATASETS, MODELS
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

import detection.engine  # noqa: F401
from detection.data import transforms as recipes
from detection.data.coco import collate_detection
from detection.data.folder import add_data_arguments, apply_data_arguments
from detection.data.images import image_size, read_image
from zoo.allocator import reuse_freed_memory
from zoo.engine import autocast_for, without_pretrained
from zoo.pretrained import load_exactly

COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45']


def load_detector(cfg: Config, checkpoint: str):
    """The config's detector with the checkpoint's weights, and the class names the checkpoint
    was trained with (mmengine stores the dataset's metainfo in it). A checkpoint of another
    detector raises a ValueError that names the disagreeing keys, as tools/test.py does
    (``zoo.pretrained.load_exactly``)."""
    model = MODELS.build(without_pretrained(cfg.model))  # the checkpoint replaces every weight
    # other layouts (official, Hugging Face, earlier ones) convert in Detector's load hook
    state = load_exactly(model, checkpoint)
    classes = state.get('meta', {}).get('dataset_meta', {}).get('classes')
    classes = classes or [str(i) for i in range(cfg.model.num_classes)]
    return model.eval(), list(classes)


def canvas_scale(height: int, width: int, min_side: int = 512) -> int:
    """The whole-number factor that brings the longer side to at least ``min_side`` pixels: a
    96 px image is drawn at 6x, so its labels are legible and its boxes do not hide the object."""
    return max(1, -(-min_side // max(height, width)))


def draw(image_uint8: torch.Tensor, pred: dict, classes: list[str], score_thr: float,
         gt_boxes: torch.Tensor | None = None, min_side: int = 512) -> torch.Tensor:
    """The image (3, H, W) uint8 enlarged to ``canvas_scale`` with the predictions scoring at
    least ``score_thr`` (boxes xyxy in image pixels, in their class colour, labelled "class score"
    in white on that colour) and the ground truth in white. Returns (3, kH, kW) uint8."""
    h, w = image_uint8.shape[-2:]
    k = canvas_scale(h, w, min_side)
    img = Image.fromarray(image_uint8.permute(1, 2, 0).numpy())
    if k > 1:
        img = img.resize((w * k, h * k), Image.NEAREST if max(h, w) < 256 else Image.BILINEAR)
    canvas = ImageDraw.Draw(img)
    side = max(img.size)
    font = ImageFont.load_default(size=max(12, side // 36))
    line = max(2, side // 256)
    for box in [] if gt_boxes is None else (gt_boxes * k).tolist():
        canvas.rectangle(box, outline='white', width=max(1, line // 2))
    keep = pred['scores'] >= score_thr
    for box, label, score in zip((pred['boxes'][keep] * k).tolist(), pred['labels'][keep].tolist(),
                                 pred['scores'][keep].tolist()):
        color = COLORS[label % len(COLORS)]
        canvas.rectangle(box, outline=color, width=line)
        text = f'{classes[label]} {score:.2f}'
        left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * line, bottom - top + 2 * line
        x = min(max(box[0], 0), img.size[0] - tw)
        y = box[1] - th if box[1] - th >= 0 else box[1]  # above the box, or inside it at the top
        canvas.rectangle([x, y, x + tw, y + th], fill=color)
        canvas.text((x + line - left, y + line - top), text, fill='white', font=font)
    return TF.pil_to_tensor(img)


def read_config(path: str) -> Config:
    """The config at ``path``; a missing file ends the command with "config not found: PATH"."""
    if not osp.isfile(path):
        raise SystemExit(f'error: config not found: {path} (give the path of a config file, e.g. '
                         f'configs/demo/detr_t2t_shapes.py)')
    return Config.fromfile(path)


def check_images(paths: list[str]) -> None:
    """Every input image exists and PIL recognises it (headers alone are read), so a wrong path
    ends the command with one line naming the file before the model is loaded."""
    for path in paths:
        try:
            image_size(path)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f'error: {e}') from None


def read_input(path: str) -> torch.Tensor:
    """The image at ``path`` as (3, H, W) uint8, read as the dataset reads it (``read_image``: any
    PIL mode, 16-bit and float images by their real range); an unreadable file ends the command
    with one line naming it."""
    try:
        return TF.pil_to_tensor(read_image(path))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f'error: {e}') from None


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
        img = TF.pil_to_tensor(ds.load_image(ds.ids[i]))
        h, w = img.shape[-2:]
        gt = box_convert(batch['data_samples'][0]['boxes'], 'cxcywh', 'xyxy') * torch.tensor([w, h, w, h])
        tiles.append(draw(img, pred, classes, score_thr, gt, min_side=384))
    size = max(max(t.shape[-2:]) for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, size - t.shape[2], 0, size - t.shape[1])) for t in tiles]
    save(make_grid(tiles, nrow=min(4, len(tiles)), padding=6), out)
    return out


@torch.no_grad()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', help='the trained .pth, or a .onnx written by tools/export.py')
    p.add_argument('images', nargs='*')
    p.add_argument('--val', type=int, help='draw the first N validation images in one grid')
    p.add_argument('--out', default='work_dirs/predictions.png', help='the grid picture (--val)')
    p.add_argument('--out-dir', default='work_dirs/vis', help='one picture per input image')
    p.add_argument('--score-thr', type=float,
                   help='draw predictions scoring at least this (default: 0.5 for DETR\'s softmax scores, 0.3 for '
                        'the sigmoid (focal-loss) scores of Deformable DETR, which run lower for the same box)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--amp', action='store_true', help='autocast: bfloat16 on a CPU, float16 on a GPU')
    p.add_argument('--amp-dtype', choices=['auto', 'bfloat16', 'float16'], default='auto')
    add_data_arguments(p)
    args = p.parse_args(argv)
    reuse_freed_memory()
    cfg = read_config(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    apply_data_arguments(cfg, args)
    if args.score_thr is None:
        args.score_thr = 0.3 if cfg.model.get('focal') else 0.5
    check_images(args.images)
    if args.checkpoint.endswith('.onnx'):  # tools/export.py's graph, run in onnxruntime
        if args.amp:
            raise SystemExit('--amp: an exported .onnx graph runs in float32; drop --amp')
        from detection.export import OnnxDetector
        model = OnnxDetector(args.checkpoint)
        classes = model.metadata.get('classes') or [str(i) for i in range(cfg.model.num_classes)]
        run(args, cfg, model, classes)
        return
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
        img = read_input(path)
        x = transform(img)
        h, w = img.shape[-2:]
        batch = collate_detection([(x, dict(image_id=0, orig_size=torch.tensor([h, w])))])
        (pred,) = model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict')
        out = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0] + '_pred.png')
        save(draw(img, pred, classes, args.score_thr), out)
        print(out)


if __name__ == '__main__':
    main()
