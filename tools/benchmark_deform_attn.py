"""Time and peak memory of detection.ms_deform_attn against the reference pure-PyTorch form (all
levels' samples stacked, then weighted), at Deformable DETR's real sizes: an 800 x 1333 input,
levels at strides 8/16/32/64, M=8 heads of D=32, P=4 points; the decoder (300 queries) and the
encoder (every pixel a query). Forward alone (no grad) and forward + backward.

    python tools/benchmark_deform_attn.py [--batch 1] [--repeat 3] [--device cpu|cuda] [--cases encoder decoder]

Every measurement runs in a fresh process, so each peak is its own: on CPU the peak resident
memory above the process's resident size with the inputs allocated, on CUDA
max_memory_allocated above the inputs. Prints one line per measurement and the ratios
reference / ours (above 1: ours is faster or smaller).
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from detection.ms_deform_attn import ms_deform_attn  # noqa: E402

HEADS, HEAD_DIM, POINTS, STRIDES, IMAGE = 8, 32, 4, (8, 16, 32, 64), (800, 1333)


def reference_form(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The reference form: grid_sample each level, stack all (N*M, D, Lq, L*P), weight, sum."""
    n, _, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    grids = 2 * sampling_locations - 1
    samples = []
    for level, ((h, w), start) in enumerate(zip(spatial_shapes.tolist(), level_start_index.tolist())):
        v = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, q)
    return out.transpose(1, 2).contiguous()


IMPLS = dict(ours=ms_deform_attn, reference=reference_form)


def make_inputs(case: str, batch: int, device: str, grad: bool):
    shapes = [(math.ceil(IMAGE[0] / s), math.ceil(IMAGE[1] / s)) for s in STRIDES]
    spatial = torch.tensor(shapes, device=device)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    q = s if case == 'encoder' else 300
    g = torch.Generator(device='cpu').manual_seed(0)
    value = torch.randn(batch, s, HEADS, HEAD_DIM, generator=g).to(device)
    locations = torch.rand(batch, q, HEADS, len(shapes), POINTS, 2, generator=g).to(device)
    weights = torch.rand(batch, q, HEADS, len(shapes), POINTS, generator=g).softmax(-1).to(device)
    for t in (value, locations, weights):
        t.requires_grad_(grad)
    return (value, spatial, starts, locations, weights), q, s


def rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def worker(impl: str, case: str, mode: str, batch: int, repeat: int, device: str) -> dict:
    fn = IMPLS[impl]
    grad = mode == 'fwd+bwd'
    args, q, s = make_inputs(case, batch, device, grad)

    def step():
        if grad:
            fn(*args).sum().backward()
            for t in (args[0], args[3], args[4]):
                t.grad = None
        else:
            with torch.no_grad():
                fn(*args)
        if device == 'cuda':
            torch.cuda.synchronize()

    if device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return dict(impl=impl, case=case, mode=mode, queries=q, positions=s, peak_mib=peak / 2 ** 20,
                seconds=statistics.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', nargs='+', default=['decoder', 'encoder'], choices=['decoder', 'encoder'])
    parser.add_argument('--worker', nargs=3, metavar=('IMPL', 'CASE', 'MODE'), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        print(json.dumps(worker(*a.worker, a.batch, a.repeat, a.device)))
        return
    print(f'device {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, '
          f'input {IMAGE[0]}x{IMAGE[1]}, strides {STRIDES}, M={HEADS} D={HEAD_DIM} P={POINTS}')
    for case in a.cases:
        for mode in ('fwd', 'fwd+bwd'):
            rows = {}
            for impl in IMPLS:
                cmd = [sys.executable, os.path.abspath(__file__), '--worker', impl, case, mode,
                       '--batch', str(a.batch), '--repeat', str(a.repeat), '--device', a.device]
                rows[impl] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                r = rows[impl]
                print(f'{case:8s} {mode:8s} {impl:10s} Lq={r["queries"]:6d} S={r["positions"]:6d} '
                      f'time {r["seconds"] * 1e3:9.1f} ms  peak {r["peak_mib"]:8.1f} MiB')
            ours, ref = rows['ours'], rows['reference']
            print(f'{case:8s} {mode:8s} ratio reference/ours: time {ref["seconds"] / ours["seconds"]:.2f}x, '
                  f'peak memory {ref["peak_mib"] / max(ours["peak_mib"], 1e-9):.2f}x')


if __name__ == '__main__':
    main()
