"""Train a detector (or classifier) from an mmengine config.

    python tools/train.py configs/detr_t2t.py
    python tools/train.py configs/demo/detr_t2t_shapes.py --work-dir work_dirs/demo
    python tools/train.py CONFIG --resume                          # from the last checkpoint
    python tools/train.py CONFIG --data my_coco_folder --load-from work_dirs/demo   # fine-tune on your classes
    python tools/train.py configs/demo/detr_t2t_shapes.py --data my_coco_folder --img-size 256
    python tools/train.py CONFIG --time-budget 10                  # stop within 10 minutes
    python tools/train.py CONFIG --amp                 # bfloat16 autocast on a CPU, float16 on a GPU
    python tools/train.py CONFIG --cfg-options model.detector.backbone.name=cvt_13
    python tools/train.py CONFIG --accum 4 --ema --logger wandb    # 4 iterations a step, EMA weights, W&B
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch   # CPU (gloo) or GPU
    srun --ntasks=16 --ntasks-per-node=8 python tools/train.py CONFIG --launcher slurm

CONFIG is a file, or the name of a shipped config (detr_t2t, demo/detr_t2t_shapes: zoo.runtime.cli).
"""
import argparse
import os

import _bootstrap  # noqa: F401
from mmengine.config import Config, DictAction

import classification.engine  # noqa: F401  (registers the classifier, datasets and metric)
import detection.engine  # noqa: F401  (registers the detectors, datasets and metric)
from detection.data.folder import add_data_arguments, apply_data_arguments
from zoo.runtime.engine import (Runner, add_runtime_arguments, apply_runtime_arguments, close_distributed, load_config,
                        use_amp, without_pretrained)
from zoo.runtime.hook_args import check_hook_arguments
from zoo.runtime.stop import stop_cleanly
from zoo.runtime.training_options import LAUNCHERS, add_training_arguments, apply_training_arguments
from zoo.runtime.work_dir_lock import hold_work_dir


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('--work-dir', help='where logs and checkpoints go (default: work_dirs/<config name>)')
    p.add_argument('--resume', nargs='?', const='auto', default=None,
                   help='resume from the latest checkpoint in the work dir, or from the given one')
    p.add_argument('--load-from', metavar='CKPT',
                   help='start a new run from a detector checkpoint (a .pth, a work dir for its last checkpoint, or an '
                        'official DETR / Deformable DETR / Hugging Face file) of any class count: its class heads are '
                        're-initialised for this run\'s classes, everything else must fit the config')
    p.add_argument('--amp', action='store_true',
                   help='automatic mixed precision: on a CPU bfloat16 autocast (no loss scaling), '
                        'on a GPU float16 with dynamic loss scaling (mmengine AmpOptimWrapper)')
    p.add_argument('--amp-dtype', choices=['auto', 'bfloat16', 'float16'], default='auto',
                   help='autocast dtype for --amp (auto: bfloat16 on a CPU, float16 on a GPU)')
    p.add_argument('--time-budget', type=float, metavar='MIN',
                   help='stop after the last epoch that fits in MIN minutes of training (it is evaluated)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config entries: key=value')
    add_data_arguments(p)
    add_runtime_arguments(p)
    add_training_arguments(p)  # --accum, --ema, --ema-momentum, --logger
    p.add_argument('--launcher', choices=LAUNCHERS, default='none',
                   help='pytorch: started by torchrun; slurm: by srun (one task per process)')
    p.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_config(args) -> Config:
    cfg = load_config(args.config, args.cfg_options, args.launcher, args.work_dir)
    apply_data_arguments(cfg, args)
    apply_runtime_arguments(cfg, args)
    apply_training_arguments(cfg, args)
    if args.resume == 'auto':
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.load_from:
        if args.resume:
            raise SystemExit('error: --resume continues this work dir\'s run, --load-from starts a new run from a '
                             'checkpoint: give one of them (a new run from a finished one: --load-from with another '
                             '--work-dir)')
        cfg.resume, cfg.load_from = False, args.load_from
        if cfg.model.get('type') == 'Detector':  # the checkpoint holds every weight: fetch no backbone's
            cfg.model = without_pretrained(cfg.model)
    if args.time_budget:
        cfg.custom_hooks = list(cfg.get('custom_hooks', [])) + [dict(type='TimeBudgetHook', minutes=args.time_budget)]
    if args.amp:
        use_amp(cfg, None if args.amp_dtype == 'auto' else args.amp_dtype)
    return cfg


def main(argv=None):
    """Train. A full disk, a work dir in use by another run (``zoo.runtime.work_dir_lock``), a hook
    argument that does not exist or an unreadable checkpoint stop with a message, no traceback
    (``zoo.runtime.stop``)."""
    args = parse_args(argv)
    with stop_cleanly():
        cfg = build_config(args)
        check_hook_arguments(cfg)
        with hold_work_dir(cfg.work_dir) as lock:
            runner = Runner.from_cfg(cfg)
            lock.log_takeover(runner.logger)
            runner.train()
    close_distributed()
    return runner


if __name__ == '__main__':
    main()
