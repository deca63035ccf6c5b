"""The Triton deformable-attention kernel against the pure-PyTorch path, on this CPU through
Triton's interpreter (TRITON_INTERPRET=1), and the backend choice of ``ms_deform_attn``.

Triton decides whether a function is interpreted when it is defined (``triton.jit`` reads
TRITON_INTERPRET then), and that includes triton's own library functions (``tl.sum``), defined
when triton is first imported: so the variable must be set before anything imports triton, and
a test process may have imported it already (torch.compile does). The kernel tests (named
``test_kernel_*``) therefore run in a child pytest process started with TRITON_INTERPRET=1, by
``test_interpreted_kernel_checks``; in this process they are skipped, unless it
was itself started with the variable (``TRITON_INTERPRET=1 pytest <this file>``), when they run
directly. The checks that need triton uninterpreted, or absent, run in fresh processes too.

What the interpreter runs is the kernels' Python, one program after another, on numpy arrays:
the indexing, masking, bilinear weights, atomic adds and reductions are all checked, in the
dtypes the kernel loads and stores (bfloat16 included: the interpreter stores it as uint16 and
converts); what it cannot check is GPU code generation and timing (tools/dev/gpu_check.sh runs
the kernel on a GPU). Shapes are small because the interpreter is slow (one Python pass per
program, N * Lq * M programs).

Tolerances. float32: rtol=1e-5 on every element, with atol 1e-6 of the tensor's largest
magnitude: the kernel and grid_sample sum the same products in different orders, so each
element differs by a few float32 roundings of its terms (about 1e-7 of them), which is no
longer small relative to an element that cancels to near zero. A wrong corner, weight or
offset moves elements by a sizeable fraction of that largest magnitude. float16 / bfloat16:
the kernel samples and sums in float32 and rounds once to the dtype, so against the PyTorch
path run in float32 on the same (rounded) inputs it is within the dtype's rounding
(float16 2**-11, bfloat16 2**-8, relative; 3 roundings allowed); against the PyTorch path in
the low dtype itself, which also samples in it, within the existing low-precision test's
tolerance (bfloat16 5e-2, float16 1e-2, as tests/detection/test_deformable_detr.py).
"""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from detection.ms_deform_attn import ms_deform_attn
from helpers import ROOT, spy_calls

# the module, not the function: detection/__init__ re-exports ms_deform_attn under the module's name
msda = importlib.import_module('detection.ms_deform_attn')

INTERPRETED_PROCESS = os.environ.get('TRITON_INTERPRET') == '1'


@pytest.fixture(scope='module')
def kernel():
    """detection.ms_deform_attn_triton, its kernels interpreted (in a process started so)."""
    if not INTERPRETED_PROCESS:
        pytest.skip('run by test_interpreted_kernel_checks, in a process started '
                    'with TRITON_INTERPRET=1')
    pytest.importorskip('triton', reason='the Triton kernel needs triton (torch CUDA wheels ship it)')
    import detection.ms_deform_attn_triton as module
    assert module.INTERPRETED
    return module


def test_interpreted_kernel_checks():
    """Runs this file's ``test_kernel_*`` tests in a child pytest process whose environment has
    TRITON_INTERPRET=1 from its start; all must pass (none skipped)."""
    if INTERPRETED_PROCESS:
        pytest.skip('this process is interpreted: the kernel tests ran directly')
    pytest.importorskip('triton', reason='the Triton kernel needs triton (torch CUDA wheels ship it)')
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           os.path.abspath(__file__), '-k', 'test_kernel_'], cwd=ROOT,
                          env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True, text=True,
                          timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert ' passed' in summary and 'skipped' not in summary and 'deselected' in summary, summary


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


def test_auto_on_cpu_is_the_pytorch_path(monkeypatch):
    """'auto' on CPU tensors never consults triton, and gives the PyTorch path's result."""
    def refuse():
        raise AssertionError("'auto' on a CPU must not load the Triton kernel")
    monkeypatch.setattr(msda, '_triton_module', refuse)
    args = _inputs([(3, 4), (2, 2)])
    auto = ms_deform_attn(*args)
    torch.testing.assert_close(auto, ms_deform_attn(*args, backend='pytorch'), rtol=0, atol=0)
    assert not msda._use_triton('auto', args[0], args[3], args[4])


def _fresh_python(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


CHECK = textwrap.dedent('''
    import torch
    from detection.ms_deform_attn import ms_deform_attn
    spatial, starts = torch.tensor([[2, 3]]), torch.tensor([0])
    args = (torch.randn(1, 6, 2, 4), spatial, starts, torch.rand(1, 3, 2, 1, 2, 2), torch.rand(1, 3, 2, 1, 2))
    assert ms_deform_attn(*args).shape == (1, 3, 8)  # auto: the PyTorch path
    try:
        ms_deform_attn(*args, backend='triton')
    except RuntimeError as e:
        print('ERROR', e)
    else:
        print('NO ERROR')
''')


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error():
    pytest.importorskip('triton')
    done = _fresh_python(CHECK)
    assert done.returncode == 0, done.stderr
    assert "ERROR backend='triton' got tensors on cpu" in done.stdout
    assert 'TRITON_INTERPRET=1' in done.stdout and "backend='pytorch'" in done.stdout


def test_the_project_runs_without_triton():
    """triton made unimportable: the package imports, 'auto' runs, 'triton' says what is missing."""
    done = _fresh_python("import sys\nsys.modules['triton'] = None  # import triton now fails\n"
                         + CHECK + "import detection, detection.deformable_detr\n")
    assert done.returncode == 0, done.stderr
    assert "ERROR backend='triton' needs the triton package" in done.stdout


def test_gpu_check_dry_run_lists_the_kernel_benchmarks(tmp_path):
    """tools/dev/gpu_check.sh DRY_RUN=1 on this CPU: every step listed, within its budget, naming
    scripts that exist; the deformable-attention and Hugging Face steps among them; nothing written."""
    out = tmp_path / 'gpu_check'
    done = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'dev', 'gpu_check.sh'), str(out)],
                          env={**os.environ, 'DRY_RUN': '1'}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    steps = dict(line.split(': ', 1) for line in done.stdout.strip().splitlines())
    for name in ('smoke', 'msda-fp32', 'msda-bf16', 'memory-b1', 'peer-fp32', 'peer-bf16'):
        assert name in steps, steps.keys()
    assert '--peer hf' in steps['peer-fp32'] and '--batch-size 2,4,8' in steps['peer-fp32']
    assert 'benchmark_deform_attn.py --device cuda --modes fwd+bwd' in steps['msda-fp32']
    for command in steps.values():
        words = command.split()
        assert words[0] == 'timeout' and int(words[1]) <= 480
        script = next((w for w in words if w.endswith('.py')), None)
        assert script is None or os.path.isfile(os.path.join(ROOT, script)), command
    assert not out.exists()
