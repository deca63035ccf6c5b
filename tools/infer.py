"""Draw a detector's boxes on images and write the pictures.

    python tools/infer.py CONFIG CHECKPOINT img1.jpg [img2.jpg ...] --out-dir work_dirs/vis
    python tools/infer.py CONFIG CHECKPOINT photos/ 'more/**/*.jpg' --device cuda   # folders, patterns
    python tools/infer.py CONFIG CHECKPOINT --val 8 --out work_dirs/demo/predictions.png
    python tools/infer.py CONFIG CHECKPOINT --data my_coco_folder --img-size 256 --val 8
    python tools/infer.py CONFIG model.onnx img1.jpg    # tools/export.py's graph, in onnxruntime

Images go through ``detection.Predictor`` (the test transforms and batching of tools/test.py, so
an image gets the boxes tools/test.py gives it), ``--batch-size`` at a time. A folder stands for
its image files (sorted, not its subfolders); an argument with ``*``, ``?`` or ``[`` for the files
it matches (sorted; ``**`` descends into subfolders; quote it). Into ``--out-dir`` go one picture
per image (``NAME_pred.png``) and two json files:

* ``detections.json``: the drawn detections (score >= ``--score-thr``) as COCO results,
  ``[{"image_id", "category_id", "bbox": [x, y, w, h] in the image's pixels, "score"}]``, the
  category ids those of the dataset the checkpoint was trained on (its ``categories``);
* ``images.json``: ``{"images": [{"id", "file_name", "width", "height"}], "categories": [{"id",
  "name"}]}``, the "images" and "categories" of a COCO annotation file: an image's id is its
  position (from 0) in the list of inputs, folders and patterns expanded, as printed.

An image on which no box reaches ``--score-thr`` is named, with its best score.

``--amp`` runs the detector under autocast (bfloat16 on a CPU, float16 on a GPU).

``--val N`` draws the first N images of the config's validation set in one grid, predictions
in colour and ground truth in white. Small images are drawn enlarged (the longer side at least
384 px per grid tile, 512 px per picture) so the labels stay legible; ``--score-thr`` chooses
which predictions are drawn (default 0.5 for DETR's softmax scores, 0.3 for Deformable DETR's
sigmoid scores).
"""
import argparse
import contextlib
import glob
import json
import os
import os.path as osp

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config, DictAction
from mmengine.registry import DATASETS
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

import detection.engine  # noqa: F401
from detection.data.coco import collate_detection
from detection.data.folder import add_data_arguments, apply_data_arguments
from detection.data.images import image_size, read_image
from detection.run_settings import use_checkpoint_settings
from detection.engine import predictions_to_coco
from detection.predictor import Predictor, checkpoint_categories
from detection.predictor import load_detector as load_weights
from zoo.runtime.allocator import reuse_freed_memory
from zoo.runtime.cli import resolve_config
from zoo.runtime.config_check import merge_options
from zoo.runtime.stop import stop_cleanly
from zoo.runtime.engine import autocast_for

COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45']


def load_detector(cfg: Config, checkpoint: str):
    """The config's detector with the checkpoint's weights, and the class names the checkpoint
    was trained with (mmengine stores the dataset's metainfo in it). A checkpoint of another
    detector raises a ValueError that names the disagreeing keys, as tools/test.py does
    (``zoo.pretrained.load_exactly``)."""
    # other layouts (official, Hugging Face, earlier ones) convert in Detector's load hook
    model, meta = load_weights(cfg, checkpoint)
    return model, checkpoint_categories(meta, cfg)[0]


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
    """The config at ``path`` (or the shipped config it names: ``zoo.runtime.cli.resolve_config``); a
    missing file ends the command with "config not found: PATH"."""
    path = resolve_config(path)
    if not osp.isfile(path):
        raise SystemExit(f'error: config not found: {path} (give the path of a config file, e.g. '
                         f'configs/demo/detr_t2t_shapes.py)')
    return Config.fromfile(path)


IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def expand_images(arguments: list[str]) -> list[str]:
    """The image files the arguments name, in order: a file as given; a folder -> its files with
    an image extension PIL opens (sorted; subfolders are not searched); an argument with ``*``,
    ``?`` or ``[`` that is no file -> the files it matches (sorted; ``**`` matches subfolders). A
    folder without images or a pattern matching nothing ends the command with one line saying so."""
    paths = []
    for arg in arguments:
        if osp.isdir(arg):
            found = sorted(osp.join(arg, f) for f in os.listdir(arg) if osp.isfile(osp.join(arg, f))
                           and osp.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
            if not found:
                raise SystemExit(f'error: folder {arg} holds no image files (.jpg, .png, ...; subfolders are not '
                                 f'searched): give the folder of the images, or a pattern such as \'{arg}/**/*.jpg\'')
            paths += found
        elif not osp.exists(arg) and any(c in arg for c in '*?['):
            found = sorted(p for p in glob.glob(arg, recursive=True) if osp.isfile(p))
            if not found:
                raise SystemExit(f'error: no file matches {arg}: check the pattern (quoted, so that the shell '
                                 'passes it as it is)')
            paths += found
        else:
            paths.append(arg)  # a missing file is named by check_images
    return paths


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
        (pred,) = (model.test_step(batch) if hasattr(model, 'test_step')  # a Detector: on its device
                   else model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict'))
        pred = {k: pred[k].cpu() for k in ('boxes', 'scores', 'labels')}
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
    """Draw detections. A misspelt config key, bad data or an unreadable checkpoint stop with
    their message, no traceback (``zoo.runtime.stop``)."""
    with stop_cleanly():
        return infer(argv)


def infer(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', help='the trained .pth (or its work dir: the last checkpoint), or a .onnx written '
                                      'by tools/export.py')
    p.add_argument('images', nargs='*', help='image files, folders of images, or quoted patterns (\'photos/*.jpg\')')
    p.add_argument('--val', type=int, help='draw the first N validation images in one grid')
    p.add_argument('--out', default='work_dirs/predictions.png', help='the grid picture (--val)')
    p.add_argument('--out-dir', default='work_dirs/vis',
                   help='one picture per input image, detections.json and images.json (see above)')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:1, ... (an .onnx graph runs on the CPU)')
    p.add_argument('--batch-size', type=int, default=8, help='images per forward pass')
    p.add_argument('--score-thr', type=float,
                   help='draw predictions scoring at least this (default: 0.5 for DETR\'s softmax scores, 0.3 for '
                        'the sigmoid (focal-loss) scores of Deformable DETR, which run lower for the same box)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--amp', action='store_true', help='autocast: bfloat16 on a CPU, float16 on a GPU')
    p.add_argument('--amp-dtype', choices=['auto', 'bfloat16', 'float16'], default='auto')
    add_data_arguments(p)
    args = p.parse_args(argv)
    reuse_freed_memory()
    cfg = merge_options(read_config(args.config), args.cfg_options)  # misspelt keys: the nearest names
    args.images = expand_images(args.images)
    check_images(args.images)  # before any checkpoint is read
    use_checkpoint_settings(cfg, args, need_data=bool(args.val))  # a work dir: its last checkpoint; the run's data
    apply_data_arguments(cfg, args)
    if args.score_thr is None:
        args.score_thr = 0.3 if cfg.model.get('focal') else 0.5
    if args.checkpoint.endswith('.onnx') and args.amp:  # tools/export.py's graph, run in onnxruntime
        raise SystemExit('--amp: an exported .onnx graph runs in float32; drop --amp')
    # an .onnx graph runs in onnxruntime (detection.export.OnnxDetector); classes from its metadata
    predictor = Predictor(cfg, args.checkpoint, device=args.device, batch_size=args.batch_size,
                          run_settings=False)  # applied above, where the command line could override them
    with (autocast_for(predictor.model, None if args.amp_dtype == 'auto' else args.amp_dtype) if args.amp
          else contextlib.nullcontext()):
        run(args, cfg, predictor, predictor.classes)


def picture_names(paths: list[str], out_dir: str) -> list[str]:
    """``OUT_DIR/NAME_pred.png`` for each image; names that two inputs share get ``_ID`` added."""
    stems = [osp.splitext(osp.basename(p))[0] for p in paths]
    return [osp.join(out_dir, f'{s}_{i}_pred.png' if stems.count(s) > 1 else f'{s}_pred.png')
            for i, s in enumerate(stems)]


def run(args, cfg, model, classes):
    """Draw ``args.images`` (and the ``--val`` grid) with ``model``: a ``Predictor``, or a
    detector with ``Detector``'s predict interface wrapped in one with the config's transforms."""
    predictor = model if isinstance(model, Predictor) else Predictor.from_model(
        model, cfg, classes, batch_size=getattr(args, 'batch_size', 8))
    if args.val:
        print(visualize_val(cfg, predictor.model, classes, args.val, args.out, args.score_thr))
    if not args.images:
        return
    pictures, predictions, images = picture_names(args.images, args.out_dir), [], []
    for start in range(0, len(args.images), predictor.batch_size):
        paths = args.images[start:start + predictor.batch_size]
        imgs = [read_input(path) for path in paths]
        for i, (path, img, pred) in enumerate(zip(paths, imgs, predictor(imgs)), start):
            keep = pred['scores'] >= args.score_thr
            drawn = {k: pred[k][keep] for k in ('boxes', 'scores', 'labels')}
            save(draw(img, drawn, classes, args.score_thr), pictures[i])
            print(pictures[i])
            if not keep.any():
                best = f'its best score is {pred["scores"][0]:.3f}' if len(pred['scores']) else 'the model found none'
                print(f'{path}: no box scores at least --score-thr {args.score_thr} ({best}); a lower --score-thr '
                      'draws more')
            predictions.append(dict(drawn, image_id=i))
            images.append(dict(id=i, file_name=path, width=img.shape[2], height=img.shape[1]))
    detections = osp.join(args.out_dir, 'detections.json')
    os.makedirs(args.out_dir, exist_ok=True)
    with open(detections, 'w') as f:
        json.dump(predictions_to_coco(predictions, predictor.cat_ids), f)
    with open(osp.join(args.out_dir, 'images.json'), 'w') as f:
        json.dump(dict(images=images, categories=[dict(id=c, name=n) for c, n in zip(predictor.cat_ids, classes)]),
                  f, indent=1)
    print(f'{detections} (COCO results; image ids and file names in images.json)')


if __name__ == '__main__':
    main()
