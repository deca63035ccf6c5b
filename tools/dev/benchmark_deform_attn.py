"""Time and peak memory of the implementations of multi-scale deformable attention, at Deformable
DETR's real sizes: by default an 800 x 1333 input, levels at strides 8/16/32/64, M=8 heads of
D=32, P=4 points; the decoder (300 queries) and the encoder (every pixel a query). Forward alone
(no grad) and forward + backward. The implementations (``--impls``; the first is the one the
ratios are taken to):

- ``pytorch``: detection.ms_deform_attn with backend='pytorch' (grid_sample level by level);
- ``triton``: detection.ms_deform_attn with backend='triton' (CUDA only: timing the interpreter
  would measure nothing useful);
- ``official``: the official pure-PyTorch form (``ms_deform_attn_core_pytorch`` of
  fundamentalvision/Deformable-DETR: all levels' samples stacked, then weighted);
- ``official-cuda``: the official CUDA operator (the ``MultiScaleDeformableAttention`` extension
  of Deformable-DETR's models/ops, im2col_step 64 as its MSDeformAttn), where it is importable:
  users compile it themselves, so it is listed by default only when it imports.

Default: on CUDA ``triton pytorch official`` and ``official-cuda`` when it imports; on CPU
``pytorch official``.

    python tools/dev/benchmark_deform_attn.py [--image 800 1333] [--batch 1] [--threads T] [--repeat 5]
        [--device cpu|cuda] [--cases decoder encoder] [--modes fwd fwd+bwd] [--impls ...] [--markdown PATH]

e.g. the 512 x 512 training size, batch 2, two threads, forward + backward only:

    python tools/dev/benchmark_deform_attn.py --image 512 512 --batch 2 --threads 2 --modes fwd+bwd

Peak memory on CPU: every (implementation, case, mode) runs in a fresh process, so each peak is
its own: the peak resident memory above the process's resident size with the inputs allocated.
On CUDA the allocator's own peak (max_memory_allocated above the inputs, reset before each
implementation's first call) is exact within one process, so one process per (case, mode)
measures every peak and then the times. Time: one fresh process per (case, mode) runs the
implementations in alternating rounds (order reversed every other round), after a warm-up call
of each (Triton compiles there), and reports each one's median and the median of the per-round
ratios to the first, so machine load that comes and goes hits all alike. Prints one line per
implementation with the ratios (above 1: the first is faster or smaller); ``--markdown PATH``
also writes them as a table.
"""
import argparse
import importlib.util
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


class _OfficialCuda(torch.autograd.Function):
    """The official operator as Deformable-DETR's models/ops/functions wraps it."""
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        import MultiScaleDeformableAttention as op
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return op.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                         attention_weights, OFFICIAL_IM2COL_STEP)

    @staticmethod
    def backward(ctx, grad_output):
        import MultiScaleDeformableAttention as op
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = op.ms_deform_attn_backward(
            value, shapes, starts, locations, weights, grad_output.contiguous(), OFFICIAL_IM2COL_STEP)
        return grad_value, None, None, grad_locations, grad_weights


OFFICIAL_IM2COL_STEP = 64


def official_cuda(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    return _OfficialCuda.apply(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


IMPLS = dict(
    pytorch=lambda *args: ms_deform_attn(*args, backend='pytorch'),
    triton=lambda *args: ms_deform_attn(*args, backend='triton'),
    official=reference_form,
    **{'official-cuda': official_cuda},
)


def official_cuda_importable() -> bool:
    return importlib.util.find_spec('MultiScaleDeformableAttention') is not None


def make_inputs(case: str, image, batch: int, device: str, grad: bool, dtype: str = 'float32'):
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
    value, locations, weights = (t.to(getattr(torch, dtype)).requires_grad_(grad) for t in (value, locations, weights))
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


def cuda_peak_mib(step) -> float:
    """The allocator's peak during ``step`` above what was allocated before it."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def peak_worker(impl: str, case: str, mode: str, a) -> dict:
    """The peak memory of one first call, in this fresh process (CPU)."""
    args, q, s = make_inputs(case, a.image, a.batch, a.device, mode == 'fwd+bwd', a.dtype)
    step = make_step(IMPLS[impl], args, mode == 'fwd+bwd', a.device)
    base = rss_bytes()
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(impl=impl, queries=q, positions=s, peak_mib=peak / 2 ** 20)


def check_against_pytorch(impl: str, args, grad: bool) -> dict:
    """``impl``'s output (and gradients) on these inputs against the pure-PyTorch path's on the same
    inputs in float32 (the low-precision PyTorch path samples in its dtype, bfloat16 locations to
    1/256, so it is no reference): the largest difference over the reference's largest magnitude,
    per tensor; an error past a tolerance of the dtype (float32: 1e-4, loose because both sides
    sum in orders of their own, grid_sample's backward by atomic adds on a GPU; float16 /
    bfloat16: 2e-2, a few roundings of the result)."""
    results = []
    for fn, dtype in ((IMPLS[impl], args[0].dtype), (IMPLS['pytorch'], torch.float32)):
        inputs = [t.detach().to(dtype).requires_grad_(grad) for t in (args[0], args[3], args[4])]
        out = fn(inputs[0], args[1], args[2], inputs[1], inputs[2])
        torch.manual_seed(0)  # the same output gradient for both (randn_like would follow out's strides)
        gradient = torch.randn(out.shape, device=out.device).to(dtype)
        results.append([t.detach().float() for t in
                        (out, *(torch.autograd.grad(out, inputs, gradient) if grad else ()))])
    names = ['output'] + (['grad value', 'grad locations', 'grad weights'] if grad else [])
    errors = {n: float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for n, a, b in zip(names, *results)}
    tolerance = 1e-4 if args[0].dtype == torch.float32 else 2e-2
    bad = {n: e for n, e in errors.items() if not e <= tolerance}
    if bad:
        raise SystemExit(f'{impl} differs from the pytorch path past {tolerance} (max |diff| / max |ref|): {bad}')
    return errors


def time_worker(case: str, mode: str, a) -> dict:
    """The implementations in alternating rounds in this one process, after a warm-up call of
    each (on CUDA that first call's allocator peak is each one's memory)."""
    args, q, s = make_inputs(case, a.image, a.batch, a.device, mode == 'fwd+bwd', a.dtype)
    steps = {impl: make_step(IMPLS[impl], args, mode == 'fwd+bwd', a.device) for impl in a.impls}
    checked = {impl: check_against_pytorch(impl, args, mode == 'fwd+bwd')
               for impl in a.impls if impl in ('triton', 'official-cuda')}
    peaks = {}
    for impl, step in steps.items():
        if a.device == 'cuda':
            peaks[impl] = cuda_peak_mib(step)
        else:
            step()
    times = {impl: [] for impl in steps}
    for r in range(a.repeat):
        for impl in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t0 = time.perf_counter()
            steps[impl]()
            times[impl].append(time.perf_counter() - t0)
    first = a.impls[0]
    ratios = {impl: statistics.median(o / f for o, f in zip(t, times[first])) for impl, t in times.items()}
    return dict(seconds={impl: statistics.median(t) for impl, t in times.items()}, time_ratio=ratios,
                peak_mib=peaks, queries=q, positions=s, checked=checked)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--image', type=int, nargs=2, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s own)')
    parser.add_argument('--repeat', type=int, default=5, help='timed rounds of each form')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cases', nargs='+', default=['decoder', 'encoder'], choices=['decoder', 'encoder'])
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwd+bwd'], choices=['fwd', 'fwd+bwd'])
    parser.add_argument('--impls', nargs='+', choices=list(IMPLS),
                        help='the first is the reference of the ratios (default: see above)')
    parser.add_argument('--markdown', metavar='PATH', help='also write the results as a markdown table')
    parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                        help='of value, locations and weights (official-cuda: float32 only)')
    parser.add_argument('--peak-worker', nargs=3, metavar=('IMPL', 'CASE', 'MODE'), help=argparse.SUPPRESS)
    parser.add_argument('--time-worker', nargs=2, metavar=('CASE', 'MODE'), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.impls is None:
        official_cuda = official_cuda_importable() and a.dtype == 'float32'
        a.impls = (['triton', 'pytorch', 'official'] + (['official-cuda'] if official_cuda else [])
                   if a.device == 'cuda' else ['pytorch', 'official'])
    if a.device != 'cuda' and {'triton', 'official-cuda'} & set(a.impls):
        parser.error('triton and official-cuda are timed on CUDA only (--device cuda)')
    if 'official-cuda' in a.impls and not official_cuda_importable():
        parser.error('official-cuda: the MultiScaleDeformableAttention extension does not import here '
                     '(build it from Deformable-DETR\'s models/ops, or leave it out of --impls)')
    if 'official-cuda' in a.impls and a.dtype != 'float32':
        parser.error('official-cuda takes float32 only (the extension dispatches float and double)')
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.peak_worker or a.time_worker:
        result = peak_worker(*a.peak_worker, a) if a.peak_worker else time_worker(*a.time_worker, a)
        print(json.dumps(result))
        return
    where = torch.cuda.get_device_name() if a.device == 'cuda' else 'CPU'
    header = (f'device {a.device} ({where}), torch {torch.__version__}, threads {torch.get_num_threads()}, '
              f'{a.dtype}, batch {a.batch}, input {a.image[0]}x{a.image[1]}, strides {STRIDES}, M={HEADS} D={HEAD_DIM} '
              f'P={POINTS}, {a.repeat} alternating rounds; ratios: X / {a.impls[0]}')
    print(header)
    common = ['--batch', str(a.batch), '--repeat', str(a.repeat), '--device', a.device,
              '--image', *map(str, a.image), '--impls', *a.impls, '--dtype', a.dtype] + (
                  ['--threads', str(a.threads)] if a.threads else [])

    def run(*worker):
        cmd = [sys.executable, os.path.abspath(__file__), *worker, *common]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f'{" ".join(worker)} failed:\n{done.stderr[-3000:]}')
        return json.loads(done.stdout)

    rows = ['| case | mode | implementation | Lq | S | time ms | time / ' + a.impls[0] + ' | peak MiB | peak / '
            + a.impls[0] + ' |', '|---|---|---|---|---|---|---|---|---|']
    for case in a.cases:
        for mode in a.modes:
            timing = run('--time-worker', case, mode)
            peaks = (timing['peak_mib'] if a.device == 'cuda' else
                     {impl: run('--peak-worker', impl, case, mode)['peak_mib'] for impl in a.impls})
            first = max(peaks[a.impls[0]], 1e-9)
            for impl, errors in timing['checked'].items():
                print(f'{case:8s} {mode:8s} {impl} against pytorch, max |diff| / max |ref|: '
                      + ', '.join(f'{n} {e:.1e}' for n, e in errors.items()))
            for impl in a.impls:
                ms, peak = timing['seconds'][impl] * 1e3, peaks[impl]
                print(f'{case:8s} {mode:8s} {impl:13s} Lq={timing["queries"]:6d} S={timing["positions"]:6d} '
                      f'time {ms:9.2f} ms ({timing["time_ratio"][impl]:5.2f}x)  '
                      f'peak {peak:8.1f} MiB ({peak / first:5.2f}x)', flush=True)
                rows.append(f'| {case} | {mode} | {impl} | {timing["queries"]} | {timing["positions"]} | '
                            f'{ms:.2f} | {timing["time_ratio"][impl]:.2f} | {peak:.1f} | {peak / first:.2f} |')
    if a.markdown:
        with open(a.markdown, 'w') as f:
            f.write(f'{header}\n\n' + '\n'.join(rows) + '\n')


if __name__ == '__main__':
    main()
