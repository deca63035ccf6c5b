"""COCO box mAP with pycocotools, returned as named numbers."""
import contextlib
import copy
import io
import json
import os
from dataclasses import dataclass, field

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


def load_coco(gt) -> COCO:
    """A COCO object from a json path, a COCO-format dict or an existing COCO object."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            gt = json.load(f)
    if not isinstance(gt, dict) or 'images' not in gt or 'annotations' not in gt:
        raise ValueError('ground truth must be a COCO json path or dict with "images", '
                         '"annotations" and "categories"')
    gt = copy.deepcopy(gt)
    gt.setdefault('categories', [])
    for i, ann in enumerate(gt['annotations'], start=1):
        # COCOeval stores matched annotation ids and reads 0 as "unmatched": an annotation with
        # id 0 could never count as found. Ids are renumbered from 1 (on a copy).
        ann['id'] = i
        ann.setdefault('iscrowd', 0)
        if 'area' not in ann:
            ann['area'] = float(ann['bbox'][2] * ann['bbox'][3])
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _evaluate_faster(gt: dict, detections: list[dict]):
    """The same evaluation through faster-coco-eval's C++ core: (stats, precision array)."""
    from faster_coco_eval import COCO as FastCOCO
    from faster_coco_eval import COCOeval_faster
    coco = FastCOCO()
    coco.dataset = gt
    coco.createIndex()
    ev = COCOeval_faster(coco, coco.loadRes(detections), iouType='bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return np.asarray(ev.stats[:len(STAT_NAMES)]), np.asarray(ev.eval['precision'])


def coco_evaluate(gt, detections: list[dict], verbose: bool = False,
                  backend: str = 'pycocotools') -> dict[str, float]:
    """COCO box evaluation: the 12 standard COCOeval stats by name (AP ... ARl), in [0, 1].

    gt: a COCO json path or dict; detections: ``{'image_id', 'category_id', 'bbox': [x, y, w, h]
    in original-image pixels, 'score'}``. An empty detection list scores 0 everywhere (pycocotools'
    loadRes cannot take one). Only images present in ``gt`` are evaluated.
    ``backend='faster'`` runs faster-coco-eval (same numbers, see tests; pip install faster-coco-eval).
    """
    return coco_evaluation(gt, detections, verbose, backend).stats


@dataclass
class CocoEvaluation:
    """One COCOeval run: ``stats`` (``coco_evaluate``'s dict), ``precision`` (COCOeval's
    ``eval['precision']``, shape (T iou thresholds 0.5:0.05:0.95, R=101 recall thresholds 0:0.01:1,
    K categories in ``cat_ids`` order, A=4 area ranges all/small/medium/large, M=3 max detections
    1/10/100), -1 where a category has no ground truth; None when there were no detections),
    ``cat_ids`` (sorted, as COCOeval orders them) and ``coco`` (the ground truth)."""
    stats: dict
    precision: np.ndarray | None
    cat_ids: list
    coco: COCO = field(repr=False)


def coco_evaluation(gt, detections: list[dict], verbose: bool = False,
                    backend: str = 'pycocotools') -> CocoEvaluation:
    """``coco_evaluate`` keeping what the per-class results need (``detection.per_class``): the
    precision array of the same run, not a second evaluation."""
    if backend not in ('pycocotools', 'faster'):
        raise ValueError(f"backend must be 'pycocotools' or 'faster', got {backend!r}")
    coco = load_coco(gt)
    cat_ids = sorted(coco.getCatIds())
    if not detections:
        return CocoEvaluation({k: 0.0 for k in STAT_NAMES}, None, cat_ids, coco)
    known = set(coco.getImgIds())
    unknown = {d['image_id'] for d in detections} - known
    if unknown:
        raise ValueError(f'detections refer to image ids absent from the ground truth: '
                         f'{sorted(unknown)[:10]}')
    detections = [dict(d, bbox=[float(v) for v in d['bbox']], score=float(d['score'])) for d in detections]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        if backend == 'faster':
            stats, precision = _evaluate_faster(coco.dataset, detections)
        else:
            ev = COCOeval(coco, coco.loadRes(detections), iouType='bbox')
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats, precision = np.asarray(ev.stats), np.asarray(ev.eval['precision'])
    if verbose:
        print(sink.getvalue())
    # COCOeval reports -1 where no ground truth falls in an area range; it is kept so that
    # "nothing to find" stays distinguishable from "found nothing".
    return CocoEvaluation({k: float(v) for k, v in zip(STAT_NAMES, stats)}, precision, cat_ids, coco)
