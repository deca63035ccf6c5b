"""Time and peak memory of detection.ms_deform_attn against the official pure-PyTorch form
(``ms_deform_attn_core_pytorch`` of fundamentalvision/Deformable-DETR: all levels' samples stacked,
then weighted), at Deformable DETR's real sizes: by default an 800 x 1333 input, levels at strides
8/16/32/64, M=8 heads of D=32, P=4 points; the decoder (300 queries) and the encoder (every
pixel a query). Forward alone (no grad) and forward + backward.

    python tools/dev/benchmark_deform_attn.py [--image 800 1333] [--batch 1] [--threads T] [--repeat 5]
        [--device cpu|cuda] [--cases decoder encoder] [--modes fwd fwd+bwd]

e.g. the 512 x 512 training size, batch 2, two threads, forward + backward only:

    python tools/dev/benchmark_deform_attn.py --image 512 512 --batch 2 --threads 2 --modes fwd+bwd

Peak memory: every (form, case, mode) runs in a fresh process, so each peak is its own: on CPU
the peak resident memory above the process's resident size with the inputs allocated, on CUDA
max_memory_allocated above the inputs. Time: one more fresh process per (case, mode) runs the two
forms in alternating rounds (order swapped every round) and reports each form's median and the
median of the per-round ratios, so machine load that comes and goes hits both alike. Prints one
line per form and the ratios official / ours (above 1: ours is faster or smaller).
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/, for _bootstrap
import _bootstrap  # noqa: E402,F401
import torch
import torch.nn.functional as F

from detection.ms_deform_attn import ms_deform_attn

HEADS, HEAD_DIM, POINTS, STRIDES = 8, 32, 4, (8, 16, 32, 64)


def reference_form(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """The official form, op for op: value split into levels (one concatenating backward), each
    level transposed to (N*M, D, H, W) and grid_sampled, all levels' samples stacked into
    (N*M, D, Lq, L*P), multiplied by the weights and summed over the points."""
    n, _, m, d = value.shape
    _, q, _, num_levels, p, _ = sampling_locations.shape
    shapes = spatial_shapes.tolist()
    levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    samples = []
    for level, ((h, w), v) in enumerate(zip(shapes, levels)):
        v = v.flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        samples.append(F.grid_sample(v, grid, mode='bilinear', padding_mode='zeros', align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, q, num_levels * p)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1).view(n, m * d, q)
    return out.transpose(1, 2).contiguous()


IMPLS = dict(ours=ms_deform_attn, official=reference_form)


def make_inputs(case: str, image, batch: int, device: str, grad: bool):
    shapes = [(math.ceil(image[0] / s), math.ceil(image[1] / s)) for s in STRIDES]
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


def make_step(fn, args, grad: bool, device: str):
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
    return step


def peak_worker(impl: str, case: str, mode: str, a) -> dict:
    """The peak memory of one first call, in this fresh process."""
    args, q, s = make_inputs(case, a.image, a.batch, a.device, mode == 'fwd+bwd')
    step = make_step(IMPLS[impl], args, mode == 'fwd+bwd', a.device)
    if a.device == 'cuda':
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(impl=impl, queries=q, positions=s, peak_mib=peak / 2 ** 20)


def time_worker(case: str, mode: str, a) -> dict:
    """Both forms in alternating rounds in this one process, after a warm-up call of each."""
    args, q, s = make_inputs(case, a.image, a.batch, a.device, mode == 'fwd+bwd')
    steps = {impl: make_step(fn, args, mode == 'fwd+bwd', a.device) for impl, fn in IMPLS.items()}
    for step in steps.values():
        step()
    times = {impl: [] for impl in steps}
    for r in range(a.repeat):
        for impl in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    ratios = [o / u for o, u in zip(times['official'], times['ours'])]
    return dict(seconds={impl: statistics.median(t) for impl, t in times.items()},
                time_ratio=statistics.median(ratios))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--image', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own)')
    parser.add_argument('--repeat', type=int, default=5, help='timed rounds of each form')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', nargs='+', default=['decoder', 'encoder'], choices=['decoder', 'encoder'])
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'], choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--peak-worker', nargs=3, metavar=('IMPL', 'CASE', 'MODE'), help=argparse.SUPPRESS)
    parser.add_argument('--time-worker', nargs=2, metavar=('CASE', 'MODE'), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.peak_worker or a.time_worker:
        result = peak_worker(*a.peak_worker, a) if a.peak_worker else time_worker(*a.time_worker, a)
        print(json.dumps(result))
        return
    print(f'device {a.device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {a.batch}, '
          f'input {a.image[0]}x{a.image[1]}, strides {STRIDES}, M={HEADS} D={HEAD_DIM} P={POINTS}, '
          f'{a.repeat} alternating rounds')
    common = ['--batch', str(a.batch), '--repeat', str(a.repeat), '--device', a.device,
              '--image', *map(str, a.image)] + (['--threads', str(a.threads)] if a.threads else [])

    def run(*worker):
        cmd = [sys.executable, os.path.abspath(__file__), *worker, *common]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    for case in a.cases:
        for mode in a.modes:
            peaks = {impl: run('--peak-worker', impl, case, mode) for impl in IMPLS}
            timing = run('--time-worker', case, mode)
            for impl, r in peaks.items():
                print(f'{case:8s} {mode:8s} {impl:9s} Lq={r["queries"]:6d} S={r["positions"]:6d} '
                      f'time {timing["seconds"][impl] * 1e3:9.1f} ms  peak {r["peak_mib"]:8.1f} MiB')
            ours, ref = peaks['ours']['peak_mib'], peaks['official']['peak_mib']
            print(f'{case:8s} {mode:8s} ratio official/ours: time {timing["time_ratio"]:.2f}x, '
                  f'peak memory {ref / max(ours, 1e-9):.2f}x')


if __name__ == '__main__':
    main()
