"""The Triton deformable-attention kernel against the pure-PyTorch path, on this CPU through
Triton's interpreter (TRITON_INTERPRET=1), and the backend choice of ``ms_deform_attn``.

Triton decides whether a function is interpreted when it is defined (``triton.jit`` reads
TRITON_INTERPRET then), and that includes triton's own library functions (``tl.sum``), defined
when triton is first imported: so the variable must be set before anything imports triton, and
a test process may have imported it already (torch.compile does). The kernel checks
(tests/detection/msda_kernel_checks.py, which a plain pytest run does not collect) therefore run
in a child pytest process started with TRITON_INTERPRET=1, by ``test_interpreted_kernel_checks``. The checks that need triton uninterpreted, or absent, run in fresh processes too.

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
from helpers import ROOT
from msda_kernel_checks import _inputs

# the module, not the function: detection/__init__ re-exports ms_deform_attn under the module's name
msda = importlib.import_module('detection.ms_deform_attn')


def test_interpreted_kernel_checks():
    """Runs tests/detection/msda_kernel_checks.py in a child pytest process whose environment has
    TRITON_INTERPRET=1 from its start; every check must pass (none skipped)."""
    pytest.importorskip('triton', reason='the Triton kernel needs triton (torch CUDA wheels ship it)')
    done = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
                           os.path.join(os.path.dirname(os.path.abspath(__file__)), 'msda_kernel_checks.py')], cwd=ROOT,
                          env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True, text=True,
                          timeout=900)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ''
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert ' passed' in summary and 'skipped' not in summary and 'failed' not in summary, summary


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
