"""Multi-scale deformable attention as a Triton kernel, forward and backward: compiled by Triton
at first use, so a GPU user needs no built extension (the official operator must be compiled
against the local CUDA toolkit).

Import this module only through :func:`detection.ms_deform_attn.ms_deform_attn` with
``backend='triton'`` or ``'auto'``: it needs the ``triton`` package, which the project does not.
On a CPU the kernels run only under Triton's interpreter, which Triton switches on when a kernel
is defined, i.e. when this module is first imported: ``TRITON_INTERPRET=1`` must be set before
that (the CPU tests do); :data:`INTERPRETED` records whether it was.

Semantics are those of the pure-PyTorch path (``grid_sample``, bilinear, align_corners=False,
zero padding): location (x, y) in [0, 1] of a level of H x W reads pixel (x W - 0.5, y H - 0.5),
each of its four neighbours weighted by area, neighbours outside the map reading zero. The
kernels sample and accumulate in float32 whatever the input dtypes (float32, float16,
bfloat16), so low-precision inputs are sampled at least as precisely as the PyTorch path does;
results are cast to the inputs' dtypes.

One program per (batch, query, head) takes all L * P samples of that head at once, as an
(L*P, D) block: four gathers of D channels per sample, a weighted sum over the rows. The
backward recomputes the samples (nothing but the inputs is saved), adds each sample's share of
grad_output into grad_value by atomic adds (into a float32 buffer: float16 / bfloat16 atomics
are not everywhere and would round every partial sum), and gets the location gradients from the
derivative of the bilinear weights and the attention-weight gradients as the dot of
grad_output with the sample.
"""
import contextlib

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _corner(value_ptr, pos_base, start, xi, yi, w, h, head, heads, channels, rows_ok, d, d_ok):
    """The (L*P, D) block of value at integer pixel (xi, yi) of each row's level, zeros where
    outside the map; also its offsets and mask, for the backward's atomic adds."""
    ok = rows_ok & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    pos = pos_base + start + yi * w + xi  # (n * S + position) per row, int64
    offsets = (pos * heads + head)[:, None] * channels + d[None, :]
    mask = ok[:, None] & d_ok[None, :]
    return tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32), offsets, mask


@triton.jit
def _setup(shapes_ptr, starts_ptr, loc_ptr, attn_ptr, pid, P, LP, BLOCK_LP: tl.constexpr):
    """Per row (one sample: level l = row // P, point p) of program ``pid``: its level's width,
    height and first position, the pixel coordinates of its location (clamped to [-2, size + 1],
    where every neighbour is already outside, so far-off locations cannot overflow the integer
    pixel index, and the gradient there is zero as it is unclamped) and its attention weight."""
    rows = tl.arange(0, BLOCK_LP)
    rows_ok = rows < LP
    level = rows // P
    h = tl.load(shapes_ptr + level * 2, mask=rows_ok, other=1)
    w = tl.load(shapes_ptr + level * 2 + 1, mask=rows_ok, other=1)
    start = tl.load(starts_ptr + level, mask=rows_ok, other=0)
    sample = pid * LP + rows  # (N, Lq, M, L, P) flattened: pid = (n * Lq + q) * M + m
    wf, hf = w.to(tl.float32), h.to(tl.float32)
    x = tl.load(loc_ptr + sample * 2, mask=rows_ok, other=0.0).to(tl.float32) * wf - 0.5
    y = tl.load(loc_ptr + sample * 2 + 1, mask=rows_ok, other=0.0).to(tl.float32) * hf - 0.5
    x = tl.minimum(tl.maximum(x, -2.0), wf + 1.0)
    y = tl.minimum(tl.maximum(y, -2.0), hf + 1.0)
    a = tl.load(attn_ptr + sample, mask=rows_ok, other=0.0).to(tl.float32)
    return rows_ok, h, w, start, sample, wf, hf, x, y, a


@triton.jit
def _bilinear(x, y):
    """The top-left corner (x0, y0) of each sample and its bilinear weights along x and y."""
    x0f, y0f = tl.floor(x), tl.floor(y)
    lx, ly = x - x0f, y - y0f
    hx, hy = x0f + 1.0 - x, y0f + 1.0 - y  # grid_sample's form of 1 - lx, 1 - ly
    return x0f.to(tl.int32), y0f.to(tl.int32), lx, ly, hx, hy


@triton.jit
def _msda_forward(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                  S, Lq, M, D, P, LP, BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    head = pid % M
    n = pid // M // Lq
    rows_ok, h, w, start, sample, wf, hf, x, y, a = _setup(shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
                                                           pid, P, LP, BLOCK_LP)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    x0, y0, lx, ly, hx, hy = _bilinear(x, y)
    base = n * S
    v00, _, _ = _corner(value_ptr, base, start, x0, y0, w, h, head, M, D, rows_ok, d, d_ok)
    v01, _, _ = _corner(value_ptr, base, start, x0 + 1, y0, w, h, head, M, D, rows_ok, d, d_ok)
    v10, _, _ = _corner(value_ptr, base, start, x0, y0 + 1, w, h, head, M, D, rows_ok, d, d_ok)
    v11, _, _ = _corner(value_ptr, base, start, x0 + 1, y0 + 1, w, h, head, M, D, rows_ok, d, d_ok)
    sampled = ((hy * hx)[:, None] * v00 + (hy * lx)[:, None] * v01
               + (ly * hx)[:, None] * v10 + (ly * lx)[:, None] * v11)
    out = tl.sum(sampled * a[:, None], axis=0)
    tl.store(out_ptr + pid * D + d, out.to(out_ptr.dtype.element_ty), mask=d_ok)


@triton.jit
def _msda_backward(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, grad_out_ptr,
                   grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                   S, Lq, M, D, P, LP, BLOCK_LP: tl.constexpr, BLOCK_D: tl.constexpr,
                   VALUE_GRAD: tl.constexpr, SAMPLING_GRAD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    head = pid % M
    n = pid // M // Lq
    rows_ok, h, w, start, sample, wf, hf, x, y, a = _setup(shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
                                                           pid, P, LP, BLOCK_LP)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D
    g = tl.load(grad_out_ptr + pid * D + d, mask=d_ok, other=0.0).to(tl.float32)
    x0, y0, lx, ly, hx, hy = _bilinear(x, y)
    base = n * S
    v00, o00, m00 = _corner(value_ptr, base, start, x0, y0, w, h, head, M, D, rows_ok, d, d_ok)
    v01, o01, m01 = _corner(value_ptr, base, start, x0 + 1, y0, w, h, head, M, D, rows_ok, d, d_ok)
    v10, o10, m10 = _corner(value_ptr, base, start, x0, y0 + 1, w, h, head, M, D, rows_ok, d, d_ok)
    v11, o11, m11 = _corner(value_ptr, base, start, x0 + 1, y0 + 1, w, h, head, M, D, rows_ok, d, d_ok)
    ga = a[:, None] * g[None, :]  # (L*P, D): d loss / d sample
    if VALUE_GRAD:
        tl.atomic_add(grad_value_ptr + o00, ga * (hy * hx)[:, None], mask=m00)
        tl.atomic_add(grad_value_ptr + o01, ga * (hy * lx)[:, None], mask=m01)
        tl.atomic_add(grad_value_ptr + o10, ga * (ly * hx)[:, None], mask=m10)
        tl.atomic_add(grad_value_ptr + o11, ga * (ly * lx)[:, None], mask=m11)
    if SAMPLING_GRAD:
        sampled = ((hy * hx)[:, None] * v00 + (hy * lx)[:, None] * v01
                   + (ly * hx)[:, None] * v10 + (ly * lx)[:, None] * v11)
        grad_a = tl.sum(sampled * g[None, :], axis=1)
        # d sample / d x and / d y in pixels, then by the level's size to the [0, 1] location
        dx = hy[:, None] * (v01 - v00) + ly[:, None] * (v11 - v10)
        dy = hx[:, None] * (v10 - v00) + lx[:, None] * (v11 - v01)
        grad_x = tl.sum(dx * ga, axis=1) * wf
        grad_y = tl.sum(dy * ga, axis=1) * hf
        tl.store(grad_attn_ptr + sample, grad_a.to(grad_attn_ptr.dtype.element_ty), mask=rows_ok)
        tl.store(grad_loc_ptr + sample * 2, grad_x.to(grad_loc_ptr.dtype.element_ty), mask=rows_ok)
        tl.store(grad_loc_ptr + sample * 2 + 1, grad_y.to(grad_loc_ptr.dtype.element_ty), mask=rows_ok)


INTERPRETED = isinstance(_msda_forward, InterpretedFunction)


def _launch_config(lp: int, d: int) -> dict:
    block_lp, block_d = triton.next_power_of_2(lp), triton.next_power_of_2(d)
    # about 256 elements of the (L*P, D) block per warp: Deformable DETR's 16 x 32 gets 2 warps
    # (a starting point, not tuned on a GPU)
    warps = min(8, max(1, block_lp * block_d // 256))
    return dict(BLOCK_LP=block_lp, BLOCK_D=block_d, num_warps=warps)


def _device(tensor):
    """The launch must happen on the tensor's GPU (Triton launches on the current device)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class _MSDeformAttn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        value, sampling_locations, attention_weights = (
            t.contiguous() for t in (value, sampling_locations, attention_weights))
        # the kernels read the level sizes on the device; int32 keeps their index arithmetic narrow
        shapes = spatial_shapes.to(device=value.device, dtype=torch.int32).contiguous()
        starts = level_start_index.to(device=value.device, dtype=torch.int32).contiguous()
        n, s, m, d = value.shape
        _, lq, _, num_levels, p, _ = sampling_locations.shape
        out = value.new_empty(n, lq, m, d)
        if out.numel():
            with _device(value):
                _msda_forward[(n * lq * m,)](value, shapes, starts, sampling_locations, attention_weights,
                                            out, s, lq, m, d, p, num_levels * p,
                                            **_launch_config(num_levels * p, d))
        ctx.save_for_backward(value, shapes, starts, sampling_locations, attention_weights)
        return out.view(n, lq, m * d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, sampling_locations, attention_weights = ctx.saved_tensors
        need_value, _, _, need_loc, need_attn = ctx.needs_input_grad
        n, s, m, d = value.shape
        _, lq, _, num_levels, p, _ = sampling_locations.shape
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device) if need_value else None
        grad_loc = torch.empty_like(sampling_locations)
        grad_attn = torch.empty_like(attention_weights)
        if grad_out.numel() and (need_value or need_loc or need_attn):
            with _device(value):
                _msda_backward[(n * lq * m,)](
                    value, shapes, starts, sampling_locations, attention_weights, grad_out.contiguous(),
                    grad_value if need_value else value, grad_loc, grad_attn,
                    s, lq, m, d, p, num_levels * p, **_launch_config(num_levels * p, d),
                    VALUE_GRAD=need_value, SAMPLING_GRAD=need_loc or need_attn)
        elif grad_out.numel() == 0:
            grad_loc.zero_()
            grad_attn.zero_()
        return (grad_value.to(value.dtype) if need_value else None, None, None,
                grad_loc if need_loc else None, grad_attn if need_attn else None)


def ms_deform_attn_triton(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """:func:`detection.ms_deform_attn.ms_deform_attn` on the Triton kernels: same arguments,
    shapes and result (N, Lq, M * D) in value's dtype. Tensors on a CUDA device (or on the CPU
    under the interpreter), floating inputs in float32 / float16 / bfloat16."""
    return _MSDeformAttn.apply(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights)
