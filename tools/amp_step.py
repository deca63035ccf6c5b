"""One mixed-precision training step of a detector config on random data (tools/gpu_check.sh):
prints the losses' sum and fails on a non-finite one.

    python tools/amp_step.py configs/detr_r50.py --size 800 1333 --dtype bfloat16 --device cuda
"""
import argparse

import _bootstrap  # noqa: F401
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS

import detection.engine  # noqa: F401
from benchmark_detection import _batch
from zoo.engine import use_amp


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('--size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    p.add_argument('--dtype', choices=['bfloat16', 'float16'], default='bfloat16')
    p.add_argument('--device', default='cuda')
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict({'model.detector.backbone.pretrained': False})
    use_amp(cfg, args.dtype, device.type)
    model = MODELS.build(cfg.model).to(device)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    losses = model.train_step(_batch(1, tuple(args.size), device), optim)
    total = sum(float(v) for v in losses.values())
    if not torch.isfinite(torch.tensor(total)):
        raise SystemExit(f'non-finite loss {total}')
    print(f'{args.config} {args.dtype} {args.size[0]}x{args.size[1]}: loss {total:.4f}')


if __name__ == '__main__':
    main()
