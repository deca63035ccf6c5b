"""A trained detector as one call: images in, boxes, scores and class names out.

    from detection import Predictor
    predictor = Predictor('configs/demo/detr_t2t_shapes.py', 'work_dirs/detr_t2t_shapes/epoch_32.pth')
    result = predictor('photo.jpg')   # dict(boxes (K, 4) xyxy pixels, scores (K,), labels (K,), names [K])

Images go through the config's test transforms (``test_dataloader.dataset.transforms``) and its
collate function (padding to a multiple of 32, with the padding mask), then ``Detector.test_step``:
the path ``tools/test.py`` takes, so an image gets the detections ``tools/test.py`` gives it, and
the same ones alone or in any batch (the mask keeps padding out of every layer).
"""
import copy
import functools
import json
import os
import os.path as osp
import types
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import FUNCTIONS, MODELS
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from . import engine  # noqa: F401  (registers Detector and collate_detection)
from .data import transforms as recipes
from .data.images import read_image, to_rgb


def _config(config) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config(dict(config))
    path = os.fspath(config)
    if not osp.isfile(path):
        raise FileNotFoundError(f'config not found: {path} (give the path of a config file, e.g. '
                                'configs/demo/detr_t2t_shapes.py, or an mmengine Config)')
    return Config.fromfile(path)


def _test_loader(cfg: Config) -> dict:
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if not loader or not (loader.get('dataset') or {}).get('transforms'):
        raise ValueError('the config has no test_dataloader.dataset.transforms (nor val_dataloader\'s): the '
                         'Predictor resizes and normalises images as they do. Use a detection config from '
                         'configs/, or add e.g. transforms=dict(type=\'detr_test_transforms\') to its test dataset')
    return loader


def config_categories(cfg: Config) -> tuple[list[str], list[int]] | None:
    """(class names, category ids) of the config's test data, from its annotation file's
    ``categories`` (sorted by id, as the dataset labels them); None where the file is absent."""
    ann_file = (_test_loader(cfg).get('dataset') or {}).get('ann_file')
    if not ann_file or not osp.isfile(ann_file):
        return None
    with open(ann_file) as f:
        cats = sorted(json.load(f).get('categories') or [], key=lambda c: c['id'])
    return [c['name'] for c in cats], [c['id'] for c in cats]


def checkpoint_categories(meta: Mapping | None, cfg: Config) -> tuple[list[str], list[int]]:
    """(class names, category ids) for the labels 0..C-1: the checkpoint's ``meta`` (mmengine
    stores the training set's metainfo as ``dataset_meta``; ``classes`` / ``cat_ids`` directly
    under ``meta`` or in its ``run_settings`` count too), else the config's data
    (``config_categories``) where it has ``num_classes`` categories, else '0'..'C-1'. Category ids
    missing from the checkpoint are the config's data's where its class names are the same, else
    0..C-1. A checkpoint naming another number of classes than ``num_classes`` is an error."""
    meta = meta or {}
    settings = meta.get('run_settings') if isinstance(meta.get('run_settings'), Mapping) else {}
    data = {**settings, **{k: v for k, v in meta.items() if v is not None},
            **{k: v for k, v in (meta.get('dataset_meta') or {}).items() if v is not None}}
    num_classes = cfg.model.num_classes
    classes, cat_ids = data.get('classes'), data.get('cat_ids')
    if not classes:
        classes, cat_ids = config_categories(cfg) or ([], None)
        if len(classes) != num_classes:  # no data, or data the config was not trained on
            classes, cat_ids = [str(i) for i in range(num_classes)], None
    classes = [str(c) for c in classes]
    if cat_ids is None:  # the config's data's ids where it has these classes, else 0..C-1
        names, ids = config_categories(cfg) or ([], [])
        cat_ids = ids if names == classes else range(len(classes))
    cat_ids = list(cat_ids)
    if len(classes) != num_classes or len(cat_ids) != num_classes:
        raise ValueError(f'the checkpoint names {len(classes)} classes ({len(cat_ids)} category ids), but the model '
                         f'has num_classes={num_classes}: pass the config the checkpoint was trained with')
    return classes, cat_ids


def load_detector(cfg: Config, checkpoint: str):
    """The config's detector (eval mode) with the checkpoint's weights loaded strictly
    (``zoo.pretrained.load_exactly``: another architecture or class count raises a ValueError
    naming the disagreeing keys), and the checkpoint's ``meta`` (None without one)."""
    from zoo.layers import fuse_for_inference
    from zoo.runtime.engine import without_pretrained
    from zoo.pretrained import load_exactly
    model = MODELS.build(without_pretrained(cfg.model))  # the checkpoint replaces every weight
    state = load_exactly(model, checkpoint)
    # LeFF's batch norms folded once for inference (train() undoes it)
    return fuse_for_inference(model.eval()), state.get('meta') if isinstance(state, Mapping) else None


def _use_run_settings(cfg: Config, checkpoint: str) -> str:
    """``checkpoint`` resolved to a file (a work dir: its last checkpoint), with the run settings
    it records put into ``cfg`` (``detection.run_settings``: the class count, the model settings
    the run's ``--cfg-options`` changed, the test transforms or ``--img-size``; the data folder is
    not read), and a log line naming those that differ from the config."""
    from mmengine.logging import MMLogger
    from zoo.runtime.checkpointing import resolve_checkpoint

    from .data.folder import set_img_size
    from .run_settings import apply_run_settings, read_meta, settings_from_meta
    checkpoint = resolve_checkpoint(checkpoint)
    given = types.SimpleNamespace(checkpoint=checkpoint, cfg_options=None, data=None, img_size=None)
    taken = apply_run_settings(cfg, settings_from_meta(read_meta(checkpoint)), given, need_data=False)
    if given.img_size:
        set_img_size(cfg, given.img_size)
    if taken:
        MMLogger.get_current_instance().info(f'Predictor: from the checkpoint {checkpoint}: {", ".join(taken)}')
    return checkpoint


def as_image(image, where: str = 'the image') -> torch.Tensor:
    """A path (str or os.PathLike), a PIL image (any mode), an (H, W, 3) or (H, W) uint8 numpy
    array (RGB) or a (3, H, W) uint8 tensor -> (3, H, W) uint8 tensor. Paths are read as the
    dataset reads them (``read_image``)."""
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if osp.isdir(path):
            raise IsADirectoryError(f'{path} is a folder: pass its image files (e.g. sorted(glob.glob(...))), or '
                                    'give the folder to tools/infer.py')
        return TF.pil_to_tensor(read_image(path))
    if isinstance(image, Image.Image):
        return TF.pil_to_tensor(to_rgb(image))
    if isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3 and image.shape[0] == 3:
        return image.cpu()
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim == 3 and image.shape[2] == 3:
            return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a copy: the array may be read-only
    described = (f'a {type(image).__name__} of shape {tuple(image.shape)} and dtype {image.dtype}'
                 if hasattr(image, 'shape') else f'a {type(image).__name__}')
    raise TypeError(f'{where} is {described}: give a file path, a PIL image, an (H, W, 3) uint8 RGB numpy array '
                    '(a float one in 0..1: (a * 255).round().astype(np.uint8); RGBA: a[..., :3]) or a (3, H, W) '
                    'uint8 tensor')


class Predictor:
    """A trained detector that takes images and returns, per image, a dict:

    ``boxes`` (K, 4) float32 xyxy in the image's own pixels, ``scores`` (K,), ``labels`` (K,)
    int64 in 0..C-1 and ``names`` (K class names), best score first; K is the detector's
    ``top_k`` (or its query count), cut to scores >= ``score_threshold`` when one is set.

    ``config``: a config path or an mmengine Config (not changed); ``checkpoint``: a trained
    ``.pth`` (loaded strictly), the work dir of a training run (its last checkpoint), or a
    ``.onnx`` graph written by tools/export.py (run in onnxruntime on the CPU). With
    ``run_settings`` the checkpoint's record of its run (``detection.run_settings``: the class
    count, the model settings its ``--cfg-options`` changed, such as ``num_queries``, and the test
    size of a ``--data`` / ``--img-size`` run) goes into the config first, with a log line.
    Class names come from the checkpoint (its training set's ``dataset_meta``), else from the
    config's data. ``classes`` and ``cat_ids`` (the dataset's category id of each label) are
    attributes. Images are run ``batch_size`` at a time; an ``.onnx`` graph one at a time, so that
    no batch-mate adds padding: alone, an image whose resized sides are multiples of 32 gets none,
    and the graph then gives the PyTorch model's boxes (to float32 rounding, ~1e-4 px). A token
    backbone's graph was traced without the padding mask (``detection.export``), so an image that
    needs padding alone gets slightly other boxes from it than from the ``.pth``: a warning says so."""

    def __init__(self, config, checkpoint, device='cpu', score_threshold: float | None = None,
                 batch_size: int = 8, run_settings: bool = True):
        cfg = copy.deepcopy(_config(config))
        if cfg.get('model', {}).get('type') != 'Detector':
            raise ValueError(f'the config builds {cfg.get("model", {}).get("type")!r}, not a Detector: the Predictor '
                             'runs DETR and Deformable DETR configs (configs/detr_*.py, configs/deformable_detr_*.py)')
        checkpoint = os.fspath(checkpoint)
        if not checkpoint.endswith('.onnx'):
            checkpoint = _use_run_settings(cfg, checkpoint) if run_settings else checkpoint
        if checkpoint.endswith('.onnx'):
            if torch.device(device).type != 'cpu':
                raise ValueError(f'device={device!r}: an exported .onnx graph runs on the CPU in onnxruntime; pass '
                                 'device=\'cpu\', or the .pth checkpoint to run on another device')
            from .export import OnnxDetector
            model = OnnxDetector(checkpoint)
            meta = {k: model.metadata.get(k) for k in ('classes', 'cat_ids')}
        else:
            model, meta = load_detector(cfg, checkpoint)
            model.to(device)
        self._setup(model, cfg, *checkpoint_categories(meta, cfg), score_threshold, batch_size)

    @classmethod
    def from_model(cls, model, config, classes: list[str] | None = None, cat_ids: list[int] | None = None,
                   score_threshold: float | None = None, batch_size: int = 8) -> 'Predictor':
        """A Predictor around a model already built: a ``Detector`` (on its device, in eval mode),
        an ``OnnxDetector`` or any callable with their ``(inputs, masks, data_samples,
        mode='predict')`` interface. ``classes`` default to the config's data's."""
        cfg = _config(config)
        self = cls.__new__(cls)
        if classes is None:
            classes, cat_ids = checkpoint_categories(None, cfg)
        self._setup(model, cfg, list(classes), list(cat_ids if cat_ids is not None else range(len(classes))),
                    score_threshold, batch_size)
        return self

    def _setup(self, model, cfg, classes, cat_ids, score_threshold, batch_size):
        if batch_size < 1:
            raise ValueError(f'batch_size={batch_size}: give 1 or more')
        self.model, self.cfg, self.classes, self.cat_ids = model, cfg, classes, cat_ids
        self.score_threshold, self.batch_size = score_threshold, batch_size
        from .export import OnnxDetector
        # The exported graph's backbone does not take the padding mask (it is traced unmasked), so
        # a batch-mate's size would change an image's boxes: it runs one image at a time.
        self.one_at_a_time = isinstance(model, OnnxDetector)
        self._warn_padding = self.one_at_a_time and not model.pad_exact
        loader = _test_loader(cfg)
        recipe = dict(loader['dataset']['transforms'])
        self.transform = getattr(recipes, recipe.pop('type'))(**recipe)
        collate = dict(loader.get('collate_fn') or dict(type='collate_detection'))
        self.collate = functools.partial(FUNCTIONS.get(collate.pop('type')), **collate)

    @torch.no_grad()
    def __call__(self, images, batch_size: int | None = None):
        """One image (path, PIL image, (H, W, 3) uint8 array or (3, H, W) uint8 tensor) -> its
        dict; a list (or tuple) of them -> a list of dicts, in order."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        size = 1 if self.one_at_a_time else batch_size or self.batch_size
        results = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            pictures = [as_image(img, img if isinstance(img, (str, os.PathLike)) else f'image {start + i}')
                        for i, img in enumerate(chunk)]
            results += self._predict(pictures, [str(img) if isinstance(img, (str, os.PathLike)) else
                                                f'image {start + i}' for i, img in enumerate(chunk)])
        return results[0] if single else results

    def _predict(self, pictures: list[torch.Tensor], names: list[str]) -> list[dict]:
        """(3, H_i, W_i) uint8 images -> their result dicts, in one batch."""
        batch = self.collate([(self.transform(img).as_subclass(torch.Tensor),
                               dict(image_id=i, orig_size=torch.tensor(img.shape[-2:])))
                              for i, img in enumerate(pictures)])
        if self._warn_padding and batch['masks'].any():
            self._warn_padding = False  # once: every image of a folder may need it
            real = ~batch['masks'][0]
            h, w = int(real.any(1).sum()), int(real.any(0).sum())
            padded_h, padded_w = batch['inputs'].shape[-2:]
            warnings.warn(f'{names[0]} is resized to {h} x {w}, which is padded to {padded_h} x {padded_w}: this '
                          'exported graph\'s backbone was traced without the padding mask, so on padded images its '
                          'boxes differ slightly from the PyTorch model\'s (images whose resized sides are multiples '
                          'of 32 get no padding). For the same boxes on every image, run the .pth checkpoint: '
                          'Predictor(config, checkpoint)', stacklevel=4)  # the caller's line (under no_grad)
        if hasattr(self.model, 'test_step'):  # the Runner's path: data preprocessor (device), then predict
            preds = self.model.test_step(batch)
        else:
            preds = self.model(batch['inputs'], batch['masks'], batch['data_samples'], mode='predict')
        if len(preds) != len(pictures):
            raise RuntimeError(f'the model returned {len(preds)} predictions for a batch of {len(pictures)} images')
        results = []
        for pred, name in zip(preds, names):
            scores, boxes = pred['scores'].detach().float().cpu(), pred['boxes'].detach().float().cpu()
            if not (torch.isfinite(boxes).all() and torch.isfinite(scores).all()):
                raise FloatingPointError(f'{name}: the model\'s boxes or scores are non-finite (NaN or inf), so the '
                                         'checkpoint diverged: use an earlier checkpoint of the run')
            order = scores.argsort(descending=True, stable=True)
            if self.score_threshold is not None:
                order = order[scores[order] >= self.score_threshold]
            labels = pred['labels'].detach().cpu().long()[order]
            results.append(dict(boxes=boxes[order], scores=scores[order], labels=labels,
                                names=[self.classes[i] for i in labels.tolist()]))
        return results
