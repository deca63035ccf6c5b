"""zoo.layers.Linear: the oneDNN float32 path equals F.linear (forward and every gradient), and
the plain path is taken wherever oneDNN must not run (autocast, bfloat16, FLOP counting,
torch.compile, export) or is switched off (zoo.layers.config, read when the layer is built).
The float32 path's tests build their layers with ``onednn_float32`` on, so they test it on any CPU
(its default is off on Intel)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import zoo
from helpers import spy_calls
from zoo.layers import Linear, fast_paths, fuse_for_inference
from zoo.layers import linear as linear_module  # the module (the package does not export the function)
from zoo.layers import private_ops
from zoo.layers.linear import linear

needs_onednn = pytest.mark.skipif(not private_ops.onednn_linear_available(),
                                  reason='this torch build has no oneDNN linear (the plain path is the only one)')


def calls_onednn(fn) -> bool:
    """Whether ``fn()`` runs the float32 oneDNN product (its one call site)."""
    return bool(spy_calls(linear_module, '_product', fn))


@needs_onednn
@pytest.mark.parametrize('shape', [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize('bias', [True, False])
def test_equals_f_linear_forward_and_gradients(shape, bias):
    torch.manual_seed(0)
    with fast_paths(onednn_float32=True):
        layer = Linear(12, 9, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    y = layer(x)
    assert calls_onednn(lambda: layer(x))
    y_ref = F.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    params = [x, layer.weight] + ([layer.bias] if bias else [])
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(y_ref, params, g)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_strided_input_frozen_weight_and_in_place_use_of_the_output():
    torch.manual_seed(0)
    with fast_paths(onednn_float32=True):
        layer = Linear(8, 6)
    assert calls_onednn(lambda: layer(torch.randn(2, 8)))
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 8, 5, requires_grad=True)
    xt = x.transpose(1, 2)                       # (4, 5, 8), not contiguous
    y = layer(xt)
    y.mul_(2)                                    # DETR's layers change outputs in place
    y.sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (F.linear(x_ref.transpose(1, 2), layer.weight, layer.bias) * 2).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None
    assert layer.bias.grad is not None


@needs_onednn
def test_plain_path_where_onednn_must_not_run():
    with fast_paths(onednn_float32=True):
        layer = Linear(8, 6)
    x = torch.randn(3, 8)
    assert calls_onednn(lambda: layer(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):           # autocast: bfloat16 GEMM
        assert not calls_onednn(lambda: layer(x))
        assert layer(x).dtype == torch.bfloat16
    assert not calls_onednn(lambda: layer.to(torch.bfloat16)(x.to(torch.bfloat16)))
    layer.float()
    with FlopCounterMode(display=False) as counter:              # FLOP counters see aten.linear
        assert not calls_onednn(lambda: layer(x))
    assert counter.get_total_flops() == 2 * 3 * 8 * 6
    with fast_paths(onednn=False):  # the switch is read when a layer is built
        off = Linear(8, 6)
        assert not calls_onednn(lambda: linear(x, layer.weight, layer.bias))  # functional: read per call
    assert not calls_onednn(lambda: off(x)) and calls_onednn(lambda: layer(x))
    assert not calls_onednn(lambda: torch.compile(linear, backend='eager')(x, layer.weight, layer.bias))


@needs_onednn
def test_onednn_float32_off_sends_float32_to_f_linear_and_keeps_bfloat16_inference_on_onednn():
    with fast_paths(onednn_float32=False):
        layer, cast = Linear(8, 6), Linear(8, 6).to(torch.bfloat16)
    x = torch.randn(3, 8, requires_grad=True)
    assert layer.onednn and not layer.onednn_float32
    assert not spy_calls(private_ops, 'linear_pointwise', lambda: layer(x))
    f_linear = spy_calls(F, 'linear', lambda: layer(x))
    assert len(f_linear) == 1 and f_linear[0][0] is x
    with torch.no_grad():
        assert not spy_calls(private_ops, 'linear_pointwise', lambda: layer(x))  # inference too
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert calls_bfloat16_onednn(lambda: layer(x)) == ['none']
    with torch.inference_mode():
        assert calls_bfloat16_onednn(lambda: cast(x.detach().to(torch.bfloat16))) == ['none']
    # the functional form: its own argument, or the switch read at the call
    assert not calls_onednn(lambda: linear(x, layer.weight, layer.bias, True, False))
    assert calls_onednn(lambda: linear(x, layer.weight, layer.bias, True, True))
    with fast_paths(onednn_float32=False):
        assert not calls_onednn(lambda: linear(x, layer.weight, layer.bias))
    with fast_paths(onednn=False, onednn_float32=True):  # onednn off turns every path off
        off = Linear(8, 6)
        assert not calls_onednn(lambda: linear(x, layer.weight, layer.bias))
    assert not calls_onednn(lambda: off(x))


def test_state_dict_is_nn_linears():
    ours, theirs = Linear(4, 3), torch.nn.Linear(4, 3)
    assert isinstance(ours, torch.nn.Linear)
    ours.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(ours(torch.ones(2, 4)), theirs(torch.ones(2, 4)))


@needs_onednn
def test_every_family_uses_it():
    """No family keeps a plain nn.Linear: each Linear of each family's model is the zoo's."""
    for name in ['vit_small_patch16_224', 'deit_small_distilled_patch16_224', 'deepvit_s', 'cait_xxs24_224',
                 'cpvt_s', 'cvt_13', 'ceit_s', 't2t_vit_14']:
        with torch.device('meta'):
            model = zoo.create_model(name)
        plain = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
        assert not plain, f'{name}: plain nn.Linear at {plain[:3]}'


def calls_bfloat16_onednn(fn) -> list:
    """The post-ops of the bfloat16 oneDNN products ``fn()`` runs."""
    return [args[3] for args in spy_calls(private_ops, 'linear_pointwise', fn) if args[0].dtype == torch.bfloat16]


@needs_onednn
@pytest.mark.parametrize('bias', [True, False])
def test_bfloat16_inference_runs_on_onednn_and_equals_f_linear(bias):
    """Autocast to bfloat16 or bfloat16 tensors, autograd off: one oneDNN product, equal to
    F.linear in bfloat16 up to the rounding of the last bit (both accumulate in float32)."""
    torch.manual_seed(0)
    layer, x = Linear(48, 40, bias=bias), torch.randn(2, 5, 48)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = F.linear(x, layer.weight, layer.bias)
        with torch.no_grad():
            assert calls_bfloat16_onednn(lambda: layer(x)) == ['none']
            out = layer(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 5, 40)
    torch.testing.assert_close(out, ref.detach(), rtol=8e-3, atol=8e-3)
    cast, x16 = Linear(48, 40, bias=bias).to(torch.bfloat16), x.to(torch.bfloat16)
    cast.load_state_dict(layer.state_dict())
    with torch.inference_mode():
        assert calls_bfloat16_onednn(lambda: cast(x16)) == ['none']
        torch.testing.assert_close(cast(x16), F.linear(x16, cast.weight, cast.bias), rtol=8e-3, atol=8e-3)
    # Autograd on, float32, FLOP counting: not this path.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert calls_bfloat16_onednn(lambda: layer(x)) == []
    with torch.no_grad():
        assert calls_bfloat16_onednn(lambda: layer(x)) == []
        with FlopCounterMode(display=False) as counter, torch.autocast('cpu', dtype=torch.bfloat16):
            assert calls_bfloat16_onednn(lambda: layer(x)) == []
    assert counter.get_total_flops() == 2 * 10 * 48 * 40


@needs_onednn
def test_linear_gelu_fuses_the_activation_in_bfloat16_inference_only():
    from zoo.layers.linear import linear_gelu
    torch.manual_seed(0)
    x, w, b = torch.randn(6, 32), torch.randn(64, 32) / 6, torch.randn(64)
    exact = F.gelu(F.linear(x, w, b))
    with fast_paths(onednn_float32=True):  # float32: the oneDNN linear, then F.gelu
        assert calls_onednn(lambda: linear_gelu(x, w, b))
        torch.testing.assert_close(linear_gelu(x, w, b), exact)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert calls_bfloat16_onednn(lambda: linear_gelu(x, w, b)) == ['gelu']
        fused = linear_gelu(x, w, b)
    assert fused.dtype == torch.bfloat16
    # bfloat16 keeps 8 significant bits: operands and output rounded, |d| <= 1% of the scale.
    assert (fused.float() - exact).abs().max() <= 0.01 * exact.abs().max()


@needs_onednn
def test_mlp_fuses_fc1_and_gelu_unless_a_hook_watches_them():
    from zoo.layers import Mlp
    torch.manual_seed(0)
    mlp, x = Mlp(32, 64).eval(), torch.randn(2, 7, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert calls_bfloat16_onednn(lambda: mlp(x)) == ['gelu', 'none']
        fused = mlp(x)
        seen = []
        handle = mlp.act.register_forward_hook(lambda m, a, out: seen.append(out.shape))
        try:
            assert calls_bfloat16_onednn(lambda: mlp(x)) == ['none', 'none']  # fc1, then the hooked GELU
            hooked = mlp(x)
        finally:
            handle.remove()
    assert seen and seen[0] == (2, 7, 64)
    with torch.no_grad():
        ref = mlp(x)
    for out in (fused, hooked):
        assert (out.float() - ref).abs().max() <= 0.02 * ref.abs().max()


def _bf16_inference(fn):
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        return fn()


@needs_onednn
@pytest.mark.parametrize('bias', [True, False])
def test_fuse_keeps_one_bfloat16_copy_with_autocasts_products_bit_for_bit(bias):
    """Linear.fuse (fuse_for_inference): bfloat16 inference reads a kept bfloat16 copy instead of
    autocast's cast at every call: the same outputs bit for bit; the copy is made once, remade when a
    parameter changes in place or is loaded, dropped when moved or trained; float32 and the state
    dict are unchanged."""
    torch.manual_seed(0)
    fused, plain = Linear(32, 48, bias=bias).eval(), Linear(32, 48, bias=bias).eval()
    plain.load_state_dict(fused.state_dict())
    keys = list(fused.state_dict())
    fused.fuse()
    x = torch.randn(3, 5, 32)
    assert fused.bfloat16_copy is None  # made at the first bfloat16 call, not before
    assert torch.equal(_bf16_inference(lambda: fused(x)), _bf16_inference(lambda: plain(x)))
    copy = fused.bfloat16_copy[1]
    assert copy.dtype == torch.bfloat16 and (fused.bfloat16_copy[2] is None) is (not bias)
    _bf16_inference(lambda: fused(x))
    assert fused.bfloat16_copy[1] is copy  # reused while the weight is unchanged
    with torch.no_grad():  # changed in place (an optimizer step, EMA): the version counter moves
        for layer in (fused, plain):
            layer.weight.mul_(-2)
            if bias:
                layer.bias.add_(1)
    assert torch.equal(_bf16_inference(lambda: fused(x)), _bf16_inference(lambda: plain(x)))
    assert fused.bfloat16_copy[1] is not copy
    other = Linear(32, 48, bias=bias).state_dict()
    fused.load_state_dict(other)
    plain.load_state_dict(other)
    assert torch.equal(_bf16_inference(lambda: fused(x)), _bf16_inference(lambda: plain(x)))
    # float32 inference and autograd never read the copy
    with torch.inference_mode():
        assert torch.equal(fused(x), plain(x))
    fused.to(torch.float32)  # a move or cast drops the copy
    assert fused.bfloat16_copy is None
    assert list(fused.state_dict()) == keys and 'bfloat16_copy' not in str(fused.state_dict().keys())
    fused.train()
    assert not fused.keeps_bfloat16 and fused.bfloat16_copy is None
    _bf16_inference(lambda: fused(x))
    assert fused.bfloat16_copy is None  # trained: not kept until fused again
    with pytest.raises(RuntimeError, match=r'call \.eval\(\) first'):
        fused.fuse()


@needs_onednn
@pytest.mark.parametrize('name, kw', [('deit_tiny_patch16_224', dict(depth=2, img_size=32, patch_size=8)),
                                      ('cvt_13', dict(img_size=64))])
def test_fuse_for_inference_gives_a_model_autocasts_bfloat16_outputs_bit_for_bit(name, kw):
    """Every path that reads a Linear's weight in bfloat16 inference (Linear, the MLP's fused linear +
    GELU, CvT's q / k / v slices of one qkv weight) reads the kept copy, and the logits equal those of
    the same model not fused, bit for bit."""
    torch.manual_seed(0)
    model = zoo.create_model(name, **kw).eval()
    plain = zoo.create_model(name, **kw).eval()
    plain.load_state_dict(model.state_dict())
    fuse_for_inference(model)
    x = torch.randn(2, 3, kw['img_size'], kw['img_size'])
    assert torch.equal(_bf16_inference(lambda: model(x)), _bf16_inference(lambda: plain(x)))
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.bfloat16_copy is not None for m in linears)  # every one read its copy


@needs_onednn
def test_parameters_made_in_inference_mode_keep_no_copy():
    """Inference tensors carry no version counter, so a change in place could not be seen: a Linear
    built under torch.inference_mode casts at every call, as without fuse()."""
    with torch.inference_mode():
        layer = Linear(16, 8).eval()
    layer.fuse()
    x = torch.randn(4, 16)
    out = _bf16_inference(lambda: layer(x))
    assert layer.bfloat16_copy is None and out.dtype == torch.bfloat16
    with torch.inference_mode():
        layer.weight.mul_(2)  # in place, unseen by any version counter
    # x (2W)^T + b = 2 (x W^T + b) - b: the doubled weight is read, not a stale copy
    torch.testing.assert_close(_bf16_inference(lambda: layer(x)).float(), 2 * out.float() - layer.bias,
                               rtol=2e-2, atol=2e-2)
