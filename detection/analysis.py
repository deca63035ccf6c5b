"""Where a detector looks: for DETR, each kept detection's decoder cross-attention and the
encoder self-attention at given pixels (the DETR paper's Figs. 3 and 6); for Deformable DETR,
each kept detection's sampling points with their weights on every level, and those of the
encoder query at given pixels.

The maps are read through hooks on the detector's own attention modules during one ordinary
forward pass: nn.MultiheadAttention is asked for its per-head weights (a pre-hook sets
``need_weights``), and MSDeformAttn's inputs are passed to its own ``sampling`` method, the one
that feeds ``ms_deform_attn``. Only the last encoder and decoder layers are kept.
"""
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.ops import box_convert

from zoo.analysis import _pyplot, _save, check_pixel

from .data.coco import collate_detection
from .deformable_detr import DeformableDETR


@contextmanager
def multihead_attention_weights(modules: list[nn.MultiheadAttention]):
    """Within the block, every call of one of ``modules`` stores its per-head weights
    (B, heads, Lq, S) in the yielded dict under the module (the last call wins). The output the
    caller uses is unchanged: only the weights are asked for as well."""
    store = {}

    def ask(module, args, kwargs):
        return args, dict(kwargs, need_weights=True, average_attn_weights=False)

    def keep(module, args, kwargs, output):
        store[module] = output[1]

    handles = [h for m in modules for h in (m.register_forward_pre_hook(ask, with_kwargs=True),
                                            m.register_forward_hook(keep, with_kwargs=True))]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def deformable_sampling(modules: list[nn.Module]):
    """Within the block, every call of one of the MSDeformAttn ``modules`` stores what
    ``ms_deform_attn`` receives from it: dict(locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1]
    of each level's extent, weights (N, Lq, M, L, P), spatial_shapes (L, 2)), under the module."""
    store = {}

    def keep(module, args, kwargs, output):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        locations, weights = module.sampling(bound['query'], bound['reference_points'],
                                             bound['spatial_shapes'])
        store[module] = dict(locations=locations, weights=weights,
                             spatial_shapes=bound['spatial_shapes'])

    handles = [m.register_forward_hook(keep, with_kwargs=True) for m in modules]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def locations_to_pixels(locations: torch.Tensor, padded_size, input_size, orig_size) -> torch.Tensor:
    """Sampling locations (..., 2) as (x, y) in [0, 1] of the padded input (every level spans
    it) -> (x, y) in continuous pixel coordinates of the original image (pixel j spans [j, j+1)):
    times the padded input's size, then scaled from the resized input back to the original."""
    (hp, wp), (hi, wi), (ho, wo) = padded_size, input_size, orig_size
    scale = torch.tensor([wp * wo / wi, hp * ho / hi], dtype=locations.dtype)
    return locations * scale.to(locations.device)


@dataclass
class DetectionAttention:
    """The numbers behind a detection-attention figure, for image 0.

    image (H, W, 3) in [0, 1]; detections: dicts of query, label, score, box (4,) xyxy in image
    pixels; pixels: the (y, x) image pixels whose encoder attention is shown.
    DETR: decoder (K, heads, hf, wf) per detection, encoder (n, heads, hf, wf) per pixel, on the
    feature grid, whose extent in image pixels is ``grid_extent`` (W', H'; the padded input).
    Deformable DETR: decoder / encoder dicts of points (K|n, M, L, P, 2) as image-pixel (x, y)
    and weights (K|n, M, L, P); ``strides`` per level.
    """
    kind: str
    image: torch.Tensor
    detections: list[dict]
    pixels: list[tuple[int, int]]
    decoder: object
    encoder: object
    grid_extent: tuple[float, float] = (0.0, 0.0)
    strides: list[int] = field(default_factory=list)


def kept_detections(outputs: dict, focal: bool, score_thr: float, orig_size, max_detections: int) -> list[dict]:
    """Image 0's queries whose best class scores at least ``score_thr`` (softmax over the real
    classes for DETR, sigmoid for the focal Deformable DETR), best first, at most
    ``max_detections``; the best query alone when none does, so a figure is never empty."""
    logits = outputs['pred_logits'][0].float()
    prob = logits.sigmoid() if focal else logits.softmax(-1)[:, :-1]
    scores, labels = prob.max(-1)
    order = scores.argsort(descending=True)
    kept = [q for q in order.tolist() if scores[q] >= score_thr][:max_detections] or order[:1].tolist()
    h, w = orig_size
    boxes = box_convert(outputs['pred_boxes'][0].float(), 'cxcywh', 'xyxy') * torch.tensor([w, h, w, h])
    return [dict(query=q, label=int(labels[q]), score=float(scores[q]), box=boxes[q]) for q in kept]


@torch.no_grad()
def detection_attention(detector: nn.Module, image: torch.Tensor, transform, pixels=None,
                        score_thr: float = 0.5, max_detections: int = 6,
                        size_divisor: int = 32) -> DetectionAttention:
    """``detector``: a configs' ``Detector`` (``.net`` DETR or DeformableDETR, ``.focal``);
    image (3, H, W) uint8; ``transform`` the config's test transform. ``pixels`` (y, x) in image
    pixels for the encoder maps (default: the centres of the kept boxes)."""
    net = detector.net
    h, w = image.shape[-2:]
    for p in pixels or []:
        check_pixel(p, h, w)
    x = transform(image)
    batch = collate_detection([(x, dict(image_id=0, orig_size=torch.tensor([h, w])))], size_divisor)
    inputs, masks = batch['inputs'], batch['masks']
    padded, input_size = tuple(inputs.shape[-2:]), tuple(x.shape[-2:])
    deformable = isinstance(net, DeformableDETR)
    enc, dec = net.transformer.encoder[-1].self_attn, net.transformer.decoder[-1].cross_attn
    grid = {}
    hook = (net.neck if deformable else net.input_proj).register_forward_hook(
        lambda m, a, out: grid.update(shape=out[0].shape[-2:] if deformable else out.shape[-2:]))
    try:
        with (deformable_sampling if deformable else multihead_attention_weights)([enc, dec]) as store:
            outputs = net(inputs, masks)
    finally:
        hook.remove()
    detections = kept_detections(outputs, detector.focal, score_thr, (h, w), max_detections)
    if pixels is None:
        pixels = [(int((d['box'][1] + d['box'][3]) / 2), int((d['box'][0] + d['box'][2]) / 2))
                  for d in detections]
        pixels = [(min(max(y, 0), h - 1), min(max(x, 0), w - 1)) for y, x in pixels]
    queries = [d['query'] for d in detections]
    shown = (image.permute(1, 2, 0).float() / 255)
    # The encoder query of an image pixel: its cell on the (finest) grid over the padded input.
    in_y = [(y + 0.5) * input_size[0] / h for y, _ in pixels]
    in_x = [(x + 0.5) * input_size[1] / w for _, x in pixels]
    if deformable:
        hf, wf = grid['shape']
        cells = [int(y * hf / padded[0]) * wf + int(x * wf / padded[1]) for y, x in zip(in_y, in_x)]

        def points(entry, rows):
            return dict(points=locations_to_pixels(entry['locations'][0, rows], padded, input_size, (h, w)),
                        weights=entry['weights'][0, rows])
        shapes = store[dec]['spatial_shapes'].tolist()
        return DetectionAttention('deformable', shown, detections, pixels, points(store[dec], queries),
                                  points(store[enc], cells),
                                  strides=[round(padded[0] / s[0]) for s in shapes])
    hf, wf = grid['shape']
    cells = [int(y * hf / padded[0]) * wf + int(x * wf / padded[1]) for y, x in zip(in_y, in_x)]
    decoder = store[dec][0][:, queries].transpose(0, 1).reshape(len(queries), -1, hf, wf)
    encoder = store[enc][0][:, cells].transpose(0, 1).reshape(len(cells), -1, hf, wf)
    extent = (padded[1] * w / input_size[1], padded[0] * h / input_size[0])
    return DetectionAttention('detr', shown, detections, pixels, decoder, encoder, grid_extent=extent)


COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45']


def _box(ax, det, classes):
    x0, y0, x1, y1 = det['box'].tolist()
    color = COLORS[det['label'] % len(COLORS)]
    from matplotlib.patches import Rectangle
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
    return f'{classes[det["label"]]} {det["score"]:.2f} (query {det["query"]})'


def _image_axes(ax, image):
    ax.imshow(image.numpy(), extent=(0, image.shape[1], image.shape[0], 0))
    ax.set_xlim(0, image.shape[1])
    ax.set_ylim(image.shape[0], 0)
    ax.set_xticks([]), ax.set_yticks([])


def plot_detection_attention(result: DetectionAttention, classes: list[str], out: str | None,
                             title: str = ''):
    """The figure of :func:`detection_attention`'s result, written to ``out`` (or returned, for
    ``out=None``). DETR: each detection's box above its last-decoder-layer cross-attention (mean
    over heads); below, the image with the given pixels and each pixel's last-encoder-layer
    self-attention (mean over heads). Deformable DETR: one row per detection, one column per
    level: its sampling points of the last decoder layer (every head; colour and size by
    weight); below, the same for the encoder query at each given pixel."""
    plt = _pyplot()
    r = result
    if r.kind == 'detr':
        cols = max(len(r.detections), len(r.pixels) + 1, 3)
        fig = plt.figure(figsize=(2.0 * cols, 6.2), layout='constrained')
        top, bottom = fig.subfigures(2, 1, height_ratios=[2, 1])
        axes = top.subplots(2, cols, squeeze=False)
        for ax in axes.flat:
            ax.axis('off')
        extent = (0, r.grid_extent[0], r.grid_extent[1], 0)
        for k, det in enumerate(r.detections):
            _image_axes(axes[0, k], r.image)
            axes[0, k].set_title(_box(axes[0, k], det, classes), fontsize=7)
            _image_axes(axes[1, k], torch.zeros_like(r.image))
            axes[1, k].imshow(r.decoder[k].mean(0).numpy(), cmap='viridis', extent=extent,
                              interpolation='nearest')
            _box(axes[1, k], det, classes)
            axes[1, k].set_title('decoder cross-attention', fontsize=7)
        top.suptitle(f'{title}\nlast decoder layer, mean over heads'.strip(), fontsize=8)
        axes = bottom.subplots(1, cols, squeeze=False)[0]
        for ax in axes:
            ax.axis('off')
        _image_axes(axes[0], r.image)
        for i, (y, x) in enumerate(r.pixels):
            axes[0].plot(x + 0.5, y + 0.5, 'o', color=COLORS[i % len(COLORS)], markersize=5)
            _image_axes(axes[i + 1], torch.zeros_like(r.image))
            axes[i + 1].imshow(r.encoder[i].mean(0).numpy(), cmap='viridis', extent=extent,
                               interpolation='nearest')
            axes[i + 1].plot(x + 0.5, y + 0.5, 'o', color=COLORS[i % len(COLORS)], markersize=5)
            axes[i + 1].set_title(f'pixel ({y}, {x})', fontsize=7)
        bottom.suptitle('last encoder layer self-attention at the marked pixels, mean over heads',
                        fontsize=8)
    else:
        levels = len(r.strides)
        rows = len(r.detections) + len(r.pixels)
        fig = plt.figure(figsize=(1.9 * levels, 2.0 * rows + 0.6), layout='constrained')
        top, bottom = fig.subfigures(2, 1, height_ratios=[len(r.detections), max(len(r.pixels), 1)])
        sections = [(top, r.detections, r.decoder, 'last decoder layer: sampling points per level '
                     '(all heads, colour and size by weight)'),
                    (bottom, r.pixels, r.encoder, 'last encoder layer: sampling points of the query '
                     'at the marked pixel (finest level)')]
        for sub, items, entry, heading in sections:
            if not items:
                continue
            axes = sub.subplots(len(items), levels, squeeze=False)
            vmax = float(entry['weights'].max())
            for i, item in enumerate(items):
                for level in range(levels):
                    ax = axes[i, level]
                    _image_axes(ax, r.image)
                    pts = entry['points'][i, :, level].reshape(-1, 2)
                    wts = entry['weights'][i, :, level].reshape(-1)
                    ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), c=wts.numpy(), cmap='autumn_r',
                               vmin=0, vmax=vmax, s=4 + 60 * wts.numpy() / max(vmax, 1e-12),
                               edgecolors='black', linewidths=0.3)
                    if isinstance(item, dict):
                        label = _box(ax, item, classes)
                    else:
                        ax.plot(item[1] + 0.5, item[0] + 0.5, 'c+', markersize=8, mew=2)
                        label = f'pixel {item}'
                    ax.set_title((label + '\n' if level == 0 else '\n') +
                                 f'level {level} (stride {r.strides[level]})', fontsize=6)
            sub.suptitle(f'{title}\n{heading}'.strip() if sub is top else heading, fontsize=8)
    if out is None:
        return fig
    return _save(fig, out)
