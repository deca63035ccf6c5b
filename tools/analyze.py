"""Parameters and MACs of every registered model next to the paper's figures.

    python tools/analyze.py                    # all models, markdown table on stdout
    python tools/analyze.py --models 'cait_*' --out docs/models.md

Counted on the meta device (no memory, no weights): parameters exactly, MACs with
torch.utils.flop_counter (matmuls, convolutions and attention; MACs = FLOPs / 2). FLOP counters
disagree on what to count (normalisations, softmax), so compare parameters exactly and MACs
within a few percent.
"""
import argparse

import _bootstrap  # noqa: F401
import torch
from torch.utils.flop_counter import FlopCounterMode

import zoo


def count(name: str) -> dict:
    info = zoo.get_model_info(name)
    with torch.device('meta'):
        model = zoo.create_model(name).eval()
        x = torch.empty(1, *info.input_size)
    params = sum(p.numel() for p in model.parameters())
    # Frozen parameters rather than no_grad: the counter's module tracker trips over leaf
    # parameters that flow through a block unchanged (CaiT's class token at batch 1).
    model.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x)
    return dict(model=name, params_m=params / 1e6, gmacs=counter.get_total_flops() / 2e9,
                input=f'{info.input_size[1]}x{info.input_size[2]}', paper=info.paper, source=info.source)


def markdown(rows: list[dict]) -> str:
    def fmt(v, spec):
        return '' if v is None else format(v, spec)
    lines = ['| model | input | params (M) | paper params (M) | GMACs | paper GMACs | paper top-1 | source |',
             '|---|---|---:|---:|---:|---:|---:|---|']
    for r in rows:
        p = r['paper']
        lines.append(f"| {r['model']} | {r['input']} | {r['params_m']:.2f} | {fmt(p.get('params'), '.2f')} | "
                     f"{r['gmacs']:.2f} | {fmt(p.get('gmacs'), '.2f')} | {fmt(p.get('top1'), '.1f')} | {r['source']} |")
    return '\n'.join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='*', help='comma-separated names or shell patterns')
    p.add_argument('--out', help='also write the markdown table to this file')
    args = p.parse_args(argv)
    names = [n for pattern in args.models.split(',') for n in zoo.list_models(pattern)]
    if not names:
        raise SystemExit(f'no registered model matches {args.models!r}; see zoo.list_models()')
    table = markdown([count(n) for n in names])
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')


if __name__ == '__main__':
    main()
