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
(:mod:`zoo.layers.linear`; twice MKL's rate on an AMD CPU) where the ``onednn_float32`` switch is on
(by default not on Intel CPUs; the header says which and why); ``--no-onednn`` measures them on
``torch.mm``, as timm's run. Peak memory: on CUDA
``max_memory_allocated``; on CPU the growth of the resident set during one forward, each model in
a fresh subprocess so one implementation's freed pages cannot hide the other's.

The machine's own ratio (``--vs-float32``; ``--no-linear-mix`` skips it): what the dtype can gain
over float32 is bounded by what the machine's matrix products gain on the model's own linears. So
for each zoo model the linear products of one float32 forward at the benchmark's batch and input
size are recorded as (M, K, N) with how often each occurs (:func:`linear_shapes`), and that mix
(:func:`linear_mix`, a weight of its own for every product, as the model has) is timed in float32
and in the dtype in the same alternating rounds as the models, through the products the zoo's
Linear calls (:func:`linear_paths`). Printed per model: the model's speed-up, the machine's ratio
on its mix (float32 time over the dtype's), their quotient against the target of 0.9, the
share of each forward that the mix's time makes up: the part the ratio can speed up, and the
bound that leaves by Amdahl's law where everything else gains the 2x of halved bytes.
"""
import argparse
import collections
import json
import platform
import statistics
import subprocess
import sys
import time

import _bootstrap  # noqa: F401
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import zoo
from zoo.runtime.allocator import reuse_freed_memory
from zoo.layers import private_ops, set_onednn_linear
from zoo.layers.config import setting_origin, use_onednn, use_onednn_float32
from zoo.layers.linear import linear

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
    F.scaled_dot_product_attention in every dtype (the ``explicit_bf16_attn`` switch chooses for CPU
    bfloat16 inference alone)."""
    with torch.inference_mode(False):  # parameters with version counters, as a loaded model has
        model = zoo.create_model(name) if impl == 'zoo' else peer_builder(name)()
        model = model.eval().to(device=device, dtype=dtype if cast else torch.float32)
    if impl == 'zoo' and explicit_attention:
        for m in model.modules():
            if hasattr(m, 'fused'):
                m.fused = False
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


TARGET_OF_MACHINE = 0.9  # issue 26: the dtype's speed-up at least 0.9x the machine's ratio on the model's linears


class _LinearRecorder(TorchFunctionMode):
    """While active, counts the (M, K, N) of every linear product: ``F.linear`` (x (..., K),
    weight (N, K): M = x.numel() / K) and the oneDNN product :mod:`zoo.layers.linear` calls
    (x (M, K), weight (N, K)), the two ways a linear reaches a kernel here; the model's fast
    paths stay as they run (a function mode, unlike a dispatch mode, does not turn them off). A
    product made inside another intercepted function (``F.multi_head_attention_forward``'s
    projections) is not seen; :func:`linear_shapes` names the nn.Linear modules it missed."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.weights = set()  # storages of the weights seen, to find linears that ran unseen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear or (func is private_ops.linear_pointwise and func is not None):
            x = args[0] if args else kwargs['input']
            weight = args[1] if len(args) > 1 else kwargs['weight']
            k = x.shape[-1]
            self.counts[(x.numel() // k, k, weight.shape[0])] += 1
            self.weights.add(weight.untyped_storage().data_ptr())
        return func(*args, **kwargs)


@torch.inference_mode()
def linear_shapes(model: nn.Module, forward) -> tuple[dict, list[str]]:
    """The linear products of one call of ``forward`` (running ``model``): {(M, K, N): count}, in
    order of first occurrence, M the rows of the product's input (batch x tokens), K its
    features, N the outputs; and the names of ``model``'s nn.Linear modules (the zoo's Linear
    included) whose weight entered none of them: used otherwise (CaiT's talking heads mix attention
    maps with a batched product), not run, or run where this cannot see (:class:`_LinearRecorder`).
    A weight used in slices (CvT's q, k, v from one qkv) counts as seen."""
    recorder = _LinearRecorder()
    with recorder:
        forward()
    unseen = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)
              and m.weight.untyped_storage().data_ptr() not in recorder.weights]
    return dict(recorder.counts), unseen


def linear_paths(dtype, device) -> dict:
    """{'float32': ..., dtype's name: ...}: which product :func:`linear_mix` times on ``device`` in
    each dtype, in words. Both go through :func:`zoo.layers.linear.linear` with the zoo's
    ``onednn`` and ``onednn_float32`` switches as the models were built with them; bfloat16 runs
    on bfloat16 operands (as ``--cast`` models run; under autocast the model also casts each
    weight at each call, and the MLP's first linear carries its GELU as a post-op: both count in
    the forward's time, not in the mix's, which times the products alone)."""
    on = torch.device(device).type == 'cpu' and use_onednn() and private_ops.onednn_linear_available()
    paths = {'float32': 'oneDNN float32 product (zoo.layers.linear)' if on and use_onednn_float32() else 'F.linear'}
    if dtype != torch.float32:
        name = str(dtype).removeprefix('torch.')
        paths[name] = f'oneDNN {name} product (zoo.layers.linear on {name} operands)' \
            if on and dtype == torch.bfloat16 else f'F.linear on {name} operands'
    return paths


def float32_linears(no_onednn: bool) -> str:
    """Where the zoo's float32 CPU linears built now run, and why, for the header: e.g.
    ``'torch.mm (onednn_float32 off: default for GenuineIntel)'``."""
    if no_onednn:
        return 'torch.mm (--no-onednn)'
    if not private_ops.onednn_linear_available():
        return 'torch.mm (no oneDNN linear in this torch)'
    if not use_onednn():
        return f'torch.mm (onednn off: {setting_origin("onednn")})'
    on = use_onednn_float32()
    return f'{"oneDNN" if on else "torch.mm"} (onednn_float32 {"on" if on else "off"}: ' \
        f'{setting_origin("onednn_float32")})'


def linear_mix(shapes: dict, device, dtype):
    """A callable running every product of ``shapes`` ({(M, K, N): count}) once, count times
    each: x (M, K) @ weight (N, K)^T + bias (N,) -> (M, N) in ``dtype`` on ``device`` through
    :func:`zoo.layers.linear.linear` (the path :func:`linear_paths` names). Each product has a
    weight of its own, as each of the model's layers has (one weight reused would stay in cache);
    products of the same (M, K) share their input."""
    generator = torch.Generator().manual_seed(0)
    onednn = use_onednn()
    inputs, products = {}, []
    for (m, k, n), count in shapes.items():
        if (m, k) not in inputs:
            inputs[m, k] = torch.randn(m, k, generator=generator).to(device=device, dtype=dtype)
        for _ in range(count):
            weight = (torch.randn(n, k, generator=generator) * k ** -0.5).to(device=device, dtype=dtype)
            bias = torch.randn(n, generator=generator).to(device=device, dtype=dtype)
            products.append((inputs[m, k], weight, bias))

    def run():
        for x, weight, bias in products:
            linear(x, weight, bias, onednn)
    return run


def against_machine(batch: int, ips: float, ips_fp32: float, mix_s: float, mix_fp32_s: float) -> dict:
    """The model's speed-up over float32 (``ips`` / ``ips_fp32``, images/s at ``batch``) held
    against the machine's ratio on its linear mix (``mix_fp32_s`` / ``mix_s``, seconds per run of
    the mix): 'zoo_speedup', 'machine_ratio', 'of_machine' (their quotient), 'meets_target'
    (of_machine >= TARGET_OF_MACHINE), and 'linear_share' / 'linear_share_fp32': the mix's time
    over one forward's, in the dtype and in float32. 'amdahl_bound': the speed-up if the linears
    gained the machine's ratio and everything else the 2x of bytes halved (memory-bound work), by
    Amdahl's law on the float32 share; 'of_bound': the speed-up over it."""
    speedup, machine_ratio = ips / ips_fp32, mix_fp32_s / mix_s
    share_fp32 = mix_fp32_s / (batch / ips_fp32)
    linears = min(share_fp32, 1.0)  # timing noise can put the mix above the forward
    bound = 1 / (linears / machine_ratio + (1 - linears) / 2)
    return dict(zoo_speedup=speedup, machine_ratio=machine_ratio, of_machine=speedup / machine_ratio,
                meets_target=speedup / machine_ratio >= TARGET_OF_MACHINE,
                linear_share=mix_s / (batch / ips), linear_share_fp32=share_fp32,
                amdahl_bound=bound, of_bound=speedup / bound)


@torch.inference_mode()
def throughput(name: str, args, device, dtype) -> tuple[dict, dict | None]:
    """images/s keyed 'zoo', 'peer' (at ``dtype``) and, with ``--vs-float32``, 'zoo_fp32',
    'peer_fp32'; and, with ``--vs-float32`` unless ``--no-linear-mix``, the zoo model's linear mix
    (:func:`linear_mix`) as {'shapes': {(M, K, N): count}, 'unseen': [module names], 'seconds':
    per run in ``dtype``, 'seconds_fp32'}, else None. All measured in the same alternating rounds."""
    impls = ['zoo'] + (['peer'] if not args.no_peer and peer_builder(name) else [])
    vs = args.vs_float32 and dtype != torch.float32
    precisions = [dtype] + ([torch.float32] if vs else [])
    fns, mix = {}, None
    for i in impls:
        for d in precisions:
            cast = args.cast or d == torch.float32
            model = build(name, i, device, d, cast=cast, explicit_attention=args.explicit_attention)
            x = input_for(name, args.batch_size, args.img_size, device, d if cast else torch.float32)
            fns[i if d == dtype else f'{i}_fp32'] = forward_fn(model, x, d, cast)
            if i == 'zoo' and d == torch.float32 and vs and not args.no_linear_mix:
                shapes, unseen = linear_shapes(model, fns['zoo_fp32'])
                mix = dict(shapes=shapes, unseen=unseen)
    if mix is not None:  # timed as two more contestants, so drift hits them as it hits the models
        fns['linears'] = linear_mix(mix['shapes'], device, dtype)
        fns['linears_fp32'] = linear_mix(mix['shapes'], device, torch.float32)
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
    if mix is not None:
        mix.update(seconds=statistics.median(times.pop('linears')),
                   seconds_fp32=statistics.median(times.pop('linears_fp32')))
    return {k: args.batch_size / statistics.median(t) for k, t in times.items()}, mix


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


def print_against_machine(rows: list[dict], dtype_name: str, device) -> None:
    """The table of each model's speed-up against the machine's ratio on its linear mix
    (``rows``: main's results with :func:`against_machine`'s keys)."""
    paths = linear_paths(getattr(torch, dtype_name), device)
    print(f'\n# {dtype_name} over float32: each model against the machine\'s own ratio on its linear shapes, '
          f'timed in the same rounds; pass at >= {TARGET_OF_MACHINE}x of the machine')
    print('# linear mix: ' + '; '.join(f'{d} on {p}' for d, p in paths.items()))
    short = 'bf16' if dtype_name == 'bfloat16' else dtype_name[:4]
    print(f'{"model":34s} {"fp32 img/s":>10s} {short + " img/s":>10s} {"speed-up":>8s} {"machine":>8s} '
          f'{"of machine":>10s} {"pass":>4s} {"products":>8s} {"linears % fp32":>14s} {"% " + short:>7s} '
          f'{"bound":>7s} {"of bound":>8s}')
    for row in rows:
        products = sum(count for *_, count in row['linear_shapes'])
        print(f'{row["model"]:34s} {row["zoo_fp32_ips"]:10.1f} {row["zoo_ips"]:10.1f} {row["zoo_speedup"]:7.2f}x '
              f'{row["machine_ratio"]:7.2f}x {row["of_machine"]:9.2f}x {"yes" if row["meets_target"] else "no":>4s} '
              f'{products:8d} {100 * row["linear_share_fp32"]:13.0f}% {100 * row["linear_share"]:6.0f}% '
              f'{row["amdahl_bound"]:6.2f}x {row["of_bound"]:7.2f}x')


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
    p.add_argument('--no-linear-mix', action='store_true',
                   help="with --vs-float32: skip timing each zoo model's linear shapes in float32 and --dtype "
                        "(the machine's own ratio the model's speed-up is held against)")
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
        mode += f'; {allocator}; zoo float32 linears on {float32_linears(args.no_onednn)}'
    print(f'# {machine()}; torch {torch.__version__}; batch {args.batch_size}; {mode}; inference')
    header = f'{"model":34s} {"zoo img/s":>10s} {"peer img/s":>10s} {"ratio":>6s}' + \
        (f' {"zoo fp32":>9s} {"speed-up":>8s} {"peer fp32":>9s} {"speed-up":>8s}' if vs else '') + \
        ('' if args.no_memory else f' {"zoo MiB":>8s} {"peer MiB":>8s} {"mem ratio":>9s}')
    print(header)
    fmt = lambda v, spec: format(v, spec) if v is not None else f'{"-":>{spec.split(".")[0]}}'  # noqa: E731
    div = lambda a, b: a / b if a is not None and b else None  # noqa: E731
    results = []
    for name in names:
        ips, mix = throughput(name, args, device, dtype)
        row = dict(model=name, zoo_ips=ips['zoo'], peer_ips=ips.get('peer'))
        if args.compile:
            row.update(compiled_ips=ips['zoo_compiled'], compile_gain=ips['zoo_compiled'] / ips['zoo'])
        if vs:
            row.update(zoo_fp32_ips=ips['zoo_fp32'], peer_fp32_ips=ips.get('peer_fp32'),
                       zoo_speedup=div(ips['zoo'], ips['zoo_fp32']),
                       peer_speedup=div(ips.get('peer'), ips.get('peer_fp32')))
        if mix is not None:
            row.update(against_machine(args.batch_size, ips['zoo'], ips['zoo_fp32'], mix['seconds'],
                                       mix['seconds_fp32']),
                       linear_s=mix['seconds'], linear_fp32_s=mix['seconds_fp32'],
                       linear_shapes=[[*shape, count] for shape, count in mix['shapes'].items()],
                       linear_unseen=mix['unseen'])
            if mix['unseen']:
                print(f'note: {name}: {len(mix["unseen"])} nn.Linear modules ran no linear product '
                      f'({", ".join(mix["unseen"][:4])}{", ..." if len(mix["unseen"]) > 4 else ""}): their weights '
                      "are used otherwise (CaiT's talking heads mix attention maps with a batched product) or not "
                      'at all, so the mix and the machine ratio leave them out', file=sys.stderr)
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
    mixed = [row for row in results if 'machine_ratio' in row]
    if mixed:
        print_against_machine(mixed, args.dtype, device)
    if args.json:
        extra = dict(linear_paths=linear_paths(dtype, device), target_of_machine=TARGET_OF_MACHINE) if mixed else {}
        with open(args.json, 'w') as f:
            json.dump(dict(machine=machine(), torch=torch.__version__, args=vars(args), **extra, results=results),
                      f, indent=1)


if __name__ == '__main__':
    main()
