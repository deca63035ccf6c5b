"""The private torch internals behind the CPU fast paths, looked up here and nowhere else.

torch keeps these out of its public API: a build without oneDNN, another processor, or a later
release that renames or drops one has no such attribute. Each is looked up once, at import, and
is None where the running torch lacks it; the fast paths (:mod:`zoo.layers.linear`,
:mod:`zoo.layers.leff`, :mod:`zoo.layers.mlp` through :func:`zoo.layers.helpers.unhooked`) ask
here at every call and take the public ops (``F.linear``, ``nn.Conv2d``, ``nn.BatchNorm2d``,
``nn.GELU``) where they are missing. The results are the same up to float rounding
(``tests/zoo/test_private_ops.py`` sets every handle to None and compares).

* :data:`linear_pointwise` - ``torch.ops.mkldnn._linear_pointwise``: a oneDNN matrix product with
  an optional fused post-op (the float32 and bfloat16 linears).
* :data:`convolution_pointwise` - ``torch.ops.mkldnn._convolution_pointwise``: a oneDNN
  convolution with a fused post-op (LeFF's inference path).
* :data:`current_dispatch_mode` - ``torch.utils._python_dispatch._get_current_dispatch_mode``:
  whether a ``TorchDispatchMode`` (FLOP counter, fake tensors) is active, under which the fast
  paths must not run. Where it is missing no mode can be seen, so the fast paths stay off.
* the global forward hooks of ``torch.nn.modules.module``: a fused path that skips its
  submodules' forwards may run only while no global hook would see those calls. Where torch
  keeps them elsewhere, hooks cannot be ruled out and the fused paths stay off.
"""
import platform

import torch
import torch.utils._python_dispatch as _python_dispatch
from torch.nn.modules import module as _module


def _operator(namespace: str, name: str):
    """``torch.ops.<namespace>.<name>.default``, or None where this torch has no such operator."""
    try:
        return getattr(getattr(torch.ops, namespace), name).default
    except (AttributeError, RuntimeError):  # torch.ops raises either for an unknown name
        return None


linear_pointwise = _operator('mkldnn', '_linear_pointwise')
convolution_pointwise = _operator('mkldnn', '_convolution_pointwise')
current_dispatch_mode = getattr(_python_dispatch, '_get_current_dispatch_mode', None)
_GLOBAL_HOOKS = ('_global_forward_hooks', '_global_forward_pre_hooks')

# oneDNN in this build, on x86: the fast paths were measured there only (docs/benchmarks.md).
ONEDNN_CPU = torch.backends.mkldnn.is_available() and platform.machine().lower() in ('x86_64', 'amd64')


def onednn_linear_available() -> bool:
    """Whether float32 / bfloat16 CPU linears can run on oneDNN in this torch, on this machine."""
    return ONEDNN_CPU and linear_pointwise is not None


def onednn_convolution_available() -> bool:
    """Whether LeFF's fused convolutions can run on oneDNN in this torch, on this machine."""
    return ONEDNN_CPU and convolution_pointwise is not None


def dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` is active now; True where this torch cannot say."""
    return current_dispatch_mode is None or current_dispatch_mode() is not None


def global_forward_hooks_registered() -> bool:
    """Whether any global forward (pre-)hook is registered (``nn.modules.module.
    register_module_forward_hook``); True where this torch keeps them elsewhere."""
    hooks = [getattr(_module, name, None) for name in _GLOBAL_HOOKS]
    return any(h is None or len(h) > 0 for h in hooks)
