"""zoo.layers.private_ops: where the running torch lacks one of the private operators or internals
that the CPU fast paths use, the models still run, on the public ops, and compute the same. The
float32 oneDNN linears are switched on for these tests (``onednn_float32``: off by default on
Intel CPUs), so their absence is tested on any CPU."""
import subprocess
import sys
import textwrap

import pytest
import torch

import zoo
from helpers import ROOT, spy_calls
from zoo.layers import fast_paths, private_ops


# What each simulated absence sets in zoo.layers.private_ops.
ABSENT = {
    'linear_pointwise': dict(linear_pointwise=None),
    'convolution_pointwise': dict(convolution_pointwise=None),
    'current_dispatch_mode': dict(current_dispatch_mode=None),
    'global_forward_hooks': dict(_GLOBAL_HOOKS=('_no_such_hooks', '_no_such_pre_hooks')),
    'all': dict(linear_pointwise=None, convolution_pointwise=None, current_dispatch_mode=None,
                _GLOBAL_HOOKS=('_no_such_hooks', '_no_such_pre_hooks')),
}


@pytest.fixture
def onednn_float32():
    """The float32 oneDNN linears on while the test builds and runs its models, whatever this CPU's
    default."""
    with fast_paths(onednn_float32=True):
        yield


def _models():
    """Small CeiT (LeFF's fused convolutions after fuse_for_inference, oneDNN linears) and ViT (the
    fused linear + GELU)."""
    torch.manual_seed(0)
    ceit = zoo.create_model('ceit_t', depth=1, img_size=64, num_classes=7).eval()
    for m in ceit.modules():  # batch-norm statistics away from 0 / 1, so folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3.0)
    zoo.layers.fuse_for_inference(ceit)
    vit = zoo.create_model('deit_tiny_patch16_224', depth=1, img_size=64, num_classes=7).eval()
    return dict(ceit=ceit, vit=vit)


def _run(model, x):
    """Inference in float32 and under bfloat16 autocast, and the float32 input gradient."""
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16 = model(x).float()
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x).square().sum(), x)
    return fp32, bf16, grad


def _fast_calls(fn) -> int:
    """How many private oneDNN operator calls ``fn()`` makes (an absent one, None, is not wrapped:
    it stays absent)."""
    count = 0
    for name in ('linear_pointwise', 'convolution_pointwise'):
        if getattr(private_ops, name) is not None:
            fn = (lambda inner, name: lambda: count_calls(name, inner))(fn, name)

    def count_calls(name, inner):
        nonlocal count
        count += len(spy_calls(private_ops, name, inner))
    fn()
    return count


@pytest.mark.parametrize('absent', list(ABSENT))
def test_models_run_on_public_ops_and_match_without_a_private_op(monkeypatch, absent, onednn_float32):
    models, x = _models(), torch.randn(2, 3, 64, 64)
    reference = {name: _run(model, x) for name, model in models.items()}
    if private_ops.onednn_linear_available():  # the reference did take the fast paths here
        assert _fast_calls(lambda: _run(models['ceit'], x)) > 0
        float32 = [a for a in spy_calls(private_ops, 'linear_pointwise', lambda: _run(models['vit'], x))
                   if a[0].dtype == torch.float32]
        assert float32  # the float32 linears too, which the absences below take away
    for name, value in ABSENT[absent].items():
        monkeypatch.setattr(private_ops, name, value)
    for name, model in models.items():
        calls = _fast_calls(lambda: _run(model, x))
        if absent in ('current_dispatch_mode', 'all'):  # a FLOP counter could not be told apart
            assert calls == 0, name
        fp32, bf16, grad = _run(model, x)
        ref32, ref16, ref_grad = reference[name]
        torch.testing.assert_close(fp32, ref32, rtol=1e-4, atol=1e-4 * ref32.abs().max().item())
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-4 * ref_grad.abs().max().item())
        # bfloat16: fused and separate GELU round at different points (8 bits of mantissa)
        torch.testing.assert_close(bf16, ref16, rtol=0.05, atol=0.05 * ref16.abs().max().item())


def test_queries_say_absent_when_the_handles_are_missing(monkeypatch):
    monkeypatch.setattr(private_ops, 'linear_pointwise', None)
    monkeypatch.setattr(private_ops, 'convolution_pointwise', None)
    monkeypatch.setattr(private_ops, 'current_dispatch_mode', None)
    monkeypatch.setattr(private_ops, '_GLOBAL_HOOKS', ('_no_such_hooks',))
    assert not private_ops.onednn_linear_available() and not private_ops.onednn_convolution_available()
    assert private_ops.dispatch_mode_active() and private_ops.global_forward_hooks_registered()
    from zoo.layers.config import needs_plain_ops
    from zoo.layers.linear import onednn_linear_active
    assert not onednn_linear_active() and needs_plain_ops()


def test_a_torch_without_the_mkldnn_operators_imports_and_matches(tmp_path, onednn_float32):
    """A fresh interpreter whose ``torch.ops.mkldnn`` has no operators (as in a build without
    oneDNN): the lookups at import find nothing, and CeiT computes what it computes here."""
    models, x = _models(), torch.randn(2, 3, 64, 64)
    model = models['ceit']
    with torch.no_grad():
        expected = model(x)
    torch.save(dict(state=model.state_dict(), x=x), tmp_path / 'in.pt')
    script = textwrap.dedent(f"""
        import sys
        import torch

        class NoOperators:
            def __getattr__(self, name):
                raise AttributeError(f"'_OpNamespace' 'mkldnn' object has no attribute '{{name}}'")

        torch.ops.mkldnn = NoOperators()
        sys.path.insert(0, {ROOT!r})
        import zoo
        from zoo.layers import private_ops
        assert private_ops.linear_pointwise is None and private_ops.convolution_pointwise is None
        assert not private_ops.onednn_linear_available()
        saved = torch.load({str(tmp_path / 'in.pt')!r})
        model = zoo.create_model('ceit_t', depth=1, img_size=64, num_classes=7).eval()
        model.load_state_dict(saved['state'])
        with torch.no_grad():
            torch.save(model(saved['x']), {str(tmp_path / 'out.pt')!r})
    """)
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    got = torch.load(tmp_path / 'out.pt')
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_flop_counting_sees_the_linears_where_torch_hides_its_dispatch_mode(monkeypatch, onednn_float32):
    """Without the private dispatch-mode query a FLOP counter cannot be told apart from plain
    inference: the fast paths step aside rather than hide their products from it."""
    from torch.utils.flop_counter import FlopCounterMode
    monkeypatch.setattr(private_ops, 'current_dispatch_mode', None)
    layer, x = zoo.layers.Linear(64, 32), torch.randn(8, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == 2 * 8 * 64 * 32
