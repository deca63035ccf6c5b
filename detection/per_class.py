"""Results that explain themselves: per class AP, AP50 and ground-truth count, precision-recall
curves and a confusion matrix, from the one COCO evaluation that gives the mAP.

``CocoMetric`` (``detection.engine``) logs the table after every evaluation; given a folder
(``per_class_dir``: tools/test.py, and the last validation of a training run, set it to the work
dir, :func:`write_at_final_validation`) it also writes there

    per_class.json          the table, and the confusion matrix with its rule
    pr_curves.png           precision against recall at IoU 0.5, one panel per class
    confusion_matrix.png    ground truth (rows) against prediction (columns), with background

Where the numbers come from:

* AP and AP50 per class are read from COCOeval's ``eval['precision']`` array of the evaluation
  that gave the overall AP (pycocotools' or faster-coco-eval's, whichever ran): AP is the mean of
  the class's precision over the 10 IoU thresholds 0.5:0.95 and 101 recall thresholds, area
  'all', at most 100 detections per image, skipping the -1 entries, exactly as COCOeval's
  summary averages over classes; AP50 the same at IoU 0.5 alone. The mean of the per-class AP
  over the classes with ground truth is the overall AP. A class without ground truth in the
  evaluated set has no AP (null; '-' in the table).
* gt boxes: the class's annotations that are not crowd regions (``iscrowd`` 0), the ones AP
  counts as findable.
* Precision-recall curves: ``eval['precision'][0, :, k, 0, 2]`` (IoU 0.5, area all, 100
  detections), COCOeval's interpolated precision at recall 0, 0.01, ..., 1 (0 beyond the
  highest recall reached).
* Confusion matrix, at IoU 0.5 and a score threshold (``SCORE_THRESHOLD``, 0.5 unless the metric
  is given ``score_threshold``): per image, the detections scoring at least the threshold are
  taken from the highest score down, and each is matched to the not yet matched ground-truth box
  it overlaps most, whatever the two classes (class-agnostic), if that IoU is at least 0.5. A
  match counts in the row of the box's class and the column of the detection's class (the
  diagonal: right class; elsewhere: found, but called another class). A detection matched to no
  box is a false positive (row 'background'), unless at least half of it lies in a crowd region
  (COCO's rule for crowds), where it is not counted; a box no detection matched is missed
  (column 'background'). Crowd regions are never rows.

matplotlib draws the figures (``pip install 'vitzoo[vis]'``); without it the figures are skipped
with a one-line note, and the table and json are still written.
"""
import json
import math
import os

import numpy as np

from .coco_eval import CocoEvaluation

SCORE_THRESHOLD = 0.5
IOU_THRESHOLD = 0.5
BACKGROUND = 'background'
FILES = dict(table='per_class.json', curves='pr_curves.png', confusion='confusion_matrix.png')


def _mean_valid(values: np.ndarray) -> float | None:
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def per_class_table(evaluation: CocoEvaluation) -> list[dict]:
    """One row per category of the ground truth, in category-id order (the label order):
    dict(category_id, name, AP, AP50, gt_boxes); AP and AP50 None where the class has no ground
    truth in the evaluated images (see the module's docstring for how each is read)."""
    coco = evaluation.coco
    counts = {c: 0 for c in evaluation.cat_ids}
    for ann in coco.dataset['annotations']:
        if not ann.get('iscrowd', 0) and ann['category_id'] in counts:
            counts[ann['category_id']] += 1
    rows = []
    for k, cat_id in enumerate(evaluation.cat_ids):
        if evaluation.precision is None:  # nothing detected: every class with ground truth scores 0
            ap = ap50 = 0.0 if counts[cat_id] else None
        else:
            ap = _mean_valid(evaluation.precision[:, :, k, 0, -1])
            ap50 = _mean_valid(evaluation.precision[0, :, k, 0, -1])
        rows.append(dict(category_id=cat_id, name=str(coco.cats[cat_id].get('name', cat_id)), AP=ap, AP50=ap50,
                         gt_boxes=counts[cat_id]))
    return rows


def format_table(rows: list[dict]) -> str:
    """The table as text: class, AP, AP50, gt boxes."""
    width = max([len('class')] + [len(r['name']) for r in rows])
    number = lambda v: f'{v:7.3f}' if v is not None else f'{"-":>7s}'  # noqa: E731
    lines = [f'{"class":<{width}s} {"AP":>7s} {"AP50":>7s} {"gt boxes":>9s}']
    lines += [f'{r["name"]:<{width}s} {number(r["AP"])} {number(r["AP50"])} {r["gt_boxes"]:9d}' for r in rows]
    return '\n'.join(lines)


def _iou(a: np.ndarray, b: np.ndarray, crowd: bool = False) -> np.ndarray:
    """(N, 4) x (M, 4) xywh boxes -> (N, M) IoU; with ``crowd`` the intersection over the area of
    each ``a`` box instead (COCO's overlap with a crowd region)."""
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * \
        np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    area_a = a[:, 2:3] * a[:, 3:4]
    union = area_a if crowd else area_a + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def confusion_matrix(evaluation: CocoEvaluation, detections: list[dict], score_threshold: float = SCORE_THRESHOLD,
                     iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """(K + 1, K + 1) counts, rows the ground-truth class, columns the predicted class, in
    ``evaluation.cat_ids`` order, the last row and column 'background': row K the false
    positives, column K the missed boxes. The greedy class-agnostic rule is the module's."""
    index = {c: k for k, c in enumerate(evaluation.cat_ids)}
    background = len(index)
    matrix = np.zeros((background + 1, background + 1), dtype=np.int64)
    per_image = {}
    for d in detections:
        if d['score'] >= score_threshold:
            per_image.setdefault(d['image_id'], []).append(d)
    coco = evaluation.coco
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns.get(image_id, [])
        gts = [a for a in anns if not a.get('iscrowd', 0)]
        crowds = np.array([a['bbox'] for a in anns if a.get('iscrowd', 0)], dtype=np.float64).reshape(-1, 4)
        dets = sorted(per_image.get(image_id, []), key=lambda d: -d['score'])
        gt_boxes = np.array([a['bbox'] for a in gts], dtype=np.float64).reshape(-1, 4)
        det_boxes = np.array([d['bbox'] for d in dets], dtype=np.float64).reshape(-1, 4)
        ious = _iou(det_boxes, gt_boxes)
        in_crowd = _iou(det_boxes, crowds, crowd=True)
        matched = np.zeros(len(gts), dtype=bool)
        for i, det in enumerate(dets):
            column = index[det['category_id']]
            candidates = np.where(matched, -1.0, ious[i]) if len(gts) else np.zeros(0)
            j = int(candidates.argmax()) if len(gts) else -1
            if j >= 0 and candidates[j] >= iou_threshold:
                matched[j] = True
                matrix[index[gts[j]['category_id']], column] += 1
            elif not (in_crowd.shape[1] and in_crowd[i].max() >= iou_threshold):
                matrix[background, column] += 1
        for gt, found in zip(gts, matched):
            if not found:
                matrix[index[gt['category_id']], background] += 1
    return matrix


def plot_pr_curves(evaluation: CocoEvaluation, rows: list[dict], out: str) -> str:
    """One panel per class: interpolated precision against recall at IoU 0.5 (area all, 100
    detections per image), titled with the class's AP50."""
    from zoo.analysis import _pyplot, _save
    plt = _pyplot()
    k_total = len(rows)
    cols = max(1, math.ceil(math.sqrt(k_total)))
    nrows = max(1, math.ceil(k_total / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(2.4 * cols, 2.2 * nrows), squeeze=False)
    recall = np.linspace(0, 1, 101)
    for k, ax in enumerate(axes.flat):
        if k >= k_total:
            ax.axis('off')
            continue
        row = rows[k]
        curve = None if evaluation.precision is None else evaluation.precision[0, :, k, 0, -1]
        if row['AP50'] is None:
            ax.text(0.5, 0.5, 'no ground truth', ha='center', va='center', fontsize=8)
        else:
            ax.plot(recall, np.zeros_like(recall) if curve is None else np.clip(curve, 0, None), lw=1.5)
        ax.set_title(f'{row["name"]}  AP50 ' + ('-' if row['AP50'] is None else f'{row["AP50"]:.3f}'), fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
        ax.set_xlabel('recall', fontsize=7)
        ax.set_ylabel('precision', fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle('precision-recall at IoU 0.5', fontsize=9)
    return _save(fig, out)


def plot_confusion_matrix(matrix: np.ndarray, names: list[str], out: str, score_threshold: float) -> str:
    """The counts as an image, each row's colour scaled by its total (where its boxes went),
    counts written in the cells."""
    from zoo.analysis import _pyplot, _save
    plt = _pyplot()
    labels = list(names) + [BACKGROUND]
    n = len(labels)
    size = min(18.0, 3.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    totals = matrix.sum(axis=1, keepdims=True)
    shares = matrix / np.where(totals > 0, totals, 1)
    image = ax.imshow(shares, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='share of the row')
    if n <= 40:
        for r in range(n):
            for c in range(n):
                if matrix[r, c]:
                    ax.text(c, r, str(matrix[r, c]), ha='center', va='center', fontsize=7,
                            color='white' if shares[r, c] > 0.5 else 'black')
    ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.set_xlabel('predicted (background: missed)')
    ax.set_ylabel('ground truth (background: false positive)')
    ax.set_title(f'confusion matrix, IoU 0.5, score >= {score_threshold:g}', fontsize=9)
    return _save(fig, out)


def is_final_validation(runner) -> bool:
    """Whether the validation about to run is the last one of a training run: the epoch-based loop
    has reached its ``max_epochs`` (which ``--time-budget`` lowers to the epoch it ends with), the
    iteration-based one its ``max_iters``. False outside training (tools/test.py, ``runner.val()``)."""
    from mmengine.runner import BaseLoop, IterBasedTrainLoop
    loop = getattr(runner, '_train_loop', None)  # a dict until train() builds it
    if not isinstance(loop, BaseLoop):
        return False
    if isinstance(loop, IterBasedTrainLoop):
        return runner.iter >= loop.max_iters
    return runner.epoch >= loop.max_epochs


def write_at_final_validation(runner, focal: bool) -> list:
    """Before a validation (``ClassCountCheckHook.before_val``): where it is the last of a training
    run, the val evaluator's COCO metrics write ``per_class.json`` and the two figures to the work
    dir, as tools/test.py does, with its score threshold for the confusion matrix (0.3 for
    ``focal`` scores, else 0.5) unless the config sets one. Returns the metrics changed.

    Only the last validation writes them: the table is logged after every validation anyway, and
    the figures cost seconds each time (matplotlib, a panel per class; the confusion matrix loops
    over every image in Python), which on the demo's minute-long epochs would be several per cent
    of the run for files that the next validation overwrites."""
    if not is_final_validation(runner):
        return []
    changed = []
    for metric in getattr(runner.val_loop.evaluator, 'metrics', []):
        if hasattr(metric, 'per_class_dir') and metric.per_class_dir is None:
            metric.per_class_dir = runner.work_dir
            if metric.score_threshold is None:
                metric.score_threshold = 0.3 if focal else SCORE_THRESHOLD
            changed.append(metric)
    return changed


def report_per_class(evaluation: CocoEvaluation, detections: list[dict], out_dir: str | None = None,
                     score_threshold: float = SCORE_THRESHOLD, logger=None, log_table: bool = True) -> dict:
    """Logs the per-class table (``log_table``); with ``out_dir`` also writes ``per_class.json`` and draws the
    precision-recall curves and the confusion matrix there (skipped, with a note, without
    matplotlib). Returns the json's content."""
    rows = per_class_table(evaluation)
    if logger is not None and log_table:
        logger.info('per class (COCO AP at IoU 0.5:0.95 and 0.5; gt boxes without crowd regions):\n'
                    + format_table(rows))
    report = dict(classes=rows)
    if out_dir is None:
        return report
    matrix = confusion_matrix(evaluation, detections, score_threshold)
    names = [r['name'] for r in rows]
    report['confusion_matrix'] = dict(
        iou_threshold=IOU_THRESHOLD, score_threshold=score_threshold, labels=names + [BACKGROUND],
        rule='rows: ground truth, columns: prediction; greedy per image from the highest score, each detection '
             'to the unmatched box of any class with the highest IoU >= 0.5; unmatched detections: row background '
             '(false positives; none counted within crowd regions), unmatched boxes: column background (missed)',
        counts=matrix.tolist())
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FILES['table'])
    with open(path + '.tmp', 'w') as f:
        json.dump(report, f, indent=1)
    os.replace(path + '.tmp', path)
    written = [path]
    try:
        written.append(plot_pr_curves(evaluation, rows, os.path.join(out_dir, FILES['curves'])))
        written.append(plot_confusion_matrix(matrix, names, os.path.join(out_dir, FILES['confusion']),
                                             score_threshold))
    except ImportError:
        if logger is not None:
            logger.info("per-class plots skipped: matplotlib is not installed (pip install 'vitzoo[vis]')")
    if logger is not None:
        logger.info('per-class results: ' + ', '.join(written))
    return report
