"""zoo.layers.Linear: the oneDNN float32 path equals F.linear (forward and every gradient), and
the plain path is taken wherever oneDNN must not run (autocast, bfloat16, FLOP counting,
torch.compile, export)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import zoo
from zoo.layers import Linear, set_onednn_linear
from zoo.layers import linear as linear_module  # the module (the package does not export the function)
from zoo.layers.linear import linear

needs_onednn = pytest.mark.skipif(not linear_module._AVAILABLE,
                                  reason='this torch build has no oneDNN linear (the plain path is the only one)')


def calls_onednn(fn) -> bool:
    """Whether ``fn()`` runs the oneDNN product (spied on at the module's one call site)."""
    seen, product = [], linear_module._product
    linear_module._product = lambda *a: seen.append(1) or product(*a)
    try:
        fn()
    finally:
        linear_module._product = product
    return bool(seen)


@needs_onednn
@pytest.mark.parametrize('shape', [(7, 12), (2, 5, 12), (2, 3, 4, 12)])
@pytest.mark.parametrize('bias', [True, False])
def test_equals_f_linear_forward_and_gradients(shape, bias):
    torch.manual_seed(0)
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
    layer = Linear(8, 6)
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
    layer, x = Linear(8, 6), torch.randn(3, 8)
    assert calls_onednn(lambda: layer(x))
    with torch.autocast('cpu', dtype=torch.bfloat16):           # autocast: bfloat16 GEMM
        assert not calls_onednn(lambda: layer(x))
        assert layer(x).dtype == torch.bfloat16
    assert not calls_onednn(lambda: layer.to(torch.bfloat16)(x.to(torch.bfloat16)))
    layer.float()
    with FlopCounterMode(display=False) as counter:              # FLOP counters see aten.linear
        assert not calls_onednn(lambda: layer(x))
    assert counter.get_total_flops() == 2 * 3 * 8 * 6
    previous = set_onednn_linear(False)
    try:
        assert not calls_onednn(lambda: layer(x))
    finally:
        set_onednn_linear(previous)
    assert not calls_onednn(lambda: torch.compile(linear, backend='eager')(x, layer.weight, layer.bias))


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
