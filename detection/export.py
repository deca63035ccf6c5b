"""Whole detectors to ONNX (TorchScript exporter), and the exported graph run like a ``Detector``.

The graph (``export_onnx``):
    inputs   images (B, 3, H, W) float32, normalised and padded (H, W multiples of 32);
             mask (B, H, W) bool, True on padding; orig_sizes (B, 2) int64, each image's (H, W)
             in pixels of the original picture (the boxes' scale).
    outputs  pred_logits (B, Q, C[+1]) and pred_boxes (B, Q, 4) normalised cxcywh: the raw outputs;
             scores (B, K), labels (B, K) int64, boxes (B, K, 4) xyxy in original pixels:
             :func:`detection.detr.detections`, the post-processing ``Detector`` runs (top-k).
    Batch, H and W are dynamic. Pre-processing (resize, normalise, pad) stays outside, as in
    ``tools/infer.py``.

Padding: the transformer takes ``mask`` as the PyTorch model does, but a token backbone (every
zoo family; :class:`detection.backbone.ZooBackbone`) is traced without it, since its masked path
resamples each image's position table to the image's own grid, a size the trace cannot keep
dynamic. The graph's backbone then reads the padding as if it were image, so on a padded image
its boxes differ slightly from the PyTorch model's, which masks it. Where the input has no padding
(the resized sides already multiples of 32, so the collate pads nothing) the two agree to float32
rounding. ``detection.Predictor`` therefore runs a graph one image at a time, so that no
batch-mate adds padding, and warns on an image that needs some (``pad_exact`` in the metadata:
False for a token backbone; ResNet-50 takes no mask in PyTorch either, so it is exact padded too).

``torch.export`` does not take these models (docs/deployment.md): the TorchScript
exporter records the input sizes as graph values, which is what keeps H and W dynamic here.
"""
import json
import warnings

import numpy as np
import torch
from torch import nn

from zoo.onnx import OPSET, register_onnx_symbolics

from .detr import detections

INPUTS = ['images', 'mask', 'orig_sizes']
OUTPUTS = ['pred_logits', 'pred_boxes', 'scores', 'labels', 'boxes']


class ExportableDetector(nn.Module):
    """A ``Detector`` (eval mode) as one function of tensors: (images, mask, orig_sizes) ->
    (pred_logits, pred_boxes, scores, labels, boxes), shapes as in the module docstring."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.net, self.focal, self.top_k = detector.net, detector.focal, detector.top_k

    def forward(self, images, mask, orig_sizes):
        out = self.net(images, mask)
        scores, labels, boxes = detections(out['pred_logits'], out['pred_boxes'], orig_sizes,
                                           self.focal, self.top_k)
        return out['pred_logits'], out['pred_boxes'], scores, labels, boxes


@torch.no_grad()
def export_onnx(detector: nn.Module, path: str, size: tuple[int, int] = (320, 416), batch: int = 2,
                metadata: dict | None = None) -> str:
    """Trace ``detector`` (a ``Detector``) on a random padded batch of ``size`` and write the
    graph to ``path``, with ``metadata`` (e.g. class names) and ``pad_exact`` (whether padded
    inputs give the PyTorch model's outputs: see the module docstring) in the model's
    metadata_props as JSON strings. ``size`` only seeds the trace: every size runs (two-stage models need at least
    ``num_queries`` encoder positions at run time, which 320 x 416 gives by far)."""
    import onnx
    h, w = size
    if h % 32 or w % 32:
        raise ValueError(f'export size {size} must be multiples of 32 (the padding the graph expects)')
    register_onnx_symbolics()
    wrapper = ExportableDetector(detector).eval()
    images = torch.randn(batch, 3, h, w)
    mask = torch.zeros(batch, h, w, dtype=torch.bool)
    mask[-1, h - 32:] = True  # a padded image, so the trace sees the mask in use
    orig_sizes = torch.tensor([[h, w]] * batch)
    dynamic = {'images': {0: 'batch', 2: 'height', 3: 'width'}, 'mask': {0: 'batch', 1: 'height', 2: 'width'},
               'orig_sizes': {0: 'batch'}}
    for name in OUTPUTS:
        dynamic[name] = {0: 'batch'}
    with warnings.catch_warnings():
        # the tracer warns about every Python-level size comparison; sizes that matter are traced
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        torch.onnx.export(wrapper, (images, mask, orig_sizes), path, input_names=INPUTS,
                          output_names=OUTPUTS, dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    model = onnx.load(path)
    metadata = {'pad_exact': pad_exact(detector), **(metadata or {})}
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(model, path)
    return path


def pad_exact(detector: nn.Module) -> bool:
    """Whether the exported graph of ``detector`` gives the PyTorch outputs on padded inputs: no
    part of it takes the padding mask only outside a trace (a token backbone,
    ``batch_invariant``), as ResNet-50 takes none at all."""
    return not any(getattr(m, 'batch_invariant', False) for m in detector.modules())


class OnnxDetector:
    """An exported detector in onnxruntime with ``Detector``'s predict interface:
    ``detector(inputs (B, 3, H, W), masks (B, H, W), data_samples (each with ``orig_size``),
    mode='predict')`` -> per image dict(scores, labels, boxes xyxy in original pixels, image_id).
    ``metadata`` holds what the export stored (``classes``, ``focal``, ``config``, ``pad_exact``);
    ``pad_exact`` is False for a graph exported without that key (taken as a token backbone's)."""

    def __init__(self, path: str):
        import onnx
        import onnxruntime as ort
        self.session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        names = [i.name for i in self.session.get_inputs()]
        if names != INPUTS:
            raise ValueError(f'{path} is not a detector exported by tools/export.py: its inputs are {names}, '
                             f'expected {INPUTS}')
        self.metadata = {p.key: json.loads(p.value) for p in onnx.load(path, load_external_data=False).metadata_props}
        self.focal = bool(self.metadata.get('focal', False))
        self.pad_exact = bool(self.metadata.get('pad_exact', False))

    def run(self, images: torch.Tensor, mask: torch.Tensor, orig_sizes: torch.Tensor) -> dict:
        """-> dict of the graph's outputs as tensors."""
        feeds = dict(images=images.float().numpy(), mask=mask.numpy().astype(np.bool_),
                     orig_sizes=orig_sizes.long().numpy())
        return dict(zip(OUTPUTS, map(torch.from_numpy, self.session.run(OUTPUTS, feeds))))

    def __call__(self, inputs, masks=None, data_samples=None, mode='predict'):
        if mode != 'predict':
            raise ValueError(f"an exported detector only predicts, got mode={mode!r}")
        if masks is None:
            masks = torch.zeros(inputs.shape[0], *inputs.shape[-2:], dtype=torch.bool)
        sizes = torch.stack([t['orig_size'] for t in data_samples])
        out = self.run(inputs, masks, sizes)
        return [dict(scores=s, labels=l, boxes=b, image_id=t['image_id'])
                for s, l, b, t in zip(out['scores'], out['labels'], out['boxes'], data_samples)]

    def eval(self):
        return self
