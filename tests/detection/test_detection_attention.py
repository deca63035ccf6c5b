"""detection.attention: DETR's nn.MultiheadAttention with a faster CPU forward (oneDNN
projections, a cheaper dropout mask) equals the stock module wherever no dropout is drawn, and
its dropout is the stock one's distribution. Layers are built with the float32 oneDNN projections
on (``onednn_float32``, off by default on Intel CPUs), so that path is tested on any CPU."""
import pytest
import torch
from torch import nn

from detection import attention as attention_module
from detection.attention import MultiheadAttention, attention, dropout_keep_mask
from helpers import spy_calls
from zoo.layers import fast_paths, private_ops


def _pair(dropout=0.0):
    torch.manual_seed(0)
    with fast_paths(onednn_float32=True):
        ours = MultiheadAttention(64, 8, dropout=dropout, batch_first=True)
    stock = nn.MultiheadAttention(64, 8, dropout=dropout, batch_first=True)
    stock.load_state_dict(ours.state_dict())  # same keys: checkpoints and converters unchanged
    return ours, stock


def _inputs():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 10, 64, generator=g), torch.randn(2, 30, 64, generator=g)
    padding = torch.zeros(2, 30, dtype=torch.bool)
    padding[1, 22:] = True  # the second image is padded
    blocked = torch.zeros(10, 30, dtype=torch.bool)
    blocked[:4, 15:] = True  # denoising-style attention mask
    return q, k, padding, blocked


@pytest.fixture
def fast_path_for_small_maps(monkeypatch):
    """The faster forward for the tests' small maps (by default only maps of 1M+ elements)."""
    monkeypatch.setattr(attention_module, 'FAST_PATH_MIN_MAP', 0)


@pytest.mark.parametrize('masks', ['none', 'padding', 'padding+attn_mask'])
def test_equals_nn_multihead_attention_forward_and_gradients(masks, fast_path_for_small_maps):
    ours, stock = _pair()
    q, k, padding, blocked = _inputs()
    kwargs = dict(key_padding_mask=padding if masks != 'none' else None,
                  attn_mask=blocked if masks == 'padding+attn_mask' else None, need_weights=False)
    outs, grads = [], []
    for m in (ours, stock):
        m.train()
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        onednn = spy_calls(private_ops, 'linear_pointwise', lambda: outs.append(m(qq, kk, kk, **kwargs)[0]))
        if m is ours:  # the four projections on oneDNN, where this torch has it
            assert len(onednn) == (4 if private_ops.onednn_linear_available() else 0)
        out = outs.pop()
        out.square().sum().backward()
        outs.append(out)
        grads.append([qq.grad, kk.grad, m.in_proj_weight.grad, m.out_proj.weight.grad])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_need_weights_takes_the_stock_path_for_the_analysis_hooks(fast_path_for_small_maps):
    ours, stock = _pair()
    q, k, padding, _ = _inputs()
    ours.eval(), stock.eval()
    out, weights = ours(q, k, k, key_padding_mask=padding, need_weights=True, average_attn_weights=False)
    ref_out, ref_weights = stock(q, k, k, key_padding_mask=padding, need_weights=True, average_attn_weights=False)
    assert weights.shape == (2, 8, 10, 30)
    torch.testing.assert_close(weights, ref_weights)
    torch.testing.assert_close(out, ref_out)


def test_dropout_keep_mask_has_the_asked_probability_and_unbiased_scale():
    torch.manual_seed(0)
    n = 1 << 22
    for p in (0.1, 0.5):
        keep, scale = dropout_keep_mask((n,), p)
        dropped = round(p * 65536)
        assert scale == pytest.approx(65536 / (65536 - dropped))
        share = keep.float().mean().item()
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(share - (1 - p)) < 5 * sigma  # within 0.0008 at p=0.5
        # Each of the four 16-bit words of a draw is its own sample: every lane keeps 1 - p.
        lanes = keep.view(-1, 4).float().mean(0)
        assert (lanes - (1 - p)).abs().max() < 5 * 2 * sigma
        # Neighbouring words are independent: both kept as often as (1 - p)^2.
        both = (keep[0::2] & keep[1::2]).float().mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * 2 * sigma
    with pytest.raises(ValueError, match=r'\[0, 1\)'):
        dropout_keep_mask((4,), 1.0)


def test_cpu_training_dropout_applies_the_drawn_mask_to_the_map(monkeypatch):
    """The explicit CPU path: (softmax(q k^T / sqrt(d)) * keep) @ v / (1 - p), with the mask drawn."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 12, 16, generator=g) for _ in range(3))
    allowed = torch.ones(2, 1, 1, 12, dtype=torch.bool)
    allowed[0, ..., 9:] = False
    drawn = []
    real = attention_module.dropout_keep_mask
    monkeypatch.setattr(attention_module, 'dropout_keep_mask', lambda *a: drawn.append(real(*a)) or drawn[-1])
    out = attention(q, k, v, allowed, dropout_p=0.25)
    keep, scale = drawn[0]
    logits = (q @ k.transpose(-2, -1)) / 4.0
    ref = (logits.masked_fill(~allowed, float('-inf')).softmax(-1) * keep) @ v * scale
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert 0.6 < keep.float().mean() < 0.9  # something was dropped, most was kept
    # Without dropout the fused kernel runs and equals the explicit computation.
    plain = attention(q, k, v, allowed, dropout_p=0.0)
    torch.testing.assert_close(plain, logits.masked_fill(~allowed, float('-inf')).softmax(-1) @ v,
                               atol=1e-5, rtol=1e-5)


def test_small_maps_and_large_maps_take_their_paths(monkeypatch):
    """Under 1M map elements the stock forward runs (the demo's random stream unchanged); over it,
    in CPU training with dropout, the faster forward draws its own mask."""
    ours, _ = _pair(dropout=0.1)
    ours.train()
    drawn = []
    real = attention_module.dropout_keep_mask
    monkeypatch.setattr(attention_module, 'dropout_keep_mask', lambda *a: drawn.append(1) or real(*a))
    q, k, padding, _ = _inputs()
    ours(q, k, k, key_padding_mask=padding, need_weights=False)  # 2 x 8 x 10 x 30 elements
    assert drawn == []
    big = torch.randn(1, 400, 64)  # 1 x 8 x 400 x 400 = 1.28M elements
    out = ours(big, big, big, need_weights=False)[0]
    assert drawn == [1] and out.shape == (1, 400, 64) and torch.isfinite(out).all()


def test_fast_mha_switch_is_read_when_the_layer_is_built(fast_path_for_small_maps):
    """``fast_mha`` off (zoo.layers.config) when a layer is built: every call of that layer takes
    the stock forward (its random stream and sums), whatever the switch says later; layers built
    with it on take the faster forward, with the same results where no dropout is drawn."""
    from zoo.layers.config import fast_paths
    with fast_paths(fast_mha=False):
        stock_like = MultiheadAttention(64, 8, batch_first=True)
    ours, stock = _pair()
    stock_like.load_state_dict(stock.state_dict())
    assert not stock_like.fast_forward and ours.fast_forward
    assert not MultiheadAttention(64, 8, batch_first=False).fast_forward  # DETR's layout only
    q, k, padding, _ = _inputs()
    kwargs = dict(key_padding_mask=padding, need_weights=False)
    assert not stock_like.takes_fast_forward(q, k, padding, False, None, False)
    assert ours.takes_fast_forward(q, k, padding, False, None, False)
    assert not ours.takes_fast_forward(q, k, padding, True, None, False)  # the weights asked for
    calls = []
    real = nn.MultiheadAttention.forward
    try:
        nn.MultiheadAttention.forward = lambda self, *a, **kw: calls.append(1) or real(self, *a, **kw)
        out_stock_like = stock_like(q, k, k, **kwargs)[0]
        assert calls == [1]
        out_ours = ours(q, k, k, **kwargs)[0]
        assert calls == [1]
    finally:
        nn.MultiheadAttention.forward = real
    ref = stock(q, k, k, **kwargs)[0]
    torch.testing.assert_close(out_stock_like, ref)
    torch.testing.assert_close(out_ours, ref, atol=1e-5, rtol=1e-5)


def test_onednn_float32_switch_is_read_when_the_layer_is_built(fast_path_for_small_maps):
    """``onednn_float32`` off when a layer is built: its float32 projections are F.linear (MKL),
    whatever the switch says later, with the results of the oneDNN ones."""
    ours, stock = _pair()
    with fast_paths(onednn_float32=False):
        plain = MultiheadAttention(64, 8, batch_first=True)
    plain.load_state_dict(stock.state_dict())
    assert ours.onednn_float32 and plain.onednn and not plain.onednn_float32
    q, k, padding, _ = _inputs()
    kwargs = dict(key_padding_mask=padding, need_weights=False)
    with fast_paths(onednn_float32=True):
        assert not spy_calls(private_ops, 'linear_pointwise', lambda: plain(q, k, k, **kwargs))
    out = plain(q, k, k, **kwargs)[0]
    torch.testing.assert_close(out, ours(q, k, k, **kwargs)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, stock(q, k, k, **kwargs)[0], atol=1e-5, rtol=1e-5)
