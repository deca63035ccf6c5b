"""Detector speed on this machine: training-step time, inference images/s, the matcher's share
of a training step, and COCO evaluation time with pycocotools vs faster-coco-eval.

    python tools/benchmark_detection.py --configs configs/detr_t2t.py,configs/detr_r50.py --size 800 1333
    python tools/benchmark_detection.py --coco-eval-only
    python tools/benchmark_detection.py --scaling --configs configs/detr_r50.py,configs/deformable_detr_r50.py

``--step-table`` is the detection-resolution table: for each config (default: every family's
DETR config and ``detr_r50``), one fresh process per variant, the training-step time, its peak
memory, the backbone's share of the step (its forward + backward alone), the step's FLOPs
(torch's FLOP counter) and so the achieved GFLOP/s, with the ratios to the first config (the
R50 reference) and the machine's measured float32 / bfloat16 matrix-product rate:

    python tools/benchmark_detection.py --step-table --variants shipped,global,checkpointing,all-trained
    python tools/benchmark_detection.py --step-table --configs configs/deformable_detr_r50.py,configs/deformable_detr_deit.py

Variants: ``shipped`` (the config as it is: window attention in the token families, the stem
and first quarter of the blocks frozen), ``global`` (window_size=0), ``checkpointing``
(grad_checkpointing=True) and ``all-trained`` (frozen_blocks=0), each on top of the shipped
config.

``--scaling`` measures each detector at three input sizes (``--sizes``): training-step time,
inference time and the peak memory of a training step, to show how each grows with image area
(DETR's encoder attends over all pairs of positions; Deformable DETR's samples a fixed number).

``--amp bfloat16`` (or float16) runs every training step and inference under autocast, set up
as ``train.py --amp`` / ``test.py --amp`` set it up (float16 on a GPU: mmengine's loss scaling);
on a GPU every timing waits for the device (``torch.cuda.synchronize``), and the step table reads
the matrix-product rates on the GPU:

    python tools/benchmark_detection.py --step-table --device cuda --steps 10 --amp bfloat16

``--compile`` adds a row per config with the network under ``torch.compile`` (inductor), timed
after its compilation, so the gain over eager can be read off.

``--peer hf`` times, in one run with the same inputs and alternating rounds (median), inference and
a training step (forward, loss, backward, AdamW step) of each config against Hugging Face
transformers' model of the same configuration carrying the same weights (``configs/detr_r50.py``
vs ``DetrForObjectDetection``, ``configs/deformable_detr_r50.py`` vs
``DeformableDetrForObjectDetection``; ResNet-50 only), and prints ours / theirs:

    python tools/benchmark_detection.py --peer hf --configs configs/detr_r50.py,configs/deformable_detr_r50.py --size 800 1333 --steps 5

With ``--batch-size 2,4,8`` it does so at each batch size (one model of each for all of them),
printing training images/s and each step's peak memory; ``--train-only`` leaves out inference;
``--amp bfloat16`` runs ours as ``train.py --amp bfloat16`` and HF's forward and loss under the
same autocast. Configs with a zoo backbone have no HF peer and are timed alone (same table):

    python tools/benchmark_detection.py --peer hf --train-only --device cuda --batch-size 2,4,8 --amp bfloat16 \
        --configs configs/detr_r50.py,configs/deformable_detr_r50.py,configs/detr_t2t.py

Backbones are randomly initialised (speed does not depend on the weights). Targets: 8 random
boxes per image. Freed memory is kept for reuse, as ``tools/train.py`` keeps it
(:mod:`zoo.runtime.allocator`); ``--default-allocator`` measures with glibc's defaults, under which a
DETR-R50 step at 800x1333 spends about a quarter of its time faulting pages in.
"""
import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time

import _bootstrap  # noqa: F401
import numpy as np
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import MODELS

import detection.engine  # noqa: F401
from benchmark import _rss_kib, machine
from benchmark import sync as _sync
from detection import coco_evaluate
from zoo.layers import fuse_for_inference
from zoo.runtime.allocator import return_freed_memory, reuse_freed_memory
from zoo.runtime.engine import autocast_for, use_amp


def _batch(batch_size, size, device):
    targets = []
    for _ in range(batch_size):
        cxcy, wh = torch.rand(8, 2) * 0.6 + 0.2, torch.rand(8, 2) * 0.2 + 0.05
        targets.append(dict(labels=torch.randint(0, 80, (8,), device=device),
                            boxes=torch.cat([cxcy, wh], 1).to(device), image_id=0,
                            orig_size=torch.tensor(size, device=device)))
    # Padded to a multiple of 32 as collate_detection pads, the mask marking the padding.
    padded = [-(-s // 32) * 32 for s in size]
    masks = torch.ones(batch_size, *padded, dtype=torch.bool, device=device)
    masks[:, :size[0], :size[1]] = False
    return dict(inputs=torch.randn(batch_size, 3, *padded, device=device), masks=masks,
                data_samples=targets)


def _warm_detector(config: str, size, device, options: dict | None = None, batch_size: int = 1,
                   amp: str | None = None):
    """``config`` built with random weights (and ``options``), its optimiser, one batch of
    ``size``, and one training step taken, so the optimiser state exists before measuring.
    ``amp`` ('bfloat16' | 'float16'): mixed-precision training as ``train.py --amp`` sets it up."""
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'model.detector.backbone.pretrained': False, **(options or {})})
    if amp:
        use_amp(cfg, amp, device.type)
    model = MODELS.build(cfg.model).to(device)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    data = _batch(batch_size, size, device)
    model.train()
    losses = model.train_step(dict(data), optim)
    broken = {k: float(v) for k, v in losses.items() if not torch.isfinite(torch.as_tensor(v)).all()}
    if broken:  # a mixed-precision overflow, say: timing such a step would measure nothing useful
        raise RuntimeError(f'{config}: non-finite losses in the first training step: {broken}')
    return model, optim, data


def _median_seconds(fn, steps: int, device='cpu') -> float:
    spent = []
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def detector_timings(config: str, size, batch_size: int, steps: int, device, compile: bool = False,
                     amp: str | None = None) -> dict:
    model, optim, data = _warm_detector(config, size, device, batch_size=batch_size, amp=amp)
    if compile:  # inductor; compiled by the warm-up step below, before anything is timed
        model.net = torch.compile(model.net)
        model.train_step(dict(data), optim)
    matcher, spent = model.criterion.matcher, []
    plain = matcher.forward

    def timed(*a, **k):
        start = time.perf_counter()
        out = plain(*a, **k)
        spent.append(time.perf_counter() - start)
        return out
    matcher.forward = timed
    step_times, matcher_share = [], []
    for _ in range(steps):
        spent.clear()
        _sync(device)
        start = time.perf_counter()
        model.train_step(dict(data), optim)
        _sync(device)
        step_times.append(time.perf_counter() - start)
        matcher_share.append(sum(spent) / step_times[-1])
    fuse_for_inference(model.eval())  # as the inference tools run it
    with torch.inference_mode(), autocast_for(model, amp, enabled=amp is not None):
        model.val_step(dict(data))
        infer_s = _median_seconds(lambda: model.val_step(dict(data)), steps, device)
    return dict(step_s=statistics.median(step_times), matcher_share=statistics.median(matcher_share),
                images_per_s=batch_size / infer_s)


def hf_peer(model) -> torch.nn.Module:
    """Hugging Face's model of ``model``'s configuration (a ``Detector`` with a ResNet-50 backbone),
    random timm ResNet-50, its weights copied into ``model`` through our converter: the two run
    the same function on the same weights."""
    import transformers
    from detection.checkpoints import convert_hf_deformable_detr, convert_hf_detr
    net = model.net
    if type(net).__name__ == 'DETR':
        enc, dec = len(net.transformer.encoder), len(net.transformer.decoder)
        layer = net.transformer.encoder[0]
        cfg = transformers.DetrConfig(
            backbone='resnet50', use_timm_backbone=True, use_pretrained_backbone=False, num_labels=net.num_classes,
            num_queries=net.num_queries, d_model=net.input_proj.out_channels, encoder_layers=enc, decoder_layers=dec,
            encoder_attention_heads=layer.self_attn.num_heads, decoder_attention_heads=layer.self_attn.num_heads,
            encoder_ffn_dim=layer.ffn[0].out_features, decoder_ffn_dim=layer.ffn[0].out_features,
            auxiliary_loss=net.aux_loss)
        hf = transformers.DetrForObjectDetection(cfg)
        convert = convert_hf_detr
    else:
        t = net.transformer
        layer = t.encoder[0]
        cfg = transformers.DeformableDetrConfig(
            backbone='resnet50', use_timm_backbone=True, use_pretrained_backbone=False, num_labels=net.num_classes,
            num_queries=t.num_proposals, d_model=t.dim, encoder_layers=len(t.encoder), decoder_layers=len(t.decoder),
            encoder_attention_heads=layer.self_attn.num_heads, decoder_attention_heads=layer.self_attn.num_heads,
            encoder_ffn_dim=layer.ffn.fc1.out_features, decoder_ffn_dim=layer.ffn.fc1.out_features,
            encoder_n_points=layer.self_attn.num_points, decoder_n_points=t.decoder[0].cross_attn.num_points,
            num_feature_levels=layer.self_attn.num_levels, with_box_refine=net.with_box_refine,
            two_stage=net.two_stage, two_stage_num_proposals=t.num_proposals, auxiliary_loss=net.aux_loss)
        hf = transformers.DeformableDetrForObjectDetection(cfg)
        convert = convert_hf_deformable_detr
    net.load_state_dict(convert(hf.state_dict()), strict=True)
    return hf


def has_hf_peer(config: str) -> bool:
    """Hugging Face's DETR / Deformable DETR take timm ResNets only: a peer with the same
    weights exists for the ResNet-50 configs."""
    return Config.fromfile(config).model.detector.backbone.name == 'resnet50'


def peer_timings(config: str, size, steps: int, device, batch_sizes=(1,), amp: str | None = None,
                 infer: bool = True):
    """Yields (batch size, results) per batch size: ours and Hugging Face's training-step (and with
    ``infer`` inference) seconds, medians of alternating rounds, same weights, same padded input and
    targets, and each one's training-step peak memory (``step_mib``: :func:`peak_memory_mib`).
    ``amp='bfloat16'``: ours as ``train.py --amp bfloat16`` sets it up, HF's forward and loss under
    the same autocast. A config without an HF peer (:func:`has_hf_peer`) times ours alone. One
    model of each is built for all batch sizes (its optimiser state does not depend on them)."""
    model, optim, _ = _warm_detector(config, size, device, batch_size=batch_sizes[0], amp=amp)
    autocast = lambda: torch.autocast(device.type, dtype=getattr(torch, amp or 'float32'),  # noqa: E731
                                      enabled=amp is not None)
    hf = hf_peer(model).to(device) if has_hf_peer(config) else None
    if hf is not None:
        hf_optim = torch.optim.AdamW([p for p in hf.parameters() if p.requires_grad], lr=1e-4, weight_decay=1e-4)
    for batch_size in batch_sizes:
        data = _batch(batch_size, size, device)
        images, masks = data['inputs'], data['masks']
        labels = [dict(class_labels=t['labels'], boxes=t['boxes']) for t in data['data_samples']]

        def ours_step():
            model.train()
            model.train_step(dict(data), optim)

        def hf_step():
            hf.train()
            hf_optim.zero_grad()
            with autocast():
                out = hf(pixel_values=images, pixel_mask=(~masks).long(), labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.1)  # the configs clip at 0.1 too
            hf_optim.step()

        def ours_infer():
            model.eval()
            with torch.inference_mode(), autocast():
                model.net(images, masks)

        def hf_infer():
            hf.eval()
            with torch.inference_mode(), autocast():
                hf(pixel_values=images, pixel_mask=(~masks).long())

        fns = dict(ours_step=ours_step, hf_step=hf_step)
        if infer:
            fns.update(ours_infer=ours_infer, hf_infer=hf_infer)
        fns = {k: fn for k, fn in fns.items() if hf is not None or k.startswith('ours')}
        for fn in fns.values():  # warm-up at this batch size (HF's optimiser state, allocator, kernels)
            fn()
        result = {f'{k.split("_")[0]}_step_mib': peak_memory_mib(fn, device)
                  for k, fn in fns.items() if k.endswith('step')}
        times = {k: [] for k in fns}
        for r in range(steps):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                _sync(device)
                start = time.perf_counter()
                fns[k]()
                _sync(device)
                times[k].append(time.perf_counter() - start)
        yield batch_size, {**result, **{k: statistics.median(v) for k, v in times.items()}}


def peak_memory_mib(fn, device) -> float:
    """Peak memory of ``fn()`` beyond what is held before it, in MiB (CUDA: allocator peak; CPU:
    growth of the resident-set high-water mark, reset through /proc/self/clear_refs, over the
    resident set after the freed heap is returned to the system)."""
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    # glibc keeps freed heap blocks resident: without a trim, memory the warm-up step freed
    # would count in the baseline and hide part of this step's peak
    return_freed_memory()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    base = _rss_kib('VmRSS')
    fn()
    return (_rss_kib('VmHWM') - base) / 1024


def step_peak_memory_mib(model, optim, data, device) -> float:
    """Peak memory of one training step beyond what is held before it, in MiB."""
    return peak_memory_mib(lambda: model.train_step(dict(data), optim), device)


def scaling_point(config: str, size, steps: int, device, amp: str | None = None) -> dict:
    """One detector at one input size: training-step and inference time, step peak memory."""
    model, optim, data = _warm_detector(config, size, device, amp=amp)
    memory = step_peak_memory_mib(model, optim, data, device)
    step_s = _median_seconds(lambda: model.train_step(dict(data), optim), steps, device)
    fuse_for_inference(model.eval())  # as the inference tools run it
    with torch.inference_mode(), autocast_for(model, amp, enabled=amp is not None):
        infer_s = _median_seconds(lambda: model.val_step(dict(data)), steps, device)
    return dict(step_s=step_s, infer_s=infer_s, memory_mib=memory)


_CHILD_FLAGS: list[str] = []  # the parent's allocator choice, handed to every child process


def scaling_in_subprocess(config: str, size, steps: int, device: str) -> dict:
    """A fresh process per point, so memory one size freed cannot hide another's peak."""
    cmd = [sys.executable, __file__, '--child-scaling', config, f'{size[0]}x{size[1]}',
           '--steps', str(steps), '--device', device] + _CHILD_FLAGS
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f'{config} at {size}: {done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


VARIANTS = {'shipped': {}, 'global': {'model.detector.backbone.window_size': 0},
            'checkpointing': {'model.detector.backbone.grad_checkpointing': True},
            'all-trained': {'model.detector.backbone.frozen_blocks': 0}}


def gemm_rate_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 5, onednn: bool = False,
                     device='cpu') -> float:
    """The machine's matrix-product rate: an n-cube product in ``dtype``, best of ``repeat``;
    through ``torch.mm`` (float32: MKL on x86), or with ``onednn`` through the zoo's Linear
    (float32: oneDNN, twice MKL's rate on the project's AMD machine; zoo.layers.linear). On a
    GPU, float32 is read as torch runs it by default (no TF32: ``allow_tf32`` off)."""
    from zoo.layers.linear import linear
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    product = (lambda: linear(a, b)) if onednn else (lambda: a @ b)
    product()
    best = float('inf')
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        product()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                                _dilation, transposed, _output_padding, groups, output_mask,
                                out_shape=None, **kwargs) -> int:
    """torch's FLOP counter ignores ``groups`` in a convolution's backward and counts a
    depthwise 3x3 over 1536 channels at 50x84 as 178 GFLOP instead of 0.23: here each requested
    gradient (input, weight) costs what the forward does, whose formula reads the grouped
    weight shape and so is right."""
    from torch.utils.flop_counter import conv_flop_count
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def step_point(config: str, variant: str, size, steps: int, device, amp: str | None = None) -> dict:
    """One config in one variant at one size, batch 1: step time, step peak memory, the
    backbone's forward + backward time, and the FLOPs of a step (``amp``: mixed precision,
    the backbone's share timed under the same autocast)."""
    from torch.utils.flop_counter import FlopCounterMode
    if variant != 'shipped' and Config.fromfile(config).model.detector.backbone.name == 'resnet50':
        raise ValueError(f'variant {variant!r} is for zoo backbones, not {config}')
    model, optim, data = _warm_detector(config, size, device, VARIANTS[variant], amp=amp)
    memory = step_peak_memory_mib(model, optim, data, device)
    step_s = _median_seconds(lambda: model.train_step(dict(data), optim), steps, device)
    backbone, images = model.net.backbone, data['inputs']

    def backbone_step():
        with autocast_for(model, amp, enabled=amp is not None):
            loss = sum(m.float().square().mean() for m in backbone(images))
        loss.backward()
    backbone_s = _median_seconds(backbone_step, steps, device)
    optim.zero_grad()
    fix = {torch.ops.aten.convolution_backward: _grouped_conv_backward_flop}
    with FlopCounterMode(display=False, custom_mapping=fix) as counter:
        model.train_step(dict(data), optim)
    return dict(step_s=step_s, memory_mib=memory, backbone_s=backbone_s,
                gflop=counter.get_total_flops() / 1e9)


def step_in_subprocess(config: str, variant: str, size, steps: int, device: str) -> dict:
    cmd = [sys.executable, __file__, '--child-step', config, variant, f'{size[0]}x{size[1]}',
           '--steps', str(steps), '--device', device] + _CHILD_FLAGS
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f'{config} ({variant}) at {size}: {done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def step_table(configs: list[str], variants: list[str], size, steps: int, device: str,
               amp: str | None = None) -> None:
    """Prints the table; the first config is the reference the ratios are taken to. The achieved
    rate is read against the matrix-product rate of the dtype the step's products run in."""
    cuda = torch.device(device).type == 'cuda'
    n = 8192 if cuda else 2048  # a 2048-cube product is too short to fill a GPU
    dtypes = ['float32', 'bfloat16'] + (['float16'] if cuda or amp == 'float16' else [])
    rates = {d: gemm_rate_gflops(getattr(torch, d), n, device=device) for d in dtypes}
    where = torch.cuda.get_device_name(device) if cuda else 'CPU'
    detail = "TF32 off, torch's default" if cuda else f'torch.mm: {rates["float32"]:.0f}'
    if not cuda:  # the zoo's float32 linears run on oneDNN, faster than torch.mm's MKL on AMD
        rates['float32'] = max(rates['float32'], gemm_rate_gflops(torch.float32, n, onednn=True))
    print(f'# matrix-product rate ({n}^3, {where}), GFLOP/s: float32 {rates["float32"]:.0f} ({detail}), '
          + ', '.join(f'{d} {rates[d]:.0f}' for d in dtypes[1:]))
    peak_name = amp or 'float32'
    peak = rates[peak_name]
    print(f'# steps in {"autocast " + amp if amp else "float32"}; "of peak" reads against the '
          f'{peak_name} rate, {peak:.0f} GFLOP/s')
    print(f'| config | variant | step s | x ref | peak MiB | x ref | backbone share | GFLOP | '
          f'GFLOP/s | of {peak_name} peak |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    ref = None
    for config in configs:
        name = config.split('/')[-1].removesuffix('.py')
        resnet = Config.fromfile(config).model.detector.backbone.name == 'resnet50'
        for variant in (['shipped'] if resnet else variants):
            r = step_in_subprocess(config, variant, size, steps, device)
            ref = ref or r
            rate = r['gflop'] / r['step_s']
            print(f'| {name} | {variant} | {r["step_s"]:.3g} | {r["step_s"] / ref["step_s"]:.2f} | '
                  f'{r["memory_mib"]:.0f} | {r["memory_mib"] / ref["memory_mib"]:.2f} | '
                  f'{100 * min(1.0, r["backbone_s"] / r["step_s"]):.0f}% | {r["gflop"]:.0f} | '
                  f'{rate:.0f} | {100 * rate / peak:.0f}% |', flush=True)


def coco_eval_timings(num_images=500, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    images = [dict(id=i, file_name=f'{i}.jpg', width=640, height=480) for i in range(num_images)]
    anns, dets = [], []
    for img in images:
        for _ in range(rng.integers(1, 15)):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)
            anns.append(dict(id=len(anns) + 1, image_id=img['id'], category_id=int(rng.integers(1, 81)),
                             bbox=[x, y, w, h], area=w * h, iscrowd=0))
        for _ in range(100):  # COCO's maxDets
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(4, 140), rng.uniform(4, 100)
            dets.append(dict(image_id=img['id'], category_id=int(rng.integers(1, 81)), bbox=[x, y, w, h],
                             score=float(rng.random())))
    gt = dict(images=images, annotations=anns, categories=[dict(id=c, name=str(c)) for c in range(1, 81)])
    out = {}
    for backend in ('pycocotools', 'faster'):
        start = time.perf_counter()
        stats = coco_evaluate(gt, dets, backend=backend)
        out[backend] = (time.perf_counter() - start, stats)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--configs', default='configs/detr_t2t.py,configs/detr_r50.py')
    p.add_argument('--size', type=int, nargs=2, default=(800, 1333), metavar=('H', 'W'))
    p.add_argument('--batch-size', type=lambda v: [int(b) for b in v.split(',')], default=[1],
                   help='images per batch, or several comma-separated (default mode and --peer)')
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--device', default='cpu')
    p.add_argument('--coco-eval-only', action='store_true')
    p.add_argument('--coco-images', type=int, default=500)
    p.add_argument('--scaling', action='store_true', help='time and memory at three input sizes')
    p.add_argument('--sizes', default='400x667,600x1000,800x1333')
    p.add_argument('--step-table', action='store_true',
                   help='training-step time and memory per family and variant, against the first config')
    p.add_argument('--variants', default='shipped,global,checkpointing,all-trained')
    p.add_argument('--compile', action='store_true', help='also time each config under torch.compile (inductor)')
    p.add_argument('--peer', choices=['hf'], help="time against Hugging Face transformers' DETR / Deformable DETR")
    p.add_argument('--train-only', action='store_true', help='--peer: training steps only, no inference')
    p.add_argument('--default-allocator', action='store_true',
                   help="leave glibc's malloc as it is (by default freed blocks are kept for reuse: zoo.runtime.allocator)")
    p.add_argument('--amp', choices=['bfloat16', 'float16'],
                   help='mixed-precision training and inference, as train.py / test.py --amp set it up')
    p.add_argument('--child-scaling', nargs=2, help=argparse.SUPPRESS)
    p.add_argument('--child-step', nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.amp == 'float16' and args.peer:
        p.error('--peer compares float32 or bfloat16 autocast (float16 would need loss scaling for HF too)')
    if (args.step_table or args.scaling) and args.batch_size != [1]:
        p.error('--step-table and --scaling measure batch 1; --batch-size is for the default mode and --peer')
    if not args.default_allocator:
        reuse_freed_memory()
    _CHILD_FLAGS[:] = (['--default-allocator'] if args.default_allocator else []) + (
        ['--amp', args.amp] if args.amp else [])
    if args.child_step:
        config, variant, size = args.child_step
        size = tuple(int(v) for v in size.split('x'))
        print(json.dumps(step_point(config, variant, size, args.steps, torch.device(args.device), args.amp)))
        return
    if args.child_scaling:
        config, size = args.child_scaling
        size = tuple(int(v) for v in size.split('x'))
        print(json.dumps(scaling_point(config, size, args.steps, torch.device(args.device), args.amp)))
        return
    allocator = 'glibc default allocator' if args.default_allocator else 'freed memory kept (zoo.runtime.allocator)'
    print(f'# {machine()}; torch {torch.__version__}; {allocator}')
    if args.step_table:
        configs = args.configs
        if configs == p.get_default('configs'):
            configs = ','.join(f'configs/detr_{f}.py' for f in
                               ('r50', 't2t', 'deit', 'vit', 'deepvit', 'cait', 'cpvt', 'ceit', 'cvt'))
        print(f'# input {args.size[0]}x{args.size[1]} (padded to multiples of 32), batch 1, '
              f'{args.steps} timed steps per point (median), one process per point')
        step_table(configs.split(','), args.variants.split(','), tuple(args.size), args.steps, args.device,
                   args.amp)
        return
    if args.peer:
        device = torch.device(args.device)
        where = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'
        print(f'# {where}, input {args.size[0]}x{args.size[1]}, {args.amp or "float32"}'
              f'{" autocast" if args.amp else ""}, same weights and input; median of {args.steps} alternating '
              f'rounds; train img/s = batch / step time; step MiB = peak memory of one training step above '
              f'the model and optimiser state; ratio > 1: ours faster (img/s) or smaller (MiB); '
              f'no HF peer: HF takes timm ResNets only')
        infer = not args.train_only
        print('| config | batch | train img/s | HF train img/s | ratio | step MiB | HF step MiB | ratio |'
              + (' infer img/s | HF infer img/s | ratio |' if infer else ''))
        print('|---|---:|---:|---:|---:|---:|---:|---:|' + ('---:|---:|---:|' if infer else ''))
        for config in args.configs.split(','):
            name = config.split('/')[-1].removesuffix('.py')
            for b, r in peer_timings(config, tuple(args.size), args.steps, device, args.batch_size, args.amp,
                                     infer=infer):
                peer = 'hf_step' in r
                cells = [f'{b / r["ours_step"]:.2f}', f'{b / r["hf_step"]:.2f}' if peer else 'no HF peer',
                         f'{r["hf_step"] / r["ours_step"]:.2f}x' if peer else '',
                         f'{r["ours_step_mib"]:.0f}', f'{r["hf_step_mib"]:.0f}' if peer else '',
                         f'{r["hf_step_mib"] / r["ours_step_mib"]:.2f}x' if peer else '']
                if infer:
                    cells += [f'{b / r["ours_infer"]:.2f}', f'{b / r["hf_infer"]:.2f}' if peer else '',
                              f'{r["hf_infer"] / r["ours_infer"]:.2f}x' if peer else '']
                print(f'| {name} | {b} | ' + ' | '.join(cells) + ' |', flush=True)
        return
    if args.scaling:
        sizes = [tuple(int(v) for v in s.split('x')) for s in args.sizes.split(',')]
        print(f'{"config":28s} {"input":>10s} {"pixels":>8s} {"train step s":>12s} {"infer s":>8s} '
              f'{"step peak MiB":>13s}')
        for config in args.configs.split(','):
            for h, w in sizes:
                r = scaling_in_subprocess(config, (h, w), args.steps, args.device)
                print(f'{config.split("/")[-1]:28s} {h:>4d}x{w:<5d} {h * w / 1e6:7.2f}M {r["step_s"]:12.2f} '
                      f'{r["infer_s"]:8.2f} {r["memory_mib"]:13.0f}', flush=True)
        return
    if not args.coco_eval_only:
        print(f'{"config":28s} {"input":>10s} {"train step s":>12s} {"matcher %":>9s} {"infer img/s":>11s}')
        for config in args.configs.split(','):
            for compiled, batch_size in itertools.product((False, True) if args.compile else (False,),
                                                          args.batch_size):
                r = detector_timings(config, tuple(args.size), batch_size, args.steps, torch.device(args.device),
                                     compile=compiled, amp=args.amp)
                name = (config.split('/')[-1] + (' (compiled)' if compiled else '')
                        + (f' batch {batch_size}' if args.batch_size != [1] else ''))
                print(f'{name:28s} {args.size[0]:>4d}x{args.size[1]:<5d} {r["step_s"]:12.2f} '
                      f'{100 * r["matcher_share"]:9.2f} {r["images_per_s"]:11.3f}', flush=True)
    ev = coco_eval_timings(args.coco_images)
    (t_slow, s_slow), (t_fast, s_fast) = ev['pycocotools'], ev['faster']
    same = max(abs(s_slow[k] - s_fast[k]) for k in s_slow)
    print(f'COCO eval, {args.coco_images} images x 100 detections: pycocotools {t_slow:.2f} s, '
          f'faster-coco-eval {t_fast:.2f} s ({t_slow / t_fast:.1f}x faster), max stat difference {same:.1e}')


if __name__ == '__main__':
    main()
