"""Train one config with several seeds, one fresh process each, one after the other, and print the
per-seed table: validation AP50 at every evaluation, the training wall time, and the minute at which
AP50 first reached the target.

    python tools/dev/seed_sweep.py configs/demo/detr_t2t_shapes.py --seeds 0 1 2 3 4
    python tools/dev/seed_sweep.py configs/demo/detr_t2t_shapes.py --seeds 0 1 --name no-dn \
        --cfg-options model.detector.denoising=None

Runs go to ``work_dirs/sweep/<name>/seed<k>`` (a finished seed is not trained again: its table row
is read back); the table is also appended to ``work_dirs/sweep/<name>/table.md``. Run nothing else
meanwhile: the times are the point.
"""
import argparse
import os
import os.path as osp
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402,F401
from plot_curves import read_scalars

ROOT = _bootstrap.ROOT


def seed_row(work_dir: str, metric: str, target: float) -> dict:
    """One finished run -> its curve [(step, value)], training seconds and time to the target."""
    train, val = read_scalars(work_dir)
    with open(osp.join(work_dir, 'train_seconds')) as f:
        seconds = float(f.read())
    curve = [(r['iteration'], r[metric]) for r in val if metric in r]
    last_step = max((r['step'] for r in train), default=1)
    first = next((step for step, v in curve if v >= target), None)
    return dict(curve=curve, seconds=seconds,
                reached=None if first is None else seconds * first / last_step)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('config')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    p.add_argument('--name', help='the sweep folder under work_dirs/sweep (default: the config name)')
    p.add_argument('--metric', default='coco/AP50')
    p.add_argument('--target', type=float, default=0.5)
    p.add_argument('--cfg-options', nargs='+', default=[], help='passed on to tools/train.py')
    p.add_argument('--train-args', nargs='+', default=[], help='more tools/train.py arguments, e.g. --data DIR')
    args = p.parse_args(argv)
    name = args.name or osp.splitext(osp.basename(args.config))[0]
    sweep_dir = osp.join('work_dirs', 'sweep', name)
    rows = {}
    for seed in args.seeds:
        work_dir = osp.join(sweep_dir, f'seed{seed}')
        if not osp.isfile(osp.join(work_dir, 'train_seconds')):
            cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), args.config, '--work-dir', work_dir,
                   *args.train_args, '--cfg-options', f'randomness.seed={seed}', *args.cfg_options]
            print(f'[seed {seed}] {" ".join(cmd)}', flush=True)
            os.makedirs(work_dir, exist_ok=True)
            start = time.perf_counter()
            with open(osp.join(work_dir, 'train.log'), 'w') as log:
                result = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
            if result.returncode:
                raise SystemExit(f'seed {seed} failed; see {work_dir}/train.log')
            with open(osp.join(work_dir, 'train_seconds'), 'w') as f:
                f.write(f'{time.perf_counter() - start:.1f}')
        rows[seed] = seed_row(work_dir, args.metric, args.target)
        r = rows[seed]
        print(f'[seed {seed}] {args.metric}: ' + ', '.join(f'{s}: {v:.3f}' for s, v in r['curve'])
              + f'; {r["seconds"] / 60:.1f} min', flush=True)
    steps = sorted({s for r in rows.values() for s, _ in r['curve']})
    lines = [f'{name}: `python tools/dev/seed_sweep.py {args.config} --seeds {" ".join(map(str, args.seeds))}'
             + (f' --cfg-options {" ".join(args.cfg_options)}' if args.cfg_options else '') + '`', '',
             '| seed | ' + ' | '.join(f'step {s}' for s in steps)
             + f' | training min | min to {args.metric.split("/")[-1]} {args.target} |',
             '|---' * (len(steps) + 3) + '|']
    for seed, r in rows.items():
        values = dict(r['curve'])
        cells = [f'{values[s]:.3f}' if s in values else '' for s in steps]
        reached = '-' if r['reached'] is None else f'{r["reached"] / 60:.1f}'
        lines.append(f'| {seed} | ' + ' | '.join(cells) + f' | {r["seconds"] / 60:.1f} | {reached} |')
    table = '\n'.join(lines)
    print(table)
    with open(osp.join(sweep_dir, 'table.md'), 'a') as f:
        f.write(table + '\n\n')
    return rows


if __name__ == '__main__':
    main()
