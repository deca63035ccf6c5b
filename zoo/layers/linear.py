"""The Linear layer every family uses: on a CPU in float32 its three matrix products (forward,
input gradient, weight gradient) run on oneDNN instead of the BLAS behind ``torch.mm``.

Why: PyTorch's x86 wheels do float32 ``mm`` / ``addmm`` with Intel MKL, which on AMD processors
takes its AVX2 code path. On the project's machine (AMD EPYC with AVX-512, 2 threads) a ViT-S
MLP product, (4200 x 384) @ (384 x 1536), runs at 181-207 GFLOP/s through ``mm`` and at
413-481 GFLOP/s through oneDNN (its input-gradient product likewise; the weight gradient at
about 300), in IEEE float32 both: the results differ only in summation order (relative error
1e-6). ViT-S inference goes from 20.7 to 38.6 images/s. On Intel processors MKL takes its
AVX-512 path and the gap should be small; that is not measured here.

The oneDNN path runs only where it applies and where the running torch has its private operator
(:mod:`zoo.layers.private_ops`): a CPU tensor in float32 with autocast off, outside
``torch.compile`` (inductor picks its own kernels), tracing and ONNX export, and outside any
``TorchDispatchMode`` (FLOP counters and fake tensors see a plain ``aten.linear``). Everywhere
else, and when turned off (:func:`set_onednn_linear`, ``tools/benchmark.py --no-onednn``), it is
``F.linear``. State dicts are ``nn.Linear``'s.

Inference in bfloat16 (autocast to bfloat16, or a model cast with ``.to(torch.bfloat16)``), with
autograd off, also runs on oneDNN: operands cast to bfloat16 as autocast casts them, one
product with the bias, and :func:`linear_gelu` adds the MLP's exact GELU as the product's
post-op instead of a second pass. On the ViT-S MLP product that is 845 against 765 GFLOP/s
through ``addmm``; with the attention map's own shortcut (``zoo.layers.attention``) ViT-S
bfloat16 inference is 5-6% faster (README, "bfloat16 on this CPU").
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import private_ops  # the private oneDNN operator and dispatch-mode query, or None without them

_enabled = True


def set_onednn_linear(enabled: bool) -> bool:
    """Turn the oneDNN path on or off for the whole process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def onednn_linear_active() -> bool:
    """Whether float32 CPU linears currently take the oneDNN path (available in this torch and
    turned on; :mod:`zoo.layers.private_ops`)."""
    return _enabled and private_ops.onednn_linear_available()


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K) @ weight (N, K)^T + bias (N,) -> (M, N) on oneDNN (strided operands accepted)."""
    return private_ops.linear_pointwise(x, weight, bias, 'none', [], '')


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b for 2-D x, with all three products on oneDNN."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _product(grad, weight.t()) if need_x else None       # (M, N) @ (N, K)
        grad_w = _product(grad.t(), x.t()) if need_w else None        # (N, M) @ (M, K)
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


def needs_plain_ops() -> bool:
    """Whether the ops called now must be the plain aten ones, no fast-path substitutes: while
    compiling, tracing, exporting to ONNX, or under a dispatch mode (FLOP counters, fake tensors;
    always, where this torch cannot tell: :func:`zoo.layers.private_ops.dispatch_mode_active`)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
        or private_ops.dispatch_mode_active()


def _plain_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if not onednn_linear_active() or x.device.type != 'cpu':
        return True
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2 or x.numel() == 0:
        return True
    return torch.is_autocast_enabled('cpu') or needs_plain_ops()


def _bfloat16_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CPU product computed in bfloat16 with autograd off, where oneDNN applies."""
    if not onednn_linear_active() or x.device.type != 'cpu' or torch.is_grad_enabled() \
            or x.dim() < 2 or x.numel() == 0:
        return False
    if torch.is_autocast_enabled('cpu'):
        bf16 = torch.get_autocast_dtype('cpu') == torch.bfloat16 and x.dtype in (torch.float32, torch.bfloat16) \
            and weight.dtype in (torch.float32, torch.bfloat16)
    else:
        bf16 = x.dtype == torch.bfloat16 and weight.dtype == torch.bfloat16
    return bf16 and not needs_plain_ops()


def _bfloat16_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      post_op: str) -> torch.Tensor:
    """post_op(x W^T + b) in bfloat16 on oneDNN: x (..., K) -> (..., N); 'none' or 'gelu' (exact)."""
    bf16 = torch.bfloat16
    y = private_ops.linear_pointwise(x.to(bf16).reshape(-1, x.shape[-1]), weight.to(bf16),
                          None if bias is None else bias.to(bf16), post_op, [],
                          'none' if post_op == 'gelu' else '')
    return y.view(*x.shape[:-1], y.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``: x (..., K), weight (N, K), bias (N,) -> (..., N); on oneDNN where it applies."""
    if _bfloat16_inference(x, weight):
        return _bfloat16_product(x, weight, bias, 'none')
    if _plain_path(x, weight):
        return F.linear(x, weight, bias)
    # The reshapes stay outside the autograd Function: an output that is a view made inside one
    # may not be changed in place (DETR's layers do), one made outside may.
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """GELU (exact, erf form) of :func:`linear`: x (..., K) -> (..., N). The activation is fused
    into the product on the bfloat16 inference path, a second op everywhere else."""
    if _bfloat16_inference(x, weight):
        return _bfloat16_product(x, weight, bias, 'gelu')
    return F.gelu(linear(x, weight, bias))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
