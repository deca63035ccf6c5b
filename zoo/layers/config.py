"""Every fast-path switch of the layer library, and the explicit inference step, in one place.

Switches, each on by default, each read from its environment variable when this module is imported
(``0`` / ``false`` / ``off`` or ``1`` / ``true`` / ``on``), changed for the whole process by its
setter, and within a ``with`` block by :func:`fast_paths`:

* ``fused_attn`` (``VITZOO_FUSED_ATTN``, :func:`use_fused_attn`): attention through
  ``F.scaled_dot_product_attention``; off, the explicit q k^T, softmax, @ v. A layer's own
  ``fused`` / a model's ``fused_attn`` argument overrides it.
* ``onednn`` (``VITZOO_ONEDNN``, :func:`use_onednn`): CPU linears (float32, bfloat16 inference,
  the MLP's linear + GELU) and a fused LeFF's convolutions on oneDNN's private operators
  (:mod:`zoo.layers.private_ops`); off, ``F.linear`` / ``F.conv2d``. The same function up to
  summation order (``tests/zoo/test_linear.py``).
* ``fast_mha`` (``VITZOO_FAST_MHA``, :func:`use_fast_mha`): DETR's attention takes its own forward
  on large maps (:mod:`detection.attention`); off, ``nn.MultiheadAttention``'s on every call.

A layer reads a switch when it is built and keeps that setting (``self.fused``, ``self.onednn``),
as timm's ``use_fused_attn()`` is read: build the model inside the ``with`` block, or with the
variable set. What can only be known per call (autograd, device, dtype, tracing) each fast path
gathers in one predicate, and all of them step aside for :func:`needs_plain_ops`.

:func:`fuse_for_inference` is the one explicit step: it folds what can be folded for inference
(LeFF's batch norms into its convolutions) once, instead of at every forward.

Speed figures for each path: docs/benchmarks.md ("Where the CPU speed comes from", "bfloat16 on
a CPU", "Detectors at detection resolution").
"""
import contextlib
import os

import torch
from torch import nn

from . import private_ops

_ENV = {'fused_attn': 'VITZOO_FUSED_ATTN', 'onednn': 'VITZOO_ONEDNN', 'fast_mha': 'VITZOO_FAST_MHA'}
_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def _from_environment(switch: str) -> bool:
    name = _ENV[switch]
    value = os.environ.get(name, '1').strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f'{name}={os.environ[name]!r} is not a switch setting: set it to 1 (on, the default) '
                         f'or 0 (off), or unset it')
    return value in _TRUE


_state = {switch: _from_environment(switch) for switch in _ENV}


def use_fused_attn() -> bool:
    """Whether attention layers built now use ``F.scaled_dot_product_attention``."""
    return _state['fused_attn']


def use_onednn() -> bool:
    """Whether linears and convolutions built now may run on oneDNN (where it is available)."""
    return _state['onednn']


def use_fast_mha() -> bool:
    """Whether DETR's attention layers built now take their own forward on large maps."""
    return _state['fast_mha']


def _set(switch: str, enabled: bool) -> bool:
    previous, _state[switch] = _state[switch], bool(enabled)
    return previous


def set_fused_attn(enabled: bool) -> bool:
    """Turn ``fused_attn`` on or off for the process; returns the previous setting."""
    return _set('fused_attn', enabled)


def set_onednn(enabled: bool) -> bool:
    """Turn ``onednn`` on or off for the process; returns the previous setting."""
    return _set('onednn', enabled)


def set_fast_mha(enabled: bool) -> bool:
    """Turn ``fast_mha`` on or off for the process; returns the previous setting."""
    return _set('fast_mha', enabled)


@contextlib.contextmanager
def fast_paths(enabled: bool | None = None, *, fused_attn: bool | None = None, onednn: bool | None = None,
               fast_mha: bool | None = None):
    """Within the block, every switch set to ``enabled`` (None: left as it is), then any switch
    named on its own; all restored on leaving. ``with fast_paths(False): model = ...`` builds a
    model on the plain ops alone; ``with fast_paths(onednn=False): ...`` turns off one switch."""
    settings = dict.fromkeys(_state, enabled) if enabled is not None else {}
    settings.update({k: v for k, v in dict(fused_attn=fused_attn, onednn=onednn, fast_mha=fast_mha).items()
                     if v is not None})
    previous = dict(_state)
    try:
        for switch, value in settings.items():
            _set(switch, value)
        yield
    finally:
        _state.update(previous)


def needs_plain_ops() -> bool:
    """Whether the ops called now must be the plain aten ones, no fast-path substitutes: while
    compiling, tracing, exporting to ONNX, or under a dispatch mode (FLOP counters, fake tensors;
    always, where this torch cannot tell: :func:`zoo.layers.private_ops.dispatch_mode_active`)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
        or private_ops.dispatch_mode_active()


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """Call ``fuse()`` on every submodule of ``model`` that has one (LeFF: its batch norms folded into
    its convolutions, computed once); returns ``model``. For inference: the model must be in eval
    mode, and ``model.train()`` undoes it. Parameters, buffers and state-dict keys are unchanged,
    so checkpoints load and save as before (a load refolds from the loaded weights)."""
    if model.training:
        raise RuntimeError('fuse_for_inference folds batch norms with their running statistics, which '
                           'only eval mode uses: call model.eval() first')
    for module in model.modules():
        fuse = getattr(module, 'fuse', None)
        if callable(fuse):
            fuse()
    return model
