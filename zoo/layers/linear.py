"""The Linear layer every family uses: on a CPU its matrix products run on oneDNN instead of the
BLAS behind ``torch.mm``.

Why: PyTorch's x86 wheels do float32 ``mm`` / ``addmm`` with Intel MKL, which on AMD processors
takes its AVX2 code path; oneDNN, which PyTorch also ships, uses AVX-512 there. In float32 the
three products of a linear (forward, input gradient, weight gradient) run on oneDNN in IEEE
float32 both ways: the results differ only in summation order. On Intel processors MKL takes its
AVX-512 path and is as fast or faster, so there the ``onednn_float32`` switch is off by default
and float32 linears are ``F.linear``. Measured rates: docs/benchmarks.md, "Where the CPU speed
comes from".

Inference in bfloat16 (autocast to bfloat16, or a model cast with ``.to(torch.bfloat16)``), with
autograd off, also runs on oneDNN: operands cast to bfloat16 as autocast casts them, one product
with the bias, and :func:`linear_gelu` adds the MLP's exact GELU as the product's post-op
instead of a second pass (docs/benchmarks.md, "bfloat16 on a CPU").

Which path runs: the ``onednn`` switch (:mod:`zoo.layers.config`, read when a :class:`Linear` is
built) chooses whether oneDNN may run at all, and ``onednn_float32`` whether float32 products may
too; per call, :func:`onednn_dtype` says whether it
applies (a CPU tensor, float32 or bfloat16 inference, not while compiling, tracing, exporting or
counting FLOPs, and an operator this torch has: :mod:`zoo.layers.private_ops`). Everywhere else
it is ``F.linear``. State dicts are ``nn.Linear``'s.
"""
import torch
import torch.nn.functional as F
from torch import nn

from . import private_ops  # the private oneDNN operator, or None without it
from .config import needs_plain_ops, set_onednn, use_onednn, use_onednn_float32

set_onednn_linear = set_onednn  # the name tools/benchmark.py --no-onednn uses


def onednn_linear_active() -> bool:
    """Whether linears built now take the oneDNN path where it applies (switched on, and available
    in this torch on this machine)."""
    return use_onednn() and private_ops.onednn_linear_available()


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


_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def onednn_dtype(x: torch.Tensor, weight: torch.Tensor, float32: bool | None = None) -> torch.dtype | None:
    """The dtype x (..., K) @ weight (N, K)^T runs in on oneDNN now, or None where ``F.linear`` must
    run. float32: CPU float32 operands, autocast off (autograd on or off), and ``float32`` (the
    caller's ``onednn_float32`` setting; None reads :func:`zoo.layers.config.use_onednn_float32`
    now). bfloat16: autograd off, and autocast to bfloat16 or bfloat16 operands. Never while plain
    ops are needed (:func:`zoo.layers.config.needs_plain_ops`) or where this torch lacks the operator."""
    # plain ops first: under tracing, x.numel() would be recorded as a constant
    if x.device.type != 'cpu' or x.dim() < 2 or needs_plain_ops() or x.numel() == 0 \
            or not private_ops.onednn_linear_available():
        return None
    if torch.is_autocast_enabled('cpu'):
        if torch.get_autocast_dtype('cpu') != torch.bfloat16 or x.dtype not in _ONEDNN_DTYPES \
                or weight.dtype not in _ONEDNN_DTYPES:
            return None
        dtype = torch.bfloat16
    elif x.dtype == weight.dtype and x.dtype in _ONEDNN_DTYPES:
        dtype = x.dtype
    else:
        return None
    if dtype == torch.float32:
        return dtype if (use_onednn_float32() if float32 is None else float32) else None
    return None if torch.is_grad_enabled() else dtype  # no bfloat16 backward


def _bfloat16_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      post_op: str) -> torch.Tensor:
    """post_op(x W^T + b) in bfloat16 on oneDNN: x (..., K) -> (..., N); 'none' or 'gelu' (exact)."""
    bf16 = torch.bfloat16
    y = private_ops.linear_pointwise(x.to(bf16).reshape(-1, x.shape[-1]), weight.to(bf16),
                                     None if bias is None else bias.to(bf16), post_op, [],
                                     'none' if post_op == 'gelu' else '')
    return y.view(*x.shape[:-1], y.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           onednn: bool | None = None, onednn_float32: bool | None = None) -> torch.Tensor:
    """``F.linear``: x (..., K), weight (N, K), bias (N,) -> (..., N); on oneDNN where it applies.
    ``onednn`` / ``onednn_float32``: the caller's settings of those switches (a layer's, read when
    it was built); None reads :func:`zoo.layers.config.use_onednn` /
    :func:`zoo.layers.config.use_onednn_float32` now."""
    dtype = onednn_dtype(x, weight, onednn_float32) if (use_onednn() if onednn is None else onednn) else None
    if dtype is None:
        return F.linear(x, weight, bias)
    if dtype == torch.bfloat16:
        return _bfloat16_product(x, weight, bias, 'none')
    # The reshapes stay outside the autograd Function: an output that is a view made inside one
    # may not be changed in place (DETR's layers do), one made outside may.
    y = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def linear_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                onednn: bool | None = None, onednn_float32: bool | None = None) -> torch.Tensor:
    """GELU (exact, erf form) of :func:`linear`: x (..., K) -> (..., N). The activation is fused
    into the product on the bfloat16 inference path, a second op everywhere else."""
    if (use_onednn() if onednn is None else onednn) and onednn_dtype(x, weight, onednn_float32) == torch.bfloat16:
        return _bfloat16_product(x, weight, bias, 'gelu')
    return F.gelu(linear(x, weight, bias, onednn, onednn_float32))


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose forward is :func:`linear`. The
    ``onednn`` and ``onednn_float32`` switches are read when the layer is built (``self.onednn``,
    ``self.onednn_float32``). After :meth:`fuse` (:func:`zoo.layers.config.fuse_for_inference`) the
    bfloat16 inference path reads a kept bfloat16 copy of the weight and bias (:meth:`operands`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.onednn = use_onednn()
        self.onednn_float32 = use_onednn_float32()
        self.keeps_bfloat16 = False  # fuse(): keep a bfloat16 copy for bfloat16 inference
        self.bfloat16_copy = None  # (what it was made from, weight, bias); not in the state dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, *self.operands(x), self.onednn, self.onednn_float32)

    def fuse(self) -> None:
        """For inference: the bfloat16 inference path (autocast or bfloat16 input, autograd off, on
        oneDNN) then reads a bfloat16 copy of the weight and bias, made at its first call, instead
        of casting the float32 parameters at every call as autocast does. The same products bit for
        bit (the copy is cast as autocast casts); the cost is the copy's memory, half the float32
        parameters'. The copy is remade when a parameter is changed in place (its version counter;
        an edit through ``.data`` bypasses it: call ``fuse_for_inference`` again), replaced or
        moved; ``train()`` drops it. Parameters created under ``torch.inference_mode`` have no
        version counter: none is kept for them (cast at every call, as without ``fuse``). Float32
        inference and training are unchanged."""
        if self.training:
            raise RuntimeError('Linear.fuse() prepares inference: call .eval() first')
        self.keeps_bfloat16 = True

    def operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(weight, bias) for the product of ``x`` (..., in_features): the kept bfloat16 copy where
        :meth:`fuse` asked for one and the product runs in bfloat16 on oneDNN; else the parameters."""
        weight, bias = self.weight, self.bias
        if not self.keeps_bfloat16 or weight.dtype == torch.bfloat16 or not self.onednn or weight.is_inference() \
                or onednn_dtype(x, weight, self.onednn_float32) != torch.bfloat16:
            return weight, bias
        made_from = tuple((t._version, t.data_ptr()) for t in (weight, bias) if t is not None)
        if self.bfloat16_copy is None or self.bfloat16_copy[0] != made_from:
            with torch.no_grad():
                self.bfloat16_copy = (made_from, weight.to(torch.bfloat16),
                                      None if bias is None else bias.to(torch.bfloat16))
        return self.bfloat16_copy[1:]

    def train(self, mode: bool = True):
        if mode:
            self.keeps_bfloat16, self.bfloat16_copy = False, None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.bfloat16_copy = None  # moved or cast: made again from the moved parameters when next used
        return super()._apply(fn, *args, **kwargs)
