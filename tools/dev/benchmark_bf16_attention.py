"""CPU bfloat16 inference attention: the fused kernel (``F.scaled_dot_product_attention``) against
the zoo's explicit path (q k^T with the scale inside the product, softmax in place, @ v), per call
at the shapes the zoo's families meet at 224 x 224. It decides the ``explicit_bf16_attn`` default
of :mod:`zoo.layers.config` (explicit where the CPU has no AMX, fused where it has): run it on a
new kind of CPU before changing that rule.

    python tools/dev/benchmark_bf16_attention.py [--batch 8] [--threads 2] [--repeat 10]

Prints one row per shape: milliseconds per call of each path (median of ``--repeat``) and the
explicit path's time over the fused one's (above 1: the fused kernel is faster).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from zoo.layers.attention import scaled_product  # noqa: E402
from zoo.layers.config import cpu_flags  # noqa: E402

# (family, heads, queries, keys, head width) at 224 x 224
SHAPES = [('ViT-S / DeiT-S', 6, 197, 197, 64), ('DeiT-Ti', 3, 197, 197, 64), ('CaiT-XXS', 4, 197, 197, 48),
          ('CvT-13 stage 1', 1, 3136, 784, 64), ('CvT-13 stage 2', 3, 784, 196, 64),
          ('T2T-ViT-t stage 2', 1, 784, 784, 64)]


def explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    attn = scaled_product(q, k.transpose(-2, -1), q.shape[-1] ** -0.5)
    return torch.softmax(attn, dim=-1, out=attn) @ v


def per_call_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--repeat', type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_flags() or frozenset()
    print(f'# {args.threads} threads, batch {args.batch}, bfloat16, torch {torch.__version__}; '
          f'CPU {"with" if "amx_bf16" in flags else "without"} AMX')
    print(f'{"shape":20s} {"B,h,Nq,Nk,d":>22s} {"fused ms":>9s} {"explicit ms":>12s} {"explicit/fused":>15s}')
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for name, heads, nq, nk, d in SHAPES:
            q = torch.randn(args.batch, heads, nq, d, generator=generator).bfloat16()
            k, v = (torch.randn(args.batch, heads, nk, d, generator=generator).bfloat16() for _ in range(2))
            fused = per_call_ms(lambda: F.scaled_dot_product_attention(q, k, v), args.repeat)
            plain = per_call_ms(lambda: explicit(q, k, v), args.repeat)
            shape = f'{args.batch},{heads},{nq},{nk},{d}'
            print(f'{name:20s} {shape:>22s} {fused:9.2f} {plain:12.2f} {plain / fused:14.2f}x')


if __name__ == '__main__':
    main()
