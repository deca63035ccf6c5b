"""Parameters and MACs of every registered model next to the paper's figures.

    python tools/analyze.py                    # all models, markdown table on stdout
    python tools/analyze.py --models 'cait_*' --out cait.md
    python tools/analyze.py --markdown docs/models.md   # the docs page: all models, with its preamble

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


PAGE_PREAMBLE = """\
# Models

Every registered model: parameters and MACs counted from our models, next to the papers'
figures. Parameters equal the official implementations' exactly (tests compare with timm, the
official code run locally, or Hugging Face transformers, and cite the source; the paper column
is the paper's rounding). Outputs match timm (ViT, DeiT, CaiT) and Hugging Face (CvT) within
1e-5, and the official DeepViT, CeiT and T2T-ViT code within 1e-4. MACs are counted with
`torch.utils.flop_counter` at the model's input size (counters disagree on details). Top-1 is the
paper's / official README's ImageNet-1k figure, not measured here.

This page is written by `python tools/analyze.py --markdown docs/models.md`;
`tests/tools/test_analyze.py` fails when it differs from what the tool writes. Speed and memory:
[benchmarks.md](benchmarks.md).
"""


def page(rows: list[dict]) -> str:
    """The docs/models.md page: ``PAGE_PREAMBLE`` and the table of ``rows``."""
    return f'{PAGE_PREAMBLE}\n{markdown(rows)}\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='*', help='comma-separated names or shell patterns')
    p.add_argument('--out', help='also write the markdown table to this file')
    p.add_argument('--markdown', metavar='PATH',
                   help='also write the docs page (preamble and table; docs/models.md) to this file')
    args = p.parse_args(argv)
    names = [n for pattern in args.models.split(',') for n in zoo.list_models(pattern)]
    if not names:
        raise SystemExit(f'no registered model matches {args.models!r}; see zoo.list_models()')
    rows = [count(n) for n in names]
    table = markdown(rows)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(page(rows))


if __name__ == '__main__':
    main()
