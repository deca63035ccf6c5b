"""The detectors as mmengine models, the COCO metric, and their registrations, so configs can
name them: ``model=dict(type='Detector', ...)``, ``val_evaluator=dict(type='CocoMetric')``."""
import json
import os
from collections.abc import Mapping

import torch
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import DATASETS, FUNCTIONS, HOOKS, METRICS, MODELS

import zoo.runtime.engine  # noqa: F401  (checkpoint loading fix, optimiser constructor)
from zoo.runtime.divergence import DIVERGED, Diverged, check_finite_losses
from zoo.runtime.config_check import Accepts

from .backbone import backbone_arguments, build_backbone
from .checkpoints import LAYOUTS, to_detector_layout
from .coco_eval import coco_evaluation
from .criterion import SetCriterion
from .data.coco import CocoDetection, collate_detection
from .data.folder import check_class_count
from .deformable_detr import DeformableDETR
from .denoising import QueryDenoising
from .dense_head import FCOSDenseHead
from .detr import DETR, postprocess
from .matcher import HungarianMatcher
from .per_class import report_per_class

DETECTORS = {'DETR': DETR, 'DeformableDETR': DeformableDETR}


# What the official training scripts save next to the weights ('model').
_OFFICIAL_TRAINING_STATE = ('model', 'optimizer', 'lr_scheduler', 'epoch', 'args')


def load_foreign_layouts(module, state_dict, prefix, *args):
    """The official DETR / Deformable DETR releases, Hugging Face's layouts and this project's
    earlier ones load as they are (``detection.checkpoints``): the official file's ``model``
    entry is unwrapped, its training state dropped, the weights renamed to ``net.*``. A converted checkpoint must then match the
    model exactly; loaders such as mmengine's (``load_from``) load non-strictly and would
    otherwise leave whatever did not convert at its random init with a warning."""
    inner = state_dict.get(prefix + 'model')
    if isinstance(inner, Mapping):
        for key in _OFFICIAL_TRAINING_STATE:
            state_dict.pop(prefix + key, None)
        state_dict.update({prefix + k: v for k, v in inner.items()})
    own = {k[len(prefix):]: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}
    converted, layout = to_detector_layout(own, module.net)
    if layout in LAYOUTS:
        converted = {'net.' + k: v for k, v in converted.items()}
        expected = module.state_dict()
        missing = sorted(set(expected) - set(converted))
        unexpected = sorted(set(converted) - set(expected))
        misshaped = sorted(k for k in set(converted) & set(expected) if converted[k].shape != expected[k].shape)
        if missing or unexpected or misshaped:
            raise ValueError(f'found {LAYOUTS[layout]}, but after conversion it does not fit this config\'s '
                             f'detector: missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} '
                             f'({len(unexpected)}), other shapes {misshaped[:8]} ({len(misshaped)}). A ResNet-50 '
                             'checkpoint needs the config\'s backbone to be resnet50 with the same sizes')
    state_dict.update({prefix + k: v for k, v in converted.items()})


@MODELS.register_module()
class Detector(BaseModel):
    """A DETR-family network with its matcher, criterion and post-processing.

    forward(inputs (B, 3, H, W), masks (B, H, W), data_samples (targets), mode):
    'loss' -> dict of losses; 'predict' -> per image dict(image_id, scores, labels, boxes xyxy in
    original pixels); 'tensor' -> the raw outputs.
    """

    def __init__(self, detector: dict, num_classes: int, matcher: dict | None = None,
                 criterion: dict | None = None, focal: bool = False, top_k: int = 100,
                 data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        detector = dict(detector)
        self.net = DETECTORS[detector.pop('type', 'DETR')](num_classes=num_classes, **detector)
        self.focal, self.top_k = focal, top_k
        self.criterion = SetCriterion(num_classes, HungarianMatcher(focal=focal, **(matcher or {})),
                                      focal=focal, **(criterion or {}))
        self._register_load_state_dict_pre_hook(load_foreign_layouts, with_module=True)

    def load_for_finetuning(self, filename: str, runner) -> dict:
        """Start a training run from the detector checkpoint ``filename`` (``load_from``,
        ``tools/train.py --load-from``): any layout and class count; the class heads are
        re-initialised where the classes differ, everything else must fit
        (``detection.finetune``). ``zoo.runtime.engine.Runner`` calls this in place of mmengine's
        non-strict load."""
        from .finetune import load_for_finetuning
        dataset = getattr(runner.train_dataloader, 'dataset', None)
        classes = (getattr(dataset, 'metainfo', None) or {}).get('classes')
        return load_for_finetuning(self, filename, runner.cfg.get('model'), classes, runner.logger)

    @staticmethod
    def config_callees(model_cfg: dict) -> dict:
        """What each nested dict of a Detector config is handed to, by its path under ``model``,
        so that ``zoo.runtime.config_check`` can check its keys against the signature (and accept an
        argument the config file does not write)."""
        callees = {'matcher': HungarianMatcher, 'criterion': SetCriterion}
        detector = model_cfg.get('detector') or {}
        net = DETECTORS.get(detector.get('type', 'DETR'))
        if net is not None:
            callees.update({'detector': net, 'detector.backbone': build_backbone,
                            'detector.denoising': QueryDenoising, 'detector.dense_aux': FCOSDenseHead})
            name = (detector.get('backbone') or {}).get('name')
            # a zoo backbone's overrides reach its family's constructor: those are its arguments
            names = backbone_arguments(name) if isinstance(name, str) else None
            if names is not None:
                callees['detector.backbone'] = Accepts(names, f'the {name} backbone')
        return callees

    def forward(self, inputs, masks=None, data_samples=None, mode='tensor'):
        if masks is None:
            masks = torch.zeros(inputs.shape[0], *inputs.shape[-2:], dtype=torch.bool, device=inputs.device)
        # Targets reach the network in training only, where query denoising uses them.
        targets = data_samples if mode == 'loss' and self.training else None
        outputs = self.net(inputs, masks, targets)
        if mode == 'tensor':
            return outputs
        if mode == 'loss':
            if not (torch.isfinite(outputs['pred_logits']).all() and torch.isfinite(outputs['pred_boxes']).all()):
                raise FloatingPointError('the detector produced non-finite logits or boxes. ' + DIVERGED)
            losses = self.criterion(outputs, data_samples)
            if 'dense_outputs' in outputs:
                losses.update(self.net.dense_head.loss(outputs['dense_outputs'], data_samples))
            check_finite_losses(losses)
            return losses
        if mode == 'predict':
            sizes = torch.stack([t['orig_size'] for t in data_samples]).to(inputs.device)
            results = postprocess(outputs, sizes, focal=self.focal, top_k=self.top_k)
            for r, t in zip(results, data_samples):
                r['image_id'] = t['image_id']
            return results
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")


def predictions_to_coco(predictions: list[dict], cat_ids: list[int]) -> list[dict]:
    """Detector predictions (``image_id``, ``labels``, ``scores``, ``boxes`` xyxy in original
    pixels) -> COCO results: ``{'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'}``,
    contiguous labels mapped back through ``cat_ids``."""
    results = []
    for pred in predictions:
        boxes = pred['boxes'].detach().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        results += [dict(image_id=pred['image_id'], category_id=cat_ids[int(label)], bbox=bbox,
                         score=float(score))
                    for label, bbox, score in zip(pred['labels'].tolist(), xywh, pred['scores'].tolist())]
    return results


def check_finite_prediction(pred: dict) -> None:
    """Refuse a prediction whose boxes or scores are NaN or inf: COCOeval scores them as if they
    were detections (a diverged model got AP 0.15 from NaN boxes), so a broken model would get a
    number instead of an error."""
    if not (torch.isfinite(pred['boxes']).all() and torch.isfinite(pred['scores']).all()):
        raise Diverged(f'image id {pred["image_id"]}: the model\'s boxes or scores are non-finite (NaN or inf), so '
                       'the model diverged; such detections are not scored. Evaluate an earlier checkpoint of '
                       'the run, or train again from one with a lower learning rate or gradient clipping '
                       '(optim_wrapper.clip_grad).')


@METRICS.register_module()
class CocoMetric(BaseMetric):
    """COCO box mAP over the whole evaluation set, correct in distributed runs.

    Each process converts its predictions to COCO results; mmengine gathers them from every
    process, and images repeated by the distributed sampler's padding are counted once.
    ``ann_file`` defaults to the evaluated dataset's; ``outfile`` also saves the detections
    (COCO results json). ``classwise`` logs the per-class AP, AP50 and ground-truth counts;
    ``per_class_dir`` also writes them as json there with precision-recall curves and a confusion
    matrix at ``score_threshold`` (``detection.per_class``; default 0.5; tools/test.py and the last
    validation of a training run set both: the work dir, and 0.3 for focal-loss scores).
    """
    default_prefix = 'coco'

    def __init__(self, ann_file: str | None = None, backend: str = 'pycocotools',
                 outfile: str | None = None, classwise: bool = True, per_class_dir: str | None = None,
                 score_threshold: float | None = None, collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file, self.backend, self.outfile = ann_file, backend, outfile
        self.classwise, self.per_class_dir, self.score_threshold = classwise, per_class_dir, score_threshold

    def process(self, data_batch, data_samples) -> None:
        for pred in data_samples:
            check_finite_prediction(pred)
            self.results.append((pred['image_id'], predictions_to_coco([pred], self.dataset_meta['cat_ids'])))

    def compute_metrics(self, results) -> dict:
        per_image = dict(results)  # de-duplicates images the distributed sampler repeated
        detections = [d for dets in per_image.values() for d in dets]
        if self.outfile:
            os.makedirs(os.path.dirname(os.path.abspath(self.outfile)), exist_ok=True)
            with open(self.outfile, 'w') as f:
                json.dump(detections, f)
        ann_file = self.ann_file or self.dataset_meta['ann_file']
        evaluation = coco_evaluation(ann_file, detections, backend=self.backend)
        if self.classwise or self.per_class_dir:
            from mmengine.logging import MMLogger
            from .per_class import SCORE_THRESHOLD
            threshold = SCORE_THRESHOLD if self.score_threshold is None else self.score_threshold
            report_per_class(evaluation, detections, self.per_class_dir, threshold,
                             MMLogger.get_current_instance(), log_table=self.classwise)
        return evaluation.stats


@DATASETS.register_module(name='CocoDetection')
class RegisteredCocoDetection(CocoDetection):
    """CocoDetection built from a config: ``transforms`` is a dict naming a recipe in
    ``detection.data.transforms`` with its arguments, and ``metainfo`` tells the metric how
    labels map back to category ids. ``fix_sizes=True`` takes image sizes from the files where the
    json disagrees (``CocoDetection``)."""

    def __init__(self, img_dir, ann_file, transforms=None, train=True, synthetic=None, fix_sizes=False):
        from .data import transforms as recipes
        if synthetic is not None:
            from .data.synthetic import make_shapes_dataset
            make_shapes_dataset(**synthetic)
        else:
            _explain_missing_coco(img_dir, ann_file)
        if isinstance(transforms, dict):
            transforms = dict(transforms)
            transforms = getattr(recipes, transforms.pop('type'))(**transforms)
        super().__init__(img_dir, ann_file, transforms=transforms, train=train, fix_sizes=fix_sizes)
        self.metainfo = dict(classes=self.classes, cat_ids=self.cat_ids, ann_file=ann_file)


def _explain_missing_coco(img_dir, ann_file):
    if not os.path.isfile(ann_file) or not os.path.isdir(img_dir):
        raise FileNotFoundError(
            f'COCO data not found ({ann_file}, {img_dir}). Put COCO 2017 under data/coco as '
            f'data/coco/{{train2017,val2017,annotations/instances_{{train,val}}2017.json}} '
            f'(a symlink works: ln -s /path/to/coco data/coco), or run on the built-in set: '
            f'python tools/train.py configs/demo/detr_t2t_shapes.py')


@HOOKS.register_module()
class ClassCountCheckHook(Hook):
    """Stops a run whose detector's ``num_classes`` disagrees with the categories of the data it
    is trained or evaluated on, before the first step, with the fix in the message; and records
    the run's class count, class names, data settings and the model settings its command line
    changed in each checkpoint's meta (``detection.run_settings``), which tools/test.py, infer.py,
    export.py and the Predictor read back. The last validation of a training run also writes the
    per-class results to the work dir (``detection.per_class.write_at_final_validation``)."""

    def _check(self, runner, loader):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        meta = getattr(loader.dataset, 'metainfo', None) or {}
        if isinstance(model, Detector) and 'classes' in meta:
            check_class_count(model.net.num_classes, list(meta['classes']), meta.get('ann_file', 'the data'))

    def before_train(self, runner):
        from .run_settings import model_options
        self._check(runner, runner.train_dataloader)
        # read once, as training starts: the config file may be edited while the run goes on
        self._model_options = model_options(runner.cfg)

    def before_val(self, runner):
        from .per_class import write_at_final_validation
        self._check(runner, runner.val_dataloader)
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if isinstance(model, Detector):
            write_at_final_validation(runner, model.focal)

    def before_test(self, runner):
        self._check(runner, runner.test_dataloader)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        from .run_settings import META_KEY, run_settings
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        if isinstance(model, Detector):
            classes = (getattr(runner.train_dataloader.dataset, 'metainfo', None) or {}).get('classes')
            if not hasattr(self, '_model_options'):  # a checkpoint saved outside train()
                from .run_settings import model_options
                self._model_options = model_options(runner.cfg)
            checkpoint.setdefault('meta', {})[META_KEY] = run_settings(runner.cfg, classes, self._model_options)


FUNCTIONS.register_module(name='collate_detection', module=collate_detection)
