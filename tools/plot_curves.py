"""Plot training curves of one or more runs side by side from mmengine's scalar logs.

    python tools/plot_curves.py work_dirs/demo work_dirs/demo_deformable \
        --labels DETR "Deformable DETR" --out curves.png

Left: the validation metric (default ``coco/AP50``) against training iterations; right: the
training loss. Each work dir's newest ``<timestamp>/vis_data/scalars.json`` is read; the numbers
are also printed as a table so they can go in a README.
"""
import argparse
import glob
import json
import os.path as osp

import _bootstrap  # noqa: F401


def read_scalars(work_dir: str) -> tuple[list[dict], list[dict]]:
    """-> (training records, validation records) of the newest run in ``work_dir``; validation
    records get ``iteration``: the training step at which they were taken."""
    logs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not logs:
        raise SystemExit(f'no */vis_data/scalars.json under {work_dir}: is it a training work dir?')
    train, val = [], []
    for log in logs:  # a resumed run continues in a new timestamped folder
        with open(log) as f:
            for line in f:
                record = json.loads(line)
                (train if 'loss' in record else val).append(record)
    last_step_of_epoch = {}
    for r in train:
        last_step_of_epoch[r['epoch']] = max(last_step_of_epoch.get(r['epoch'], 0), r['step'])
    for r in val:
        # mmengine logs epoch-based validation with step = epoch.
        r['iteration'] = last_step_of_epoch.get(r['step'], r['step'])
    return train, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('work_dirs', nargs='+')
    p.add_argument('--labels', nargs='+', help='one per work dir (default: the folder names)')
    p.add_argument('--metric', default='coco/AP50')
    p.add_argument('--out', default='curves.png')
    p.add_argument('--metric-only', action='store_true',
                   help='draw the metric alone (for runs whose losses are different sums)')
    p.add_argument('--dashed', nargs='*', default=[], metavar='LABEL_PREFIX',
                   help='draw runs whose label starts with one of these dashed')
    args = p.parse_args(argv)
    labels = args.labels or [osp.basename(osp.normpath(w)) for w in args.work_dirs]
    if len(labels) != len(args.work_dirs):
        raise SystemExit(f'{len(labels)} labels for {len(args.work_dirs)} work dirs')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    if args.metric_only:
        fig, ax_metric = plt.subplots(1, 1, figsize=(7, 4.5))
        ax_loss = None
    else:
        fig, (ax_metric, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for work_dir, label in zip(args.work_dirs, labels):
        train, val = read_scalars(work_dir)
        points = [(r['iteration'], r[args.metric]) for r in val if args.metric in r]
        style = '--' if any(label.startswith(d) for d in args.dashed) else '-'
        if points:
            ax_metric.plot(*zip(*points), style, marker='o', label=label)
        if ax_loss is not None:
            ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train], label=label, alpha=0.8)
        print(f'{label}: ' + ', '.join(f'{it}: {v:.3f}' for it, v in points))
    ax_metric.set(xlabel='training iteration', ylabel=args.metric, title=f'validation {args.metric}')
    if ax_loss is not None:
        ax_loss.set(xlabel='training iteration', ylabel='loss', title='training loss (sum of terms)', yscale='log')
    for ax in (ax_metric, ax_loss) if ax_loss is not None else (ax_metric,):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
