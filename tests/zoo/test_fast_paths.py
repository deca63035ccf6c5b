"""zoo.layers.config: every fast-path switch (environment variable, setter, context manager, read
when a layer is built) and the explicit inference step fuse_for_inference (LeFF's batch norms
folded once, state dict unchanged, undone by train())."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import zoo
from helpers import ROOT, spy_calls
from zoo.layers import Attention, Linear, config, fast_paths, fuse_for_inference, private_ops
from zoo.layers import leff as leff_module
from zoo.layers import linear as linear_module
from zoo.layers.leff import LocallyEnhancedFeedForward

SWITCHES = ('fused_attn', 'onednn', 'fast_mha', 'onednn_float32', 'explicit_bf16_attn')


def fused_kernel_calls(fn) -> int:
    """How many times ``fn()`` calls ``F.scaled_dot_product_attention``."""
    calls, real = [], F.scaled_dot_product_attention

    def record(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    F.scaled_dot_product_attention = record
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = real
    return len(calls)


def _settings() -> dict:
    return dict(fused_attn=config.use_fused_attn(), onednn=config.use_onednn(), fast_mha=config.use_fast_mha(),
                onednn_float32=config.use_onednn_float32(), explicit_bf16_attn=config.use_explicit_bf16_attn())


def _defaults() -> dict:
    """Every switch's setting with no variable set: on, onednn_float32 as this CPU's vendor says and
    explicit_bf16_attn as its flags say."""
    return dict(dict.fromkeys(SWITCHES, True), onednn_float32=config.onednn_float32_default(),
                explicit_bf16_attn=config.explicit_bf16_attn_default())


def _run_config(script: str, **variables) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter (the switches read at import) with only ``variables`` of VITZOO_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('VITZOO_')}
    script = f'import sys\nsys.path.insert(0, {ROOT!r})\nfrom zoo.layers import config\n' + textwrap.dedent(script)
    return subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=dict(env, **variables))


def test_every_switch_is_on_by_default_and_set_from_its_environment_variable():
    script = ('print(config.use_fused_attn(), config.use_onednn(), config.use_fast_mha(), config.use_onednn_float32(), '
              'config.use_explicit_bf16_attn())')

    def run(**variables):
        return _run_config(script, **variables)
    default32 = str(config.onednn_float32_default())  # off on Intel CPUs, on elsewhere
    explicit = str(config.explicit_bf16_attn_default())  # off on CPUs with AMX, on elsewhere
    assert run().stdout.split() == ['True'] * 3 + [default32, explicit]
    off = run(VITZOO_FUSED_ATTN='0', VITZOO_ONEDNN='off', VITZOO_FAST_MHA='false', VITZOO_ONEDNN_FLOAT32='no',
              VITZOO_EXPLICIT_BF16_ATTN='0')
    assert off.stdout.split() == ['False'] * 5, off.stderr[-2000:]
    assert run(VITZOO_ONEDNN='0').stdout.split() == ['True', 'False', 'True', default32, explicit]
    assert run(VITZOO_ONEDNN_FLOAT32='1', VITZOO_EXPLICIT_BF16_ATTN='on').stdout.split() == ['True'] * 5
    assert run(VITZOO_ONEDNN_FLOAT32='off').stdout.split() == ['True'] * 3 + ['False', explicit]
    bad = run(VITZOO_FUSED_ATTN='maybe')
    assert bad.returncode != 0
    assert "VITZOO_FUSED_ATTN='maybe' is not a switch setting: set it to 1" in bad.stderr
    bad = run(VITZOO_ONEDNN_FLOAT32='auto')
    assert bad.returncode != 0
    assert "VITZOO_ONEDNN_FLOAT32='auto' is not a switch setting: set it to 1 (on) or 0 (off), or unset it " \
        "for the default (on except on Intel CPUs)" in bad.stderr
    bad = run(VITZOO_EXPLICIT_BF16_ATTN='amx')
    assert bad.returncode != 0
    assert "or unset it for the default (on except on CPUs with AMX)" in bad.stderr


def test_the_origin_of_a_cpu_dependent_setting_is_its_variable_or_the_cpus_default():
    script = ("print(config.setting_origin('onednn_float32')); print(config.setting_origin('onednn')); "
              "print(config.setting_origin('explicit_bf16_attn'))")
    vendor = config.cpu_vendor() or 'a CPU of unknown vendor'
    flags = config.cpu_flags()
    amx = 'a CPU of unknown flags' if flags is None else f'a CPU {"with" if "amx_bf16" in flags else "without"} AMX'
    assert _run_config(script).stdout.splitlines() == [f'default for {vendor}', 'default', f'default for {amx}']
    assert _run_config(script, VITZOO_ONEDNN_FLOAT32='1', VITZOO_ONEDNN='on',
                       VITZOO_EXPLICIT_BF16_ATTN='0').stdout.splitlines() == [
        'VITZOO_ONEDNN_FLOAT32=1', 'VITZOO_ONEDNN=on', 'VITZOO_EXPLICIT_BF16_ATTN=0']


@pytest.mark.parametrize('flags, default', [(frozenset({'avx512f', 'avx512_bf16'}), True),
                                            (frozenset({'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'}), False),
                                            (None, True)])
def test_explicit_bf16_attention_defaults_to_off_on_cpus_with_amx_only(monkeypatch, flags, default):
    """With AMX the CPU flash kernel beats q k^T, softmax, @ v in bfloat16; without it (AVX-512 BF16
    alone) it runs bfloat16 at float32's speed; flags that cannot be read keep the explicit path."""
    monkeypatch.setattr(config, 'cpu_flags', lambda: flags)
    monkeypatch.delenv('VITZOO_EXPLICIT_BF16_ATTN', raising=False)
    assert config.explicit_bf16_attn_default() is default
    assert config._from_environment('explicit_bf16_attn') is default
    monkeypatch.setenv('VITZOO_EXPLICIT_BF16_ATTN', '1')
    assert config._from_environment('explicit_bf16_attn') is True


@pytest.mark.parametrize('vendor, default', [('GenuineIntel', False), ('AuthenticAMD', True), (None, True)])
def test_onednn_float32_defaults_to_off_on_intel_cpus_only(monkeypatch, vendor, default):
    """MKL's float32 GEMM is as fast as oneDNN's on Intel (AVX-512), slower on AMD (AVX2); a vendor
    that cannot be read (None) keeps oneDNN on."""
    monkeypatch.setattr(config, 'cpu_vendor', lambda: vendor)
    monkeypatch.delenv('VITZOO_ONEDNN_FLOAT32', raising=False)
    assert config.onednn_float32_default() is default
    assert config._from_environment('onednn_float32') is default  # the import-time reading, redone
    monkeypatch.setenv('VITZOO_ONEDNN_FLOAT32', '1')
    assert config._from_environment('onednn_float32') is True  # the variable wins over the vendor
    monkeypatch.setenv('VITZOO_ONEDNN_FLOAT32', '0')
    assert config._from_environment('onednn_float32') is False


def test_cpu_vendor_reads_the_vendor_id_of_linuxs_cpuinfo(monkeypatch, tmp_path):
    intel, amd, arm = tmp_path / 'intel', tmp_path / 'amd', tmp_path / 'arm'
    intel.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n\n'
                     'processor\t: 1\nvendor_id\t: GenuineIntel\n')
    amd.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n')
    arm.write_text('processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n')  # no vendor_id line
    monkeypatch.setattr(config.platform, 'system', lambda: 'Linux')
    assert config.cpu_vendor(str(intel)) == 'GenuineIntel'
    assert config.cpu_vendor(str(amd)) == 'AuthenticAMD'
    assert config.cpu_vendor(str(arm)) is None
    assert config.cpu_vendor(str(tmp_path / 'missing')) is None
    monkeypatch.setattr(config.platform, 'system', lambda: 'Darwin')  # not Linux: not read at all
    assert config.cpu_vendor(str(intel)) is None


def test_cpu_flags_reads_the_first_flags_line_of_linuxs_cpuinfo(monkeypatch, tmp_path):
    sapphire, arm = tmp_path / 'sapphire', tmp_path / 'arm'
    sapphire.write_text('processor\t: 0\nvendor_id\t: GenuineIntel\n'
                        'flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n\n'
                        'processor\t: 1\nflags\t\t: fpu\n')
    arm.write_text('processor\t: 0\nFeatures\t: fp asimd\n')  # no flags line
    monkeypatch.setattr(config.platform, 'system', lambda: 'Linux')
    assert config.cpu_flags(str(sapphire)) == frozenset({'fpu', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile'})
    assert config.cpu_flags(str(arm)) is None
    assert config.cpu_flags(str(tmp_path / 'missing')) is None
    monkeypatch.setattr(config.platform, 'system', lambda: 'Darwin')
    assert config.cpu_flags(str(sapphire)) is None


def test_setters_return_the_previous_setting_and_the_context_manager_restores_every_switch():
    before = _settings()
    assert before == _defaults()  # nothing in the tests leaves one changed
    with fast_paths(False):
        assert _settings() == dict.fromkeys(SWITCHES, False)
        with fast_paths(onednn=True):
            assert _settings() == dict(fused_attn=False, onednn=True, fast_mha=False, onednn_float32=False,
                                       explicit_bf16_attn=False)
        with fast_paths(onednn_float32=True, explicit_bf16_attn=True):
            assert _settings() == dict(fused_attn=False, onednn=False, fast_mha=False, onednn_float32=True,
                                       explicit_bf16_attn=True)
        assert not config.use_onednn()
    with fast_paths(True):
        assert _settings() == dict.fromkeys(SWITCHES, True)
    assert _settings() == before
    with pytest.raises(KeyError), fast_paths(fused_attn=False):
        assert not config.use_fused_attn()
        raise KeyError('an error inside the block')
    assert _settings() == before  # restored on the way out of an error too
    assert config.set_onednn(False) is True
    try:
        assert config.set_onednn(True) is False and config.use_onednn()
    finally:
        config.set_onednn(True)
    default32 = config.use_onednn_float32()
    assert config.set_onednn_float32(not default32) is default32
    try:
        assert config.set_onednn_float32(default32) is (not default32) and config.use_onednn_float32() is default32
    finally:
        config.set_onednn_float32(default32)
    explicit = config.use_explicit_bf16_attn()
    assert config.set_explicit_bf16_attn(not explicit) is explicit
    try:
        assert config.use_explicit_bf16_attn() is (not explicit)
    finally:
        config.set_explicit_bf16_attn(explicit)
    # the name tools/benchmark.py --no-onednn uses
    assert linear_module.set_onednn_linear is config.set_onednn


def test_attention_reads_the_switch_when_built_and_its_argument_overrides_it():
    with fast_paths(fused_attn=False):
        off, forced = Attention(16, num_heads=2), Attention(16, num_heads=2, fused=True)
        model = zoo.create_model('deit_tiny_patch16_224', depth=2, img_size=32, patch_size=8).eval()
    on = Attention(16, num_heads=2)
    assert (off.fused, forced.fused, on.fused) == (False, True, True)
    assert all(not m.fused for m in model.modules() if isinstance(m, Attention))
    fused = zoo.create_model('deit_tiny_patch16_224', depth=2, img_size=32, patch_size=8).eval()
    fused.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    # Built with the switch off, the model stays off after the block: no fused kernel runs.
    assert fused_kernel_calls(lambda: model(x)) == 0
    assert fused_kernel_calls(lambda: fused(x)) == 2
    # fused and explicit: the same outputs and input gradients
    out, ref = fused(x), model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (g_fused,) = torch.autograd.grad(out.square().sum(), x)
    (g_explicit,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(g_fused, g_explicit, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not private_ops.onednn_linear_available(), reason='no oneDNN linear in this torch build')
def test_onednn_is_read_when_a_linear_is_built():
    with fast_paths(onednn=False, onednn_float32=True):
        off = Linear(8, 6)
        model = zoo.create_model('deit_tiny_patch16_224', depth=1, img_size=32, patch_size=8)
    with fast_paths(onednn_float32=True):  # the float32 path on, whatever this CPU's default
        on = Linear(8, 6)
    with fast_paths(onednn_float32=False):
        off32 = Linear(8, 6)
    on.load_state_dict(off.state_dict())
    x = torch.randn(3, 8)
    assert not off.onednn and on.onednn
    assert on.onednn_float32 and off32.onednn and not off32.onednn_float32
    with fast_paths(onednn_float32=True):  # built with it off, the layer stays off
        assert not spy_calls(linear_module, '_product', lambda: off32(x))
    assert not spy_calls(linear_module, '_product', lambda: off(x))
    assert spy_calls(linear_module, '_product', lambda: on(x))
    torch.testing.assert_close(on(x), off(x), rtol=1e-5, atol=1e-5)
    assert all(not m.onednn for m in model.modules() if isinstance(m, Linear))
    images = torch.randn(1, 3, 32, 32)
    assert not spy_calls(private_ops, 'linear_pointwise', lambda: model(images))


def _leff(**kw):
    torch.manual_seed(0)
    leff = LocallyEnhancedFeedForward(16, 64, **kw).eval()
    for bn in (leff.bn1, leff.bn2, leff.bn3):  # statistics and affine terms away from 0 / 1
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.normal_(1, 0.5)
        bn.bias.data.normal_(0, 0.5)
    return leff


@pytest.mark.parametrize('onednn', [True, False])
@torch.no_grad()
def test_fuse_folds_once_and_computes_what_the_eight_steps_compute(onednn):
    with fast_paths(onednn=onednn):
        leff = _leff()
    x, grid = torch.randn(2, 1 + 5 * 4, 16), (5, 4)
    valid = torch.ones(2, 1 + 5 * 4, dtype=torch.bool)
    valid[1, 1 + 12:] = False  # the second image is padded: zeros at its padding, as unfused
    ref, ref_masked = leff(x, grid), leff(x, grid, valid)
    state = {k: v.clone() for k, v in leff.state_dict().items()}
    folds = spy_calls(leff_module, 'fold_batch_norm', leff.fuse)
    assert len(folds) == 3
    # folded once, in fuse(): two forwards fold nothing again
    assert not spy_calls(leff_module, 'fold_batch_norm', lambda: (leff(x, grid), leff(x, grid)))
    onednn_calls = spy_calls(private_ops, 'convolution_pointwise', lambda: leff(x, grid))
    assert len(onednn_calls) == (3 if onednn and private_ops.onednn_convolution_available() else 0)
    torch.testing.assert_close(leff(x, grid), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    torch.testing.assert_close(leff(x, grid, valid), ref_masked, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # nothing in the state dict changed: keys, values, parameters
    assert list(leff.state_dict()) == list(state)
    assert all(torch.equal(leff.state_dict()[k], v) for k, v in state.items())


def test_fuse_is_for_eval_mode_and_train_undoes_it():
    leff = _leff().train()
    with pytest.raises(RuntimeError, match=r'call \.eval\(\) first'):
        leff.fuse()
    with pytest.raises(RuntimeError, match=r'call model.eval\(\) first'):
        fuse_for_inference(zoo.create_model('ceit_t', depth=1, img_size=32))
    leff.eval().fuse()
    x, grid = torch.randn(2, 1 + 4 * 4, 16, requires_grad=True), (4, 4)
    leff.train()
    assert not leff.norms_folded and leff.folded_weights is None
    twin = _leff().train()
    out, ref = leff(x, grid), twin(x, grid)  # batch statistics again, as a model never fused
    torch.testing.assert_close(out, ref)
    out.square().sum().backward()
    assert leff.bn2.weight.grad is not None and leff.conv1.weight.grad is not None
    assert not torch.equal(leff.bn1.running_mean, _leff().bn1.running_mean)  # statistics moved


def test_a_fused_leff_with_autograd_takes_the_eight_steps_with_their_gradients():
    fused, plain = _leff(), _leff()
    fused.fuse()
    x = torch.randn(2, 1 + 4 * 4, 16)
    grads = []
    for leff in (fused, plain):
        xx = x.clone().requires_grad_()
        leff(xx, (4, 4)).square().sum().backward()
        grads.append([xx.grad, leff.conv2.weight.grad, leff.bn3.bias.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@torch.no_grad()
def test_loading_or_moving_a_fused_leff_folds_the_new_weights():
    leff, other = _leff(), _leff()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, grid = torch.randn(2, 4 * 4, 16), (4, 4)
    expected = other(x, grid)
    leff.fuse()
    leff.load_state_dict(other.state_dict())
    torch.testing.assert_close(leff(x, grid), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert leff.norms_folded and leff.folded_weights is not None
    leff.double()
    assert leff.folded_weights is None  # dropped with the float32 weights
    out = leff(x.double(), grid)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected.double(), rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@torch.no_grad()
def test_fuse_for_inference_fuses_every_leff_of_a_model_and_keeps_its_state_dict():
    torch.manual_seed(0)
    model = zoo.create_model('ceit_t', depth=2, img_size=64, num_classes=5).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.3, 3.0)
    x = torch.randn(2, 3, 64, 64)
    ref, keys = model.forward_feature_maps(x), list(model.state_dict())
    assert fuse_for_inference(model) is model
    leffs = [m for m in model.modules() if isinstance(m, LocallyEnhancedFeedForward)]
    assert len(leffs) == 2 and all(m.norms_folded for m in leffs)
    assert list(model.state_dict()) == keys
    out = model.forward_feature_maps(x)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    model.train()
    assert not any(m.norms_folded for m in leffs)
