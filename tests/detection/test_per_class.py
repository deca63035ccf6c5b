"""Results that explain themselves: the COCO metric's per-class table (AP, AP50, ground-truth count)
read from the same COCOeval run as the mAP, written as json with precision-recall curves and a
confusion matrix; tools/test.py puts them in the work dir."""
import contextlib
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.engine import CocoMetric

# Category ids as users have them (unsorted, gaps); 'zebra' has no ground truth in the set.
CATEGORIES = [dict(id=9, name='cat'), dict(id=2, name='dog'), dict(id=5, name='zebra')]
CAT_IDS = [2, 5, 9]  # label order: sorted ids
IMAGES = [dict(id=1, file_name='a.png', width=100, height=80), dict(id=2, file_name='b.png', width=100, height=80),
          dict(id=3, file_name='c.png', width=100, height=80)]
ANNOTATIONS = [
    dict(id=1, image_id=1, category_id=9, bbox=[10, 10, 30, 30], iscrowd=0),   # cat, found
    dict(id=2, image_id=1, category_id=2, bbox=[60, 10, 30, 40], iscrowd=0),   # dog, called a cat
    dict(id=3, image_id=2, category_id=9, bbox=[5, 5, 40, 40], iscrowd=0),     # cat, missed
    dict(id=4, image_id=2, category_id=2, bbox=[50, 30, 40, 40], iscrowd=0),   # dog, found
    dict(id=5, image_id=3, category_id=2, bbox=[0, 0, 50, 50], iscrowd=1),     # a crowd of dogs
    dict(id=6, image_id=3, category_id=9, bbox=[60, 40, 30, 30], iscrowd=0),   # cat, found
]
GT = dict(images=IMAGES, annotations=ANNOTATIONS, categories=CATEGORIES)
# image id -> [(category id, [x, y, w, h], score)]
DETECTIONS = {
    1: [(9, [11, 10, 30, 31], 0.9), (9, [60, 12, 30, 38], 0.8), (5, [40, 60, 10, 10], 0.7),
        (2, [10, 10, 30, 30], 0.3)],                      # below the 0.5 threshold: not in the matrix
    2: [(2, [52, 30, 38, 40], 0.95), (9, [70, 0, 20, 20], 0.6)],
    3: [(9, [60, 40, 30, 30], 0.85), (2, [5, 5, 20, 20], 0.9)],   # the second inside the crowd
}
# rows: ground truth, columns: predicted, both in label order dog, zebra, cat, then background
EXPECTED_MATRIX = [[1, 0, 1, 0],     # dog: found once, once called a cat
                   [0, 0, 0, 0],     # zebra: none
                   [0, 0, 2, 1],     # cat: found twice, missed once
                   [0, 1, 1, 0]]     # background: a zebra and a cat where nothing is (not the dog in the crowd)


def _predictions():
    """The detections as the detector's predict mode gives them (xyxy tensors, contiguous labels)."""
    preds = []
    for image_id, dets in DETECTIONS.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for _, (x, y, w, h), _ in dets], dtype=torch.float32)
        preds.append(dict(image_id=image_id, boxes=boxes, scores=torch.tensor([s for *_, s in dets]),
                          labels=torch.tensor([CAT_IDS.index(c) for c, *_ in dets])))
    return preds


def _coco_results():
    return [dict(image_id=i, category_id=c, bbox=[float(v) for v in b], score=s)
            for i, dets in DETECTIONS.items() for c, b, s in dets]


def _cocoeval_precision():
    """pycocotools' own precision array for GT and DETECTIONS, as a user would compute it."""
    gt = COCO()
    gt.dataset = json.loads(json.dumps(GT))
    for ann in gt.dataset['annotations']:
        ann['area'] = ann['bbox'][2] * ann['bbox'][3]
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(_coco_results()), iouType='bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.eval['precision'], list(ev.params.catIds), ev.stats


def _run_metric(tmp_path, backend='pycocotools', **kwargs):
    ann_file = tmp_path / 'gt.json'
    ann_file.write_text(json.dumps(GT))
    metric = CocoMetric(backend=backend, **kwargs)
    metric.dataset_meta = dict(classes=['dog', 'zebra', 'cat'], cat_ids=CAT_IDS, ann_file=str(ann_file))
    metric.process(None, _predictions())
    return metric.evaluate(len(DETECTIONS))


def test_per_class_table_is_cocoevals_own_precision_array(tmp_path, log_messages):
    out = tmp_path / 'work'
    metrics = _run_metric(tmp_path, per_class_dir=str(out))
    report = json.loads((out / 'per_class.json').read_text())
    rows = {r['name']: r for r in report['classes']}
    assert [r['category_id'] for r in report['classes']] == CAT_IDS
    assert {n: r['gt_boxes'] for n, r in rows.items()} == {'dog': 2, 'zebra': 0, 'cat': 3}  # the crowd not counted

    precision, cat_ids, stats = _cocoeval_precision()
    for k, cat_id in enumerate(cat_ids):  # restated: COCOeval's summary, for one class
        name = next(c['name'] for c in CATEGORIES if c['id'] == cat_id)
        p = precision[:, :, k, 0, 2]        # all IoUs, all recalls, area 'all', 100 detections
        p50 = precision[0, :, k, 0, 2]      # IoU 0.5
        if name == 'zebra':                 # no ground truth: -1 throughout, no AP
            assert (p == -1).all() and rows[name]['AP'] is None and rows[name]['AP50'] is None
            continue
        assert rows[name]['AP'] == pytest.approx(p[p > -1].mean(), abs=1e-12)
        assert rows[name]['AP50'] == pytest.approx(p50[p50 > -1].mean(), abs=1e-12)
    assert 0 < rows['cat']['AP50'] < 1 and rows['dog']['AP50'] > 0
    # the classes' mean is the mAP the metric reports, from the same evaluation
    assert np.mean([rows['cat']['AP'], rows['dog']['AP']]) == pytest.approx(metrics['coco/AP'], abs=1e-12)
    assert metrics['coco/AP'] == pytest.approx(stats[0], abs=1e-12)

    table = next(m for m in log_messages if 'gt boxes' in m)
    lines = table.splitlines()
    assert any(line.split()[0] == 'zebra' and line.split()[1:3] == ['-', '-'] for line in lines)
    assert any(line.split()[0] == 'cat' and line.split()[-1] == '3' for line in lines)

    for name in ('pr_curves.png', 'confusion_matrix.png'):
        with Image.open(out / name) as img:
            assert img.format == 'PNG' and min(img.size) > 100


def test_confusion_matrix_greedy_class_agnostic_with_background(tmp_path):
    out = tmp_path / 'work'
    _run_metric(tmp_path, per_class_dir=str(out), score_threshold=0.5)
    matrix = json.loads((out / 'per_class.json').read_text())['confusion_matrix']
    assert matrix['labels'] == ['dog', 'zebra', 'cat', 'background']
    assert matrix['score_threshold'] == 0.5 and matrix['iou_threshold'] == 0.5
    assert matrix['counts'] == EXPECTED_MATRIX
    # a lower threshold lets image 1's 0.3 dog in: it lands on the cat already matched (by the 0.9
    # cat), so it is a false positive
    _run_metric(tmp_path, per_class_dir=str(out), score_threshold=0.2)
    counts = json.loads((out / 'per_class.json').read_text())['confusion_matrix']['counts']
    assert counts[3][0] == EXPECTED_MATRIX[3][0] + 1


def test_faster_coco_eval_gives_the_same_table(tmp_path):
    pytest.importorskip('faster_coco_eval')
    _run_metric(tmp_path, per_class_dir=str(tmp_path / 'a'))
    _run_metric(tmp_path, backend='faster', per_class_dir=str(tmp_path / 'b'))
    a = json.loads((tmp_path / 'a' / 'per_class.json').read_text())
    b = json.loads((tmp_path / 'b' / 'per_class.json').read_text())
    for ra, rb in zip(a['classes'], b['classes']):
        assert ra['name'] == rb['name'] and ra['gt_boxes'] == rb['gt_boxes']
        for key in ('AP', 'AP50'):
            assert (ra[key] is None and rb[key] is None) or ra[key] == pytest.approx(rb[key], abs=1e-6)
    assert a['confusion_matrix'] == b['confusion_matrix']


def test_without_matplotlib_the_plots_are_skipped_with_a_note(tmp_path, monkeypatch, log_messages):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', None)
    out = tmp_path / 'work'
    metrics = _run_metric(tmp_path, per_class_dir=str(out))
    assert metrics['coco/AP50'] > 0
    assert (out / 'per_class.json').is_file()
    assert not (out / 'pr_curves.png').exists() and not (out / 'confusion_matrix.png').exists()
    notes = [m for m in log_messages if 'skipped' in m]
    assert len(notes) == 1 and len(notes[0].splitlines()) == 1 and 'matplotlib is not installed' in notes[0]


def test_no_detections_scores_zero_per_class(tmp_path):
    ann_file = tmp_path / 'gt.json'
    ann_file.write_text(json.dumps(GT))
    metric = CocoMetric(per_class_dir=str(tmp_path / 'work'))
    metric.dataset_meta = dict(classes=['dog', 'zebra', 'cat'], cat_ids=CAT_IDS, ann_file=str(ann_file))
    metric.process(None, [dict(image_id=1, boxes=torch.zeros(0, 4), scores=torch.zeros(0),
                               labels=torch.zeros(0, dtype=torch.long))])
    metric.evaluate(1)
    report = json.loads((tmp_path / 'work' / 'per_class.json').read_text())
    assert [(r['name'], r['AP'], r['gt_boxes']) for r in report['classes']] == [
        ('dog', 0.0, 2), ('zebra', None, 0), ('cat', 0.0, 3)]
    assert [row[-1] for row in report['confusion_matrix']['counts']] == [2, 0, 3, 0]  # every box missed


def test_validation_in_training_logs_the_table_without_writing_files(tmp_path, log_messages):
    """The metric as configs have it (no per_class_dir), as every validation of a training run but
    the last uses it: the table is logged, nothing written."""
    _run_metric(tmp_path)
    assert any('gt boxes' in m for m in log_messages)
    assert sorted(os.listdir(tmp_path)) == ['gt.json']


def _runner_at(loop, position: int, work_dir, *metrics):
    """A stand-in for a Runner about to validate, ``position`` its epoch (or iteration)."""
    from types import SimpleNamespace
    return SimpleNamespace(_train_loop=loop, epoch=position, iter=position, work_dir=str(work_dir),
                           val_loop=SimpleNamespace(evaluator=SimpleNamespace(metrics=list(metrics))))


def test_only_the_last_validation_of_a_training_run_writes_the_per_class_files(tmp_path):
    """``ClassCountCheckHook.before_val``'s rule: the epoch that ends the run (its max_epochs, which
    --time-budget lowers) or the last iteration of an iteration-based one points the COCO metric at
    the work dir, with tools/test.py's score threshold (0.3 for focal-loss scores); earlier ones, a
    validation outside training and a metric the config gave a folder are left as they are."""
    from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

    from detection.per_class import write_at_final_validation
    epochs = EpochBasedTrainLoop.__new__(EpochBasedTrainLoop)
    epochs._max_epochs = 3
    metric = CocoMetric()
    assert write_at_final_validation(_runner_at(epochs, 2, tmp_path, metric), focal=True) == []
    assert metric.per_class_dir is None and metric.score_threshold is None
    assert write_at_final_validation(_runner_at(dict(type='EpochBasedTrainLoop'), 3, tmp_path, metric), True) == []
    assert write_at_final_validation(_runner_at(epochs, 3, tmp_path, metric), focal=True) == [metric]
    assert metric.per_class_dir == str(tmp_path) and metric.score_threshold == 0.3
    epochs._max_epochs = 2  # --time-budget made epoch 2 the last
    softmax, configured = CocoMetric(), CocoMetric(per_class_dir=str(tmp_path / 'mine'), score_threshold=0.7)
    assert write_at_final_validation(_runner_at(epochs, 2, tmp_path, softmax, configured), False) == [softmax]
    assert softmax.score_threshold == 0.5 and configured.per_class_dir == str(tmp_path / 'mine')
    iters = IterBasedTrainLoop.__new__(IterBasedTrainLoop)
    iters._max_iters = 100
    late = CocoMetric()
    assert write_at_final_validation(_runner_at(iters, 50, tmp_path, late), False) == []
    assert write_at_final_validation(_runner_at(iters, 100, tmp_path, late), False) == [late]


def test_tools_test_writes_the_per_class_results_in_the_work_dir(tmp_path):
    """tools/test.py on a user folder: the table, the json and both figures in its work dir."""
    import argparse

    from mmengine.config import Config, DictAction
    from mmengine.registry import MODELS

    from test_data_folder import DEMO, TINY, _run_tool, write_user_folder
    root = write_user_folder(tmp_path / 'mine')
    cfg = Config.fromfile(DEMO)
    parser = argparse.ArgumentParser()
    parser.add_argument('--options', nargs='+', action=DictAction)
    cfg.merge_from_dict(parser.parse_args(['--options', *TINY]).options)
    model = MODELS.build(dict(cfg.model, num_classes=3))
    checkpoint = str(tmp_path / 'model.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), checkpoint)
    work = tmp_path / 'work'
    _run_tool('test', [DEMO, checkpoint, '--work-dir', str(work), '--data', root, '--img-size', '64',
                       '--cfg-options', *TINY])
    report = json.loads((work / 'per_class.json').read_text())
    assert [r['name'] for r in report['classes']] == ['disc', 'triangle', 'square']
    assert sum(r['gt_boxes'] for r in report['classes']) > 0
    assert (work / 'pr_curves.png').stat().st_size > 0 and (work / 'confusion_matrix.png').stat().st_size > 0
