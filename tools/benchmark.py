"""Inference throughput and peak memory of zoo models, side by side with a peer implementation
(timm, or Hugging Face transformers where timm has none) measured in the same run.

    python tools/benchmark.py --models vit_small_patch16_224,deit_small_patch16_224 --batch-size 8
    python tools/benchmark.py --device cuda --dtype bfloat16          # on a GPU
    python tools/benchmark.py --dtype bfloat16 --vs-float32 --no-peer --no-memory   # bf16 speed-up

``--dtype bfloat16`` (or float16) measures autocast: float32 weights, ``torch.autocast`` on the
device around each forward, as ``test.py --amp`` runs. ``--cast`` measures the model and input
cast to the dtype instead (``model.to(dtype)``: every op in that dtype, layer norms and softmax
included). ``--vs-float32`` also measures each implementation in float32 in the same alternating
rounds and prints the speed-up of the dtype over float32.

Throughput: ours and the peer alternate round by round (so drift in machine load hits both),
each going first in every other round, each round timing ``--iters`` forwards; the median
round gives images/s. Both run with freed CPU memory kept for reuse (:mod:`zoo.runtime.allocator`; without
it glibc unmaps large blocks and every forward faults them in again, slowing whichever model the
allocation history disfavours by up to 20%); ``--default-allocator`` measures without. The zoo's float32 linears run on oneDNN
(:mod:`zoo.layers.linear`; twice MKL's rate on an AMD CPU); ``--no-onednn`` measures them on
``torch.mm``, as timm's run. Peak memory: on CUDA
``max_memory_allocated``; on CPU the growth of the resident set during one forward, each model in
a fresh subprocess so one implementation's freed pages cannot hide the other's.
"""
import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import _bootstrap  # noqa: F401
import torch

import zoo
from zoo.runtime.allocator import reuse_freed_memory
from zoo.layers import set_onednn_linear
from zoo.layers.linear import onednn_linear_active

DEFAULT_MODELS = ['vit_small_patch16_224', 'deit_small_patch16_224', 'cait_xxs24_224', 'cvt_13',
                  't2t_vit_14', 't2t_vit_t_14', 'deepvit_s', 'ceit_s', 'cpvt_s']


# CvT has no timm implementation; Hugging Face transformers' is its peer (depths per stage).
_HF_CVT_DEPTHS = {'cvt_13': (1, 2, 10), 'cvt_21': (1, 4, 16)}


def peer_builder(name: str):
    """A function building the peer implementation of ``name`` (random weights), or None."""
    if name in _HF_CVT_DEPTHS:
        from transformers import CvtConfig, CvtForImageClassification
        return lambda: CvtForImageClassification(CvtConfig(depth=_HF_CVT_DEPTHS[name], num_labels=1000))
    try:
        import timm
    except ImportError:
        return None
    if name in timm.list_models():
        return lambda: timm.create_model(name, pretrained=False)
    return None


def build(name: str, impl: str, device, dtype, cast: bool = True, explicit_attention: bool = False):
    """The model in eval mode on ``device``; its weights in ``dtype`` when ``cast``, else float32.
    ``explicit_attention``: the zoo's attention through q k^T, softmax, @ v (three ops) instead of
    F.scaled_dot_product_attention (on a CPU in bfloat16 the explicit path's matmuls run on
    oneDNN's bfloat16 kernels, while the fused kernel is about as slow as in float32)."""
    model = zoo.create_model(name) if impl == 'zoo' else peer_builder(name)()
    if impl == 'zoo' and explicit_attention:
        for m in model.modules():
            if hasattr(m, 'fused'):
                m.fused = False
    model = model.eval().to(device=device, dtype=dtype if cast else torch.float32)
    # as the inference tools run it: LeFF's batch norms folded once (zoo.layers.fuse_for_inference)
    return zoo.layers.fuse_for_inference(model) if impl == 'zoo' else model


def forward_fn(model, x, dtype, cast: bool):
    """A callable running one forward: plain in float32 or with cast weights, otherwise under
    autocast to ``dtype`` (entered for each forward, as an evaluation loop does)."""
    if dtype == torch.float32 or cast:
        return lambda: model(x)

    def run():
        with torch.autocast(x.device.type, dtype=dtype):
            return model(x)
    return run


def input_for(name: str, batch: int, img_size, device, dtype):
    size = img_size or zoo.get_model_info(name).input_size[1:]
    return torch.randn(batch, 3, *size, device=device, dtype=dtype)


def sync(device) -> None:
    """Waits for the GPU's queued work (``device``: a torch.device or its name), so a wall-clock
    reading covers it."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def time_round(fn, device, iters: int) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


@torch.inference_mode()
def throughput(name: str, args, device, dtype) -> dict:
    """images/s keyed 'zoo', 'peer' (at ``dtype``) and, with ``--vs-float32``, 'zoo_fp32',
    'peer_fp32'; all measured in the same alternating rounds."""
    impls = ['zoo'] + (['peer'] if peer_builder(name) and not args.no_peer else [])
    precisions = [dtype] + ([torch.float32] if args.vs_float32 and dtype != torch.float32 else [])
    fns = {}
    for i in impls:
        for d in precisions:
            cast = args.cast or d == torch.float32
            model = build(name, i, device, d, cast=cast, explicit_attention=args.explicit_attention)
            x = input_for(name, args.batch_size, args.img_size, device, d if cast else torch.float32)
            fns[i if d == dtype else f'{i}_fp32'] = forward_fn(model, x, d, cast)
    if args.compile:  # the same zoo model under torch.compile (inductor), timed in the same rounds
        cast = args.cast or dtype == torch.float32
        model = torch.compile(build(name, 'zoo', device, dtype, cast=cast, explicit_attention=args.explicit_attention))
        x = input_for(name, args.batch_size, args.img_size, device, dtype if cast else torch.float32)
        fns['zoo_compiled'] = forward_fn(model, x, dtype, cast)
    keys = list(fns)
    for _ in range(args.warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in keys}
    for r in range(args.rounds):
        # Alternate who goes first, so neither profits from the other's warm caches.
        for k in (keys if r % 2 == 0 else keys[::-1]):
            times[k].append(time_round(fns[k], device, args.iters))
    return {k: args.batch_size / statistics.median(t) for k, t in times.items()}


def _rss_kib(field: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{field} not in /proc/self/status')


@torch.inference_mode()
def peak_memory_mib(name: str, impl: str, args, device, dtype) -> float:
    """Peak memory of one forward beyond what model and input already hold, in MiB."""
    model = build(name, impl, device, dtype, cast=args.cast, explicit_attention=args.explicit_attention)
    x = input_for(name, args.batch_size, args.img_size, device, dtype if args.cast else torch.float32)
    forward = forward_fn(model, x, dtype, args.cast)
    if device.type == 'cuda':
        forward()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        forward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # Writing 5 to clear_refs resets the resident-set high-water mark (Linux >= 4.0).
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    base = _rss_kib('VmRSS')
    forward()
    return (_rss_kib('VmHWM') - base) / 1024


def memory_in_subprocess(name: str, impl: str, args) -> float | None:
    cmd = [sys.executable, __file__, '--child-memory', name, impl, '--batch-size', str(args.batch_size),
           '--device', args.device, '--dtype', args.dtype] + (['--cast'] if args.cast else []) + \
        (['--explicit-attention'] if args.explicit_attention else []) + \
        (['--default-allocator'] if args.default_allocator else []) + (['--no-onednn'] if args.no_onednn else [])
    if args.img_size:
        cmd += ['--img-size', *map(str, args.img_size)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        print(done.stderr, file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{cpu}, {torch.get_num_threads()} threads'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default=','.join(DEFAULT_MODELS),
                   help='comma-separated zoo names or shell patterns (zoo.list_models)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, nargs=2, metavar=('H', 'W'),
                   help='input size (default: the model\'s own)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                   help='bfloat16 / float16: autocast around each forward, weights float32')
    p.add_argument('--cast', action='store_true',
                   help='cast weights and input to --dtype instead of autocast (model.to(dtype))')
    p.add_argument('--vs-float32', action='store_true',
                   help='also measure float32 in the same rounds and print the speed-up of --dtype')
    p.add_argument('--explicit-attention', action='store_true',
                   help='zoo models: attention as matmul-softmax-matmul instead of the fused kernel')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--rounds', type=int, default=7)
    p.add_argument('--iters', type=int, default=3, help='forwards per timed round')
    p.add_argument('--compile', action='store_true',
                   help="also time the zoo model under torch.compile (inductor) and print the gain over eager")
    p.add_argument('--default-allocator', action='store_true',
                   help="leave glibc's malloc as it is (by default freed blocks are kept for reuse: zoo.runtime.allocator)")
    p.add_argument('--no-onednn', action='store_true',
                   help="zoo models: float32 linears through torch's own matmul (MKL) instead of oneDNN "
                        '(zoo.layers.linear)')
    p.add_argument('--no-memory', action='store_true')
    p.add_argument('--no-peer', action='store_true')
    p.add_argument('--json', help='also write the results here')
    p.add_argument('--child-memory', nargs=2, metavar=('NAME', 'IMPL'), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.no_onednn:
        set_onednn_linear(False)
    allocator = 'glibc default allocator' if args.default_allocator else \
        ('freed memory kept' if reuse_freed_memory() else 'default allocator (not glibc)')

    if args.child_memory:
        print(peak_memory_mib(*args.child_memory, args, device, dtype))
        return

    names = []
    for pattern in args.models.split(','):
        found = zoo.list_models(pattern) if any(c in pattern for c in '*?[') else [pattern]
        for n in found:
            zoo.get_model_info(n)  # unknown names fail here, with suggestions
            names.append(n)

    mode = args.dtype if dtype == torch.float32 else f'{args.dtype} {"cast" if args.cast else "autocast"}'
    vs = args.vs_float32 and dtype != torch.float32
    mode += '; explicit attention' if args.explicit_attention else ''
    if device.type == 'cpu':
        mode += f'; {allocator}; zoo float32 linears on {"oneDNN" if onednn_linear_active() else "torch.mm"}'
    print(f'# {machine()}; torch {torch.__version__}; batch {args.batch_size}; {mode}; inference')
    header = f'{"model":34s} {"zoo img/s":>10s} {"peer img/s":>10s} {"ratio":>6s}' + \
        (f' {"zoo fp32":>9s} {"speed-up":>8s} {"peer fp32":>9s} {"speed-up":>8s}' if vs else '') + \
        ('' if args.no_memory else f' {"zoo MiB":>8s} {"peer MiB":>8s} {"mem ratio":>9s}')
    print(header)
    fmt = lambda v, spec: format(v, spec) if v is not None else f'{"-":>{spec.split(".")[0]}}'  # noqa: E731
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    results = []
    for name in names:
        ips = throughput(name, args, device, dtype)
        row = dict(model=name, zoo_ips=ips['zoo'], peer_ips=ips.get('peer'))
        if args.compile:
            row.update(compiled_ips=ips['zoo_compiled'], compile_gain=ips['zoo_compiled'] / ips['zoo'])
        if vs:
            row.update(zoo_fp32_ips=ips['zoo_fp32'], peer_fp32_ips=ips.get('peer_fp32'),
                       zoo_speedup=div(ips['zoo'], ips['zoo_fp32']),
                       peer_speedup=div(ips.get('peer'), ips.get('peer_fp32')))
        if not args.no_memory:
            row['zoo_mib'] = memory_in_subprocess(name, 'zoo', args)
            row['peer_mib'] = memory_in_subprocess(name, 'peer', args) if 'peer' in ips else None
        results.append(row)
        ratio = div(ips['zoo'], ips.get('peer'))
        line = f'{name:34s} {fmt(ips["zoo"], "10.1f")} {fmt(ips.get("peer"), "10.1f")} {fmt(ratio, "5.2f")}x'
        if vs:
            line += (f' {fmt(row["zoo_fp32_ips"], "9.1f")} {fmt(row["zoo_speedup"], "7.2f")}x'
                     f' {fmt(row["peer_fp32_ips"], "9.1f")} {fmt(row["peer_speedup"], "7.2f")}x')
        if args.compile:
            line += f' compiled {row["compiled_ips"]:.1f} img/s ({row["compile_gain"]:.2f}x eager)'
        if not args.no_memory:
            mratio = div(row['zoo_mib'], row['peer_mib'])
            line += f' {fmt(row["zoo_mib"], "8.0f")} {fmt(row["peer_mib"], "8.0f")} {fmt(mratio, "8.2f")}x'
        print(line, flush=True)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine(), torch=torch.__version__, args=vars(args), results=results), f, indent=1)


if __name__ == '__main__':
    main()
