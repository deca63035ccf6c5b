"""Evaluate a checkpoint: prints the metrics (COCO table, or top-1 / top-5 for classifiers),
optionally saves the detections json. A detector's per-class AP, AP50 and ground-truth counts are
printed too and written to the work dir as per_class.json, with pr_curves.png and
confusion_matrix.png (detection/per_class.py says how each is computed).

    python tools/test.py configs/detr_t2t.py work_dirs/detr_t2t --out dets.json
    python tools/test.py CONFIG CHECKPOINT --data my_coco_folder --img-size 256   # its val split
    python tools/test.py CONFIG work_dirs/mine     # a work dir: its last checkpoint, with the run's data and classes
    python tools/test.py configs/classification/deit_tiny_fashion_mnist.py work_dirs/x
    python tools/test.py CONFIG CHECKPOINT --amp    # bfloat16 autocast on a CPU, float16 on a GPU
    torchrun --nproc_per_node=2 tools/test.py CONFIG CHECKPOINT --launcher pytorch
    srun --ntasks=16 --ntasks-per-node=8 python tools/test.py CONFIG CHECKPOINT --launcher slurm
"""
import argparse
import os

import _bootstrap  # noqa: F401
from mmengine.config import DictAction

import classification.engine  # noqa: F401  (registers the classifier, datasets and metric)
import detection.engine  # noqa: F401
from detection.data.folder import add_data_arguments, apply_data_arguments
from detection.run_settings import use_checkpoint_settings
from zoo.runtime.engine import (Runner, add_runtime_arguments, apply_runtime_arguments, close_distributed, load_config,
                        use_amp_evaluation, without_pretrained)
from zoo.runtime.stop import stop_cleanly
from zoo.layers import fuse_for_inference
from zoo.runtime.training_options import LAUNCHERS


def main(argv=None):
    """Evaluate. A misspelt config key, an unreadable checkpoint or one of another model, and a
    diverged model stop with their message, no traceback (``zoo.runtime.stop``)."""
    with stop_cleanly():
        return evaluate(argv)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint', help='a checkpoint, or a work dir (its last checkpoint)')
    p.add_argument('--out', help='write the detections (COCO results json) here')
    p.add_argument('--work-dir')
    p.add_argument('--amp', action='store_true',
                   help='run inference under autocast: bfloat16 on a CPU, float16 on a GPU (see --amp-dtype)')
    p.add_argument('--amp-dtype', choices=['auto', 'bfloat16', 'float16'], default='auto')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    add_data_arguments(p)
    add_runtime_arguments(p)
    p.add_argument('--launcher', choices=LAUNCHERS, default='none',
                   help='pytorch: started by torchrun; slurm: by srun (one task per process), as tools/train.py')
    p.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args):
    """The config tools/test.py evaluates with: the checkpoint's run settings, the data
    arguments, strict loading of the checkpoint and the per-class outputs in the work dir."""
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    use_checkpoint_settings(cfg, args)  # a work dir -> its last checkpoint; the run's classes and data
    apply_data_arguments(cfg, args)
    apply_runtime_arguments(cfg, args)
    cfg.load_from = args.checkpoint
    cfg.strict_load = True  # another architecture or class count stops, as in infer.py and export.py
    cfg.model = without_pretrained(cfg.model)  # the checkpoint replaces every weight: fetch nothing
    if args.amp:
        use_amp_evaluation(cfg, None if args.amp_dtype == 'auto' else args.amp_dtype)
    evaluators = cfg.get('test_evaluator') or []
    for evaluator in evaluators if isinstance(evaluators, list) else [evaluators]:
        if evaluator.get('type') == 'CocoMetric':
            # per_class.json, pr_curves.png and confusion_matrix.png in the work dir (detection.per_class);
            # the matrix counts detections scoring at least 0.5 (0.3 for the focal-loss scores, as infer.py)
            evaluator.setdefault('per_class_dir', cfg.work_dir)
            evaluator.setdefault('score_threshold', 0.3 if cfg.model.get('focal') else 0.5)
            if args.out:
                evaluator['outfile'] = args.out
    return cfg


def evaluate(argv=None):
    args = parse_args(argv)
    cfg = build_config(args)
    runner = Runner.from_cfg(cfg)
    fuse_for_inference(runner.model.eval())  # LeFF's batch norms folded; the checkpoint loaded next refolds them
    metrics = runner.test()
    if runner.rank == 0:
        print('\n'.join(f'{k:>16s} {v:.4f}' for k, v in metrics.items()))
    close_distributed()
    return metrics


if __name__ == '__main__':
    main()
