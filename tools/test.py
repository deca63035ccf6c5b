"""Evaluate a checkpoint: prints the COCO table, optionally saves the detections json.

    python tools/test.py configs/detr_t2t.py work_dirs/detr_t2t/epoch_150.pth --out dets.json
"""
import argparse
import json
import os
import os.path as osp

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config, DictAction
from mmengine.evaluator import BaseMetric
from mmengine.registry import METRICS

import detection.engine  # noqa: F401
from zoo.engine import Runner


@METRICS.register_module()
class DumpDetections(BaseMetric):
    """Writes the COCO-format detections of the run to ``out`` (rank 0 after gathering)."""

    default_prefix = 'dump'

    def __init__(self, out: str, collect_device='cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.out = out

    def process(self, data_batch, data_samples):
        cat_ids = self.dataset_meta['cat_ids']
        for pred in data_samples:
            b = pred['boxes'].cpu()
            xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
            self.results.append((pred['image_id'], [
                dict(image_id=pred['image_id'], category_id=cat_ids[int(l)], bbox=[round(v, 2) for v in box],
                     score=round(float(s), 5))
                for l, box, s in zip(pred['labels'].tolist(), xywh, pred['scores'].tolist())]))

    def compute_metrics(self, results):
        dets = [d for per_image in dict(results).values() for d in per_image]
        os.makedirs(osp.dirname(osp.abspath(self.out)), exist_ok=True)
        with open(self.out, 'w') as f:
            json.dump(dets, f)
        return {'num_detections': float(len(dets))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('--out', help='write the detections (COCO results json) here')
    p.add_argument('--work-dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--launcher', choices=['none', 'pytorch'], default='none')
    p.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if not osp.isfile(args.checkpoint):
        raise SystemExit(f'checkpoint {args.checkpoint} not found')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    cfg.load_from = args.checkpoint
    cfg.work_dir = args.work_dir or osp.join('work_dirs', osp.splitext(osp.basename(args.config))[0])
    if args.out:
        evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) else [cfg.test_evaluator]
        cfg.test_evaluator = evaluators + [dict(type='DumpDetections', out=args.out)]
    runner = Runner.from_cfg(cfg)
    metrics = runner.test()
    if runner.rank == 0:
        print('\n'.join(f'{k:>16s} {v:.4f}' for k, v in metrics.items()))
    return metrics


if __name__ == '__main__':
    main()
