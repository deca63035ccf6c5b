"""The Triton deformable-attention kernel against the pure-PyTorch path, through Triton's
interpreter. Not collected by a plain ``pytest`` run (the name does not start with ``test_``):
``tests/detection/test_ms_deform_attn_triton.py::test_interpreted_kernel_checks`` runs this file
in a child pytest process started with TRITON_INTERPRET=1, and requires every check here to pass.
Run it alone with ``TRITON_INTERPRET=1 pytest tests/detection/msda_kernel_checks.py``.
Why a separate process, and the tolerances: see test_ms_deform_attn_triton.py's docstring."""
import os

import pytest
import torch

from detection.ms_deform_attn import ms_deform_attn
from helpers import spy_calls

@pytest.fixture(scope='module')
def kernel():
    """detection.ms_deform_attn_triton, its kernels interpreted (in a process started so)."""
    if os.environ.get('TRITON_INTERPRET') != '1':
        raise RuntimeError('run this file with TRITON_INTERPRET=1 in the environment from the start '
                           '(test_ms_deform_attn_triton.py::test_interpreted_kernel_checks does)')
    pytest.importorskip('triton', reason='the Triton kernel needs triton (torch CUDA wheels ship it)')
    import detection.ms_deform_attn_triton as module
    assert module.INTERPRETED
    return module



def _inputs(shapes, n=2, q=5, m=2, d=3, p=3, dtype=torch.float32):
    """value (N, S, M, D), spatial_shapes (L, 2), level_start_index (L,), locations
    (N, Lq, M, L, P, 2) in [-0.2, 1.2] (some samples partly or wholly outside), weights
    (N, Lq, M, L, P)."""
    spatial = torch.tensor(shapes)
    sizes = spatial.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(n, int(sizes.sum()), m, d, dtype=dtype)
    locations = torch.rand(n, q, m, len(shapes), p, 2, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(n, q, m, len(shapes), p, dtype=dtype)
    return value, spatial, starts, locations, weights


def _outside(locations, shapes):
    """Samples wholly outside (beyond a side, and far), on a corner, straddling an edge, and on
    a pixel centre (where bilinear has its kinks), for queries 0-2 (needs Lq >= 3, M >= 2, P >= 3)."""
    t = lambda *xy: torch.tensor(xy, dtype=locations.dtype)  # noqa: E731
    locations[:, 0, 0, :, 0] = t(-0.9, 0.5)
    locations[:, 0, 1, :, 1] = t(0.5, 1.7)
    locations[:, 1, 0, :, 2] = t(-1e4, 3e4)
    locations[:, 1, 1, :, 0] = t(1.01, -0.02)
    locations[:, 2, 0, :, 1] = t(0.0, 1.0)
    h, w = shapes[0]
    locations[:, 2, 1, 0, 2] = t(0.5 / w, 1.5 / h)  # the centre of pixel (x 0, y 1) of level 0
    return locations


def _run(backend, value, spatial, starts, locations, weights, gradient, needs=(True, True, True)):
    """The output and the gradients of the inputs in ``needs`` (value, locations, weights)."""
    inputs = [t.detach().clone().requires_grad_(r) for t, r in zip((value, locations, weights), needs)]
    out = ms_deform_attn(inputs[0], spatial, starts, inputs[1], inputs[2], backend=backend)
    wanted = [t for t in inputs if t.requires_grad]
    return [out, *torch.autograd.grad(out, wanted, gradient.to(out.dtype))]


def _assert_float32_close(ours, expected):
    # atol: 1e-6 of the tensor's scale, for elements that cancel to near zero (module docstring)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.detach().abs().max()))


CASES = {
    # several non-square levels; L * P = 12 and D = 3 are not powers of two, so the masked
    # rows and channels of the kernel's blocks are exercised
    'levels': dict(shapes=[(6, 8), (3, 5), (2, 2), (1, 1)], q=5, d=3, p=3),
    # every position a query, as in the encoder; tall and wide levels
    'encoder': dict(shapes=[(5, 3), (2, 4)], q=23, n=1, d=4, p=3),
    # Deformable DETR's head: D = 32, 4 levels of 4 points, 8 heads
    'detr-head': dict(shapes=[(4, 6), (2, 3), (1, 2), (1, 1)], q=4, m=8, d=32, p=4),
}


@pytest.mark.parametrize('case', CASES)
def test_kernel_float32_forward_and_gradients_equal_the_pytorch_path(kernel, case):
    kw = dict(CASES[case])
    value, spatial, starts, locations, weights = _inputs(**kw)
    locations = _outside(locations, kw['shapes'])
    gradient = torch.randn(value.shape[0], kw['q'], value.shape[2] * value.shape[3])
    # every input needing a gradient, then (one case: the interpreter is slow) each alone, which
    # takes the backward's branches that skip the value's atomic adds or the sampling gradients
    subsets = [(True, True, True)] + ([(True, False, False), (False, True, False), (False, False, True)]
                                      if case == 'levels' else [])
    for needs in subsets:
        ours = []
        calls = spy_calls(kernel, 'ms_deform_attn_triton', lambda: ours.extend(
            _run('triton', value, spatial, starts, locations, weights, gradient, needs)))
        assert len(calls) == 1  # the kernel ran, not a fallback
        expected = _run('pytorch', value, spatial, starts, locations, weights, gradient, needs)
        assert len(ours) == 1 + sum(needs) and ours[0].shape == expected[0].shape
        for a, b in zip(ours, expected):
            assert a.dtype == b.dtype and a.shape == b.shape
            _assert_float32_close(a, b)
        if needs == (True, True, True):
            # the far-off sample (query 1, head 0, point 2) reads zeros and gets no gradient
            grad_loc, grad_w = ours[2:]
            assert (grad_loc[:, 1, 0, :, 2] == 0).all() and (grad_w[:, 1, 0, :, 2] == 0).all()
            assert grad_loc.abs().sum() > 0 and grad_w.abs().sum() > 0  # the others do


def test_kernel_padded_values_read_zero_and_get_no_gradient(kernel):
    """MSDeformAttn zeroes the value at padded positions (masked_fill) before sampling: the
    gradient reaching the value through the kernel is then zero there, as through PyTorch."""
    value, spatial, starts, locations, weights = _inputs([(4, 6), (2, 3)], q=6, d=4, p=2)
    padding = torch.zeros(value.shape[:2], dtype=torch.bool)
    padding[0, 3:6] = padding[0, 20:] = padding[1, -1] = True
    gradient = torch.randn(2, 6, 2 * 4)
    results = []
    for backend in ('triton', 'pytorch'):
        leaf = value.clone().requires_grad_()
        masked = leaf.masked_fill(padding[..., None, None], 0.0)
        out = ms_deform_attn(masked, spatial, starts, locations, weights, backend=backend)
        results.append((out, torch.autograd.grad(out, leaf, gradient)[0]))
    (out, grad), (expected_out, expected_grad) = results
    _assert_float32_close(out, expected_out)
    _assert_float32_close(grad, expected_grad)
    assert (grad[padding] == 0).all() and grad[~padding].abs().sum() > 0
    # the padded positions do not leak: the same result with anything else stored there
    other = value.masked_fill(padding[..., None, None], 1e3)
    leaky = ms_deform_attn(other.masked_fill(padding[..., None, None], 0.0), spatial, starts, locations,
                           weights, backend='triton')
    torch.testing.assert_close(leaky, out, rtol=0, atol=0)


@pytest.mark.parametrize('dtype, rounding, own_tol', [(torch.bfloat16, 2 ** -8, 5e-2),
                                                      (torch.float16, 2 ** -11, 1e-2)])
def test_kernel_low_precision(kernel, dtype, rounding, own_tol):
    value, spatial, starts, locations, weights = _inputs([(6, 8), (3, 5), (1, 2)], q=4, d=8, p=4,
                                                         dtype=dtype)
    gradient = torch.randn(2, 4, 2 * 8, dtype=dtype)
    ours = _run('triton', value, spatial, starts, locations, weights, gradient)
    assert [t.dtype for t in ours] == [dtype] * 4
    # the same rounded inputs through the PyTorch path in float32: what the kernel computes
    exact = _run('pytorch', *(t.float() if t.is_floating_point() else t
                              for t in (value, spatial, starts, locations, weights)), gradient.float())
    for a, b in zip(ours, exact):
        scale = float(b.detach().abs().max())
        torch.testing.assert_close(a.float(), b, rtol=3 * rounding, atol=3 * rounding * scale)
    # and the PyTorch path in the low dtype itself, which samples in it
    low = _run('pytorch', value, spatial, starts, locations, weights, gradient)
    torch.testing.assert_close(ours[0].float(), low[0].float(), rtol=own_tol, atol=own_tol)


def test_kernel_bfloat16_value_with_float32_locations(kernel):
    """The mixed case autocast produces: each gradient in its input's dtype, output in value's."""
    value, spatial, starts, locations, weights = _inputs([(5, 7), (2, 3)], q=4, d=8, p=2)
    gradient = torch.randn(2, 4, 2 * 8)
    ours = _run('triton', value.bfloat16(), spatial, starts, locations, weights, gradient)
    assert [t.dtype for t in ours] == [torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    exact = _run('pytorch', value.bfloat16().float(), spatial, starts, locations, weights,
                 gradient.bfloat16().float())
    for a, b in zip(ours, exact):
        torch.testing.assert_close(a.float(), b, rtol=3 * 2 ** -8, atol=3 * 2 ** -8 * float(b.detach().abs().max()))


def test_kernel_no_queries(kernel):
    value, spatial, starts, locations, weights = _inputs([(2, 3)], q=0)
    value.requires_grad_()
    out = ms_deform_attn(value, spatial, starts, locations, weights, backend='triton')
    assert out.shape == (2, 0, 2 * 3)
    out.sum().backward()
    assert (value.grad == 0).all()


def test_kernel_refuses_float64_and_unknown_backends(kernel):
    args = _inputs([(2, 3)], dtype=torch.float64)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16; value is torch.float64"):
        ms_deform_attn(*args, backend='triton')
    with pytest.raises(ValueError, match='backend must be one of'):
        ms_deform_attn(*args, backend='cuda')
