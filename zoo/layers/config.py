"""Every fast-path switch of the layer library, and the explicit inference step, in one place.

Switches, each on by default (``onednn_float32``: except on Intel CPUs; ``explicit_bf16_attn``:
except on CPUs with AMX), each read from its
environment variable when this module is imported (``0`` / ``false`` / ``off`` or ``1`` / ``true`` /
``on``), changed for the whole process by its setter, and within a ``with`` block by
:func:`fast_paths`:

* ``fused_attn`` (``VITZOO_FUSED_ATTN``, :func:`use_fused_attn`): attention through
  ``F.scaled_dot_product_attention``; off, the explicit q k^T, softmax, @ v. A layer's own
  ``fused`` / a model's ``fused_attn`` argument overrides it.
* ``onednn`` (``VITZOO_ONEDNN``, :func:`use_onednn`): CPU linears (float32, bfloat16 inference,
  the MLP's linear + GELU) and a fused LeFF's convolutions on oneDNN's private operators
  (:mod:`zoo.layers.private_ops`); off, ``F.linear`` / ``F.conv2d``. The same function up to
  summation order (``tests/zoo/test_linear.py``). Off, no oneDNN path runs, whatever
  ``onednn_float32`` says.
* ``onednn_float32`` (``VITZOO_ONEDNN_FLOAT32``, :func:`use_onednn_float32`): within ``onednn``, the
  float32 linears too (bfloat16 inference and LeFF need only ``onednn``); off, float32 linears are
  ``F.linear``. Unset, it is decided once at import from the CPU's vendor
  (:func:`onednn_float32_default`): off on Intel, on elsewhere and where the vendor is unknown.
* ``fast_mha`` (``VITZOO_FAST_MHA``, :func:`use_fast_mha`): DETR's attention takes its own forward
  on large maps (:mod:`detection.attention`); off, ``nn.MultiheadAttention``'s on every call.
* ``explicit_bf16_attn`` (``VITZOO_EXPLICIT_BF16_ATTN``, :func:`use_explicit_bf16_attn`): within
  ``fused_attn``, CPU bfloat16 inference attends with explicit products (q k^T, softmax, @ v on
  oneDNN's bfloat16 kernels) instead of the fused kernel (:func:`zoo.layers.attention.explicit_is_faster`);
  off, the fused kernel there too. Unset, it is decided once at import from the CPU's flags
  (:func:`explicit_bf16_attn_default`): off where the CPU has AMX, on elsewhere.

A layer reads a switch when it is built and keeps that setting (``self.fused``, ``self.onednn``,
``self.onednn_float32``), as timm's ``use_fused_attn()`` is read: build the model inside the
``with`` block, or with the variable set. What can only be known per call (autograd, device,
dtype, tracing) each fast path gathers in one predicate, and all of them step aside for
:func:`needs_plain_ops`.

:func:`fuse_for_inference` is the one explicit step: it does once for inference what would
otherwise be redone at every forward (LeFF's batch norms folded into its convolutions; the linears'
weights cast to bfloat16 for bfloat16 inference).

Speed figures for each path: docs/benchmarks.md ("Where the CPU speed comes from", "bfloat16 on
a CPU", "Detectors at detection resolution").
"""
import contextlib
import os
import platform

import torch
from torch import nn

from . import private_ops

_ENV = {'fused_attn': 'VITZOO_FUSED_ATTN', 'onednn': 'VITZOO_ONEDNN', 'fast_mha': 'VITZOO_FAST_MHA',
        'onednn_float32': 'VITZOO_ONEDNN_FLOAT32', 'explicit_bf16_attn': 'VITZOO_EXPLICIT_BF16_ATTN'}
_TRUE, _FALSE = ('1', 'true', 'yes', 'on'), ('0', 'false', 'no', 'off')


def _cpuinfo_value(key: str, cpuinfo: str) -> str | None:
    """The value of the first ``key`` line of ``cpuinfo`` on Linux; None elsewhere, or where the
    file cannot be read or has no such line."""
    if platform.system() != 'Linux':
        return None
    try:
        with open(cpuinfo, encoding='utf-8', errors='replace') as f:
            for line in f:
                name, _, value = line.partition(':')
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_vendor(cpuinfo: str = '/proc/cpuinfo') -> str | None:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``) from the first ``vendor_id`` line
    of ``cpuinfo`` on Linux; None elsewhere, or where the file cannot be read or has no such line."""
    return _cpuinfo_value('vendor_id', cpuinfo) or None


def cpu_flags(cpuinfo: str = '/proc/cpuinfo') -> frozenset[str] | None:
    """The CPU's feature flags (``avx512_bf16``, ``amx_bf16``, ...) from the first ``flags`` line of
    ``cpuinfo`` on Linux; None where they cannot be read (another system, no such line)."""
    flags = _cpuinfo_value('flags', cpuinfo)
    return None if flags is None else frozenset(flags.split())


def onednn_float32_default() -> bool:
    """``onednn_float32`` where its variable is unset: off on an Intel CPU, on anywhere else
    (another vendor, or one that :func:`cpu_vendor` cannot tell)."""
    # MKL's float32 GEMM takes its AVX-512 path on Intel and is as fast or faster; on AMD it takes AVX2
    # and oneDNN is faster (docs/benchmarks.md, "Where the CPU speed comes from").
    return cpu_vendor() != 'GenuineIntel'


def explicit_bf16_attn_default() -> bool:
    """``explicit_bf16_attn`` where its variable is unset: off on a CPU with AMX (``amx_bf16``), on
    anywhere else (a CPU without it, or one whose flags :func:`cpu_flags` cannot read)."""
    # With AMX the fused kernel's bfloat16 products run on the tile unit and it beats the explicit
    # products at every shape the zoo meets; without AMX it runs bfloat16 at about float32's speed
    # (docs/benchmarks.md, "bfloat16 on a CPU").
    return 'amx_bf16' not in (cpu_flags() or ())


def _vendor_in_words() -> str:
    return cpu_vendor() or 'a CPU of unknown vendor'


def _amx_in_words() -> str:
    flags = cpu_flags()
    if flags is None:
        return 'a CPU of unknown flags'
    return f'a CPU {"with" if "amx_bf16" in flags else "without"} AMX'


# The switches whose default depends on the CPU: (their default on this CPU, the rule in words,
# this CPU in words). Every other switch is on by default.
_CPU_DEPENDENT = {
    'onednn_float32': (onednn_float32_default, 'on except on Intel CPUs', _vendor_in_words),
    'explicit_bf16_attn': (explicit_bf16_attn_default, 'on except on CPUs with AMX', _amx_in_words),
}


def _from_environment(switch: str) -> bool:
    """The switch's setting from its environment variable, or its default where that is unset."""
    name, cpu_dependent = _ENV[switch], _CPU_DEPENDENT.get(switch)
    if name not in os.environ:
        return cpu_dependent[0]() if cpu_dependent else True
    value = os.environ[name].strip().lower()
    if value not in _TRUE + _FALSE:
        default = cpu_dependent[1] if cpu_dependent else 'on'
        raise ValueError(f'{name}={os.environ[name]!r} is not a switch setting: set it to 1 (on) or 0 (off), '
                         f'or unset it for the default ({default})')
    return value in _TRUE


def _origin(switch: str) -> str:
    """Where the switch's setting at import came from, in words."""
    name, cpu_dependent = _ENV[switch], _CPU_DEPENDENT.get(switch)
    if name in os.environ:
        return f'{name}={os.environ[name]}'
    return f'default for {cpu_dependent[2]()}' if cpu_dependent else 'default'


_state = {switch: _from_environment(switch) for switch in _ENV}
_ORIGIN = {switch: _origin(switch) for switch in _ENV}


def setting_origin(switch: str) -> str:
    """Where ``switch``'s setting at import came from: its variable (``'VITZOO_ONEDNN_FLOAT32=1'``)
    or its default (``'default'``; ``onednn_float32``: ``'default for GenuineIntel'``). A setter or
    :func:`fast_paths` may have changed the setting since."""
    return _ORIGIN[switch]


def use_fused_attn() -> bool:
    """Whether attention layers built now use ``F.scaled_dot_product_attention``."""
    return _state['fused_attn']


def use_onednn() -> bool:
    """Whether linears and convolutions built now may run on oneDNN (where it is available)."""
    return _state['onednn']


def use_fast_mha() -> bool:
    """Whether DETR's attention layers built now take their own forward on large maps."""
    return _state['fast_mha']


def use_onednn_float32() -> bool:
    """Whether float32 linears built now may run on oneDNN (where ``onednn`` is on as well)."""
    return _state['onednn_float32']


def use_explicit_bf16_attn() -> bool:
    """Whether attention layers built now attend with explicit products in CPU bfloat16 inference."""
    return _state['explicit_bf16_attn']


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


def set_onednn_float32(enabled: bool) -> bool:
    """Turn ``onednn_float32`` on or off for the process; returns the previous setting."""
    return _set('onednn_float32', enabled)


def set_explicit_bf16_attn(enabled: bool) -> bool:
    """Turn ``explicit_bf16_attn`` on or off for the process; returns the previous setting."""
    return _set('explicit_bf16_attn', enabled)


@contextlib.contextmanager
def fast_paths(enabled: bool | None = None, *, fused_attn: bool | None = None, onednn: bool | None = None,
               fast_mha: bool | None = None, onednn_float32: bool | None = None,
               explicit_bf16_attn: bool | None = None):
    """Within the block, every switch set to ``enabled`` (None: left as it is), then any switch
    named on its own; all restored on leaving. ``with fast_paths(False): model = ...`` builds a
    model on the plain ops alone; ``with fast_paths(onednn=False): ...`` turns off one switch."""
    settings = dict.fromkeys(_state, enabled) if enabled is not None else {}
    named = dict(fused_attn=fused_attn, onednn=onednn, fast_mha=fast_mha, onednn_float32=onednn_float32,
                 explicit_bf16_attn=explicit_bf16_attn)
    settings.update({k: v for k, v in named.items() if v is not None})
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
    its convolutions, computed once; :class:`zoo.layers.linear.Linear`: a bfloat16 copy of its
    weight kept for bfloat16 inference, made at the first such call); returns ``model``. For
    inference: the model must be in eval mode, and ``model.train()`` undoes it. Parameters,
    buffers and state-dict keys are unchanged, so checkpoints load and save as before (a load
    refolds from the loaded weights and remakes the bfloat16 copies)."""
    if model.training:
        raise RuntimeError('fuse_for_inference folds batch norms with their running statistics, which '
                           'only eval mode uses: call model.eval() first')
    for module in model.modules():
        fuse = getattr(module, 'fuse', None)
        if callable(fuse):
            fuse()
    return model
