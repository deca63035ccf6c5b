"""CeiT against its official code (github.com/coeusguo/ceit, ceit_model.py at commit 44c16d3).
That code is not installable, so the reference figures below were produced by running it (with
timm 1.0.31) outside this repository: parameter counts of its ceit_{tiny,small,base}_patch16_224
builders (the README rounds them to 6.4 / 24.2 / 94.4 M), and logits of a small model in its key
layout filled with the name-keyed deterministic weights of ``_deterministic``."""
import pytest
import torch
import torch.nn.functional as F

import zoo
from helpers import assert_detection_mode, assert_onnx_matches, count_params, deterministic_state_dict, spy_calls, wave_image
from zoo.layers import private_ops
from zoo.layers.layer_class_attention import LayerClassAttentionBlock
from zoo.layers.leff import LocallyEnhancedFeedForward

VARIANTS = ['ceit_t', 'ceit_s', 'ceit_b']
OFFICIAL_PARAMS = {'ceit_t': 6_356_904, 'ceit_s': 24_204_840, 'ceit_b': 94_405_416}


@pytest.mark.parametrize('name', VARIANTS)
def test_parameter_count_equals_official(name):
    with torch.device('meta'):
        model = zoo.create_model(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    assert abs(count_params(model) / 1e6 - zoo.get_model_info(name).paper['params']) <= 0.05


def _official_layout(model) -> dict:
    """The model's keys as the official code names them."""
    def official(k):
        k = k.replace('i2t.conv.', 'i2t.backbone.conv.').replace('i2t.bn.', 'i2t.backbone.bn.')
        if k.startswith('blocks.'):
            return k.replace('.mlp.', '.leff.')
        return k.replace('lca.mlp.', 'lca.feedforward.')
    return {official(k): (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _small(**kw):
    # Official: CeIT(hybrid_backbone=Image2Tokens(), img_size=48, patch_size=4, embed_dim=48,
    # depth=3, num_heads=4, mlp_ratio=4, qkv_bias=True, LayerNorm eps 1e-6, num_classes=5).
    arch = dict(img_size=48, embed_dim=48, depth=3, num_heads=4, num_classes=5)
    return zoo.create_model('ceit_t', **{**arch, **kw})


# Logits of the official model above, eval mode, on wave_image(2, 3, 48, 48) (square: the official
# LeFF infers its grid as sqrt(N)).
OFFICIAL_LOGITS = [[-3.119381, 3.261653, -2.810918, 2.028579, -0.169223],
                   [-3.101704, 3.243419, -2.796291, 2.020898, -0.170241]]


@torch.no_grad()
def test_official_checkpoint_layout_loads_and_reproduces_official_logits():
    model = _small().eval()
    sd = deterministic_state_dict(_official_layout(model))
    assert {'i2t.backbone.conv.weight', 'i2t.backbone.bn.running_var', 'i2t.proj.weight',
            'blocks.2.leff.conv2.weight', 'blocks.2.leff.bn3.bias', 'lca.attn.qkv.weight',
            'lca.feedforward.fc2.bias', 'pos_layer_embed'} <= set(sd)
    # As the official (DeiT) training script saves it: a 'model' entry, here from a DDP model.
    zoo.load_pretrained(model, {'model': {'module.' + k: v for k, v in sd.items()}, 'epoch': 299})
    out = model(wave_image(2, 3, 48, 48))
    assert (out - torch.tensor(OFFICIAL_LOGITS)).abs().max() <= 1e-4


def test_position_table_is_resampled_on_load():
    small = _small()
    model = _small(img_size=(64, 80))
    zoo.load_pretrained(model, {'model': small.state_dict()})
    assert model.pos_embed.shape == (1, 1 + 4 * 5, 48)


@pytest.mark.parametrize('name', ['ceit_t'] + [pytest.param(n, marks=pytest.mark.slow)
                                              for n in ('ceit_s', 'ceit_b')])
def test_forward_backward_reaches_every_parameter(name):
    model = zoo.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 5)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    # As in the official model, the classifier reads only class tokens, and LeFF leaves those
    # unchanged: the last block's LeFF cannot reach the logits (it does reach the feature map).
    last_leff = [n for n, _ in model.named_parameters() if n.startswith('blocks.11.mlp.')]
    assert len(last_leff) == 12 and no_grad == last_leff
    model.zero_grad()
    model.forward_feature_maps(torch.randn(2, 3, 32, 48))[0].square().mean().backward()
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in last_leff)


@torch.no_grad()
def test_feature_maps_follow_feature_info_on_non_square_input():
    model = zoo.create_model('ceit_t', depth=3).eval()
    (info,) = model.feature_info
    assert (info['channels'], info['stride']) == (192, 16)
    x = torch.randn(1, 3, 16 * 5, 16 * 8)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, 192, 5, 8)
    assert_detection_mode(model, x, fmap)
    assert model.forward_features(x).shape == (1, 1, 192)
    assert model(x).shape == (1, 1000)


@torch.no_grad()
def test_leff_uses_the_real_grid_and_passes_the_class_token():
    leff = LocallyEnhancedFeedForward(8, 16).eval()
    x = torch.randn(2, 1 + 3 * 5, 8)
    out = leff(x, grid=(3, 5))
    torch.testing.assert_close(out[:, :1], x[:, :1])
    fmap = x[:, 1:].reshape(2, 3, 5, 8).permute(0, 3, 1, 2)
    fmap = F.gelu(leff.bn1(leff.conv1(fmap)))
    depthwise = F.conv2d(fmap, leff.conv2.weight, leff.conv2.bias, padding=1, groups=16)
    fmap = F.gelu(leff.bn2(depthwise))
    fmap = leff.bn3(leff.conv3(fmap))
    torch.testing.assert_close(out[:, 1:], fmap.flatten(2).transpose(1, 2))


@torch.no_grad()
def test_lca_queries_from_the_last_class_token_only():
    block = LayerClassAttentionBlock(24, 4, qkv_bias=True).eval()
    x = torch.randn(2, 5, 24)
    out, attn = block(x, return_attention=True)
    assert out.shape == (2, 1, 24) and attn.shape == (2, 4, 1, 5)
    # Without position information the earlier tokens form a set: their order cannot matter,
    # while the last token (query and residual) does.
    shuffled = torch.cat([x[:, [2, 0, 3, 1]], x[:, 4:]], dim=1)
    torch.testing.assert_close(block(shuffled), out)
    assert not torch.allclose(block(x[:, [4, 1, 2, 3, 0]]), out)


@torch.no_grad()
def test_attention_maps_and_fused_path():
    fused = zoo.create_model('ceit_t', depth=3).eval()
    explicit = zoo.create_model('ceit_t', depth=3, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 64, 48)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    maps = fused.get_attention_maps(x)
    assert [m.shape for m in maps] == [(2, 3, 13, 13)] * 3 + [(2, 3, 1, 3)]
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


@torch.no_grad()
def test_onnx_export_matches_onnxruntime(tmp_path):
    model = zoo.create_model('ceit_t', depth=2, img_size=64).eval()
    assert_onnx_matches(model, tmp_path, (64, 64))


def test_side_not_multiple_of_stride_is_explained():
    model = zoo.create_model('ceit_t', depth=1)
    with pytest.raises(ValueError, match=r'40x32 is not a multiple of the patch stride 16x16'):
        model(torch.randn(1, 3, 40, 32))


def _leff_with_statistics():
    torch.manual_seed(0)
    leff = LocallyEnhancedFeedForward(48, 192).eval()
    for bn in (leff.bn1, leff.bn2, leff.bn3):  # running statistics and affine terms far from 0 / 1
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.3, 3.0)
        bn.weight.data.normal_(1, 0.5)
        bn.bias.data.normal_(0, 0.5)
    return leff


def _fused_calls(fn) -> int:
    """How many fused oneDNN convolutions ``fn()`` runs."""
    return len(spy_calls(private_ops, 'convolution_pointwise', fn))


@pytest.mark.skipif(not private_ops.onednn_convolution_available(), reason='no oneDNN in this build')
def test_leff_inference_folds_batch_norms_and_fuses_gelu_with_the_same_result():
    """Inference after fuse() (eval, no autograd, CPU): three oneDNN convolutions with the batch
    norms folded in and GELU as their post-op, equal to the module's eight-step form up to float32
    rounding (bfloat16: within its rounding); training, autograd and hooks take the eight steps."""
    leff, x = _leff_with_statistics(), torch.randn(2, 1 + 6 * 5, 48)
    leff.fuse()
    with torch.enable_grad():
        reference = leff(x, (6, 5)).detach()  # autograd on: the eight steps
    with torch.no_grad():
        assert _fused_calls(lambda: leff(x, (6, 5))) == 3
        fused = leff(x, (6, 5))
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert _fused_calls(lambda: leff(x, (6, 5))) == 3
            low = leff(x, (6, 5))
        handle = leff.bn2.register_forward_hook(lambda *a: None)
        try:
            assert _fused_calls(lambda: leff(x, (6, 5))) == 0
        finally:
            handle.remove()
        leff.train()
        assert _fused_calls(lambda: leff(x, (6, 5))) == 0
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    assert torch.equal(fused[:, :1], x[:, :1])  # the class token passes unchanged
    # bfloat16 really ran (the float32 class token promotes the concatenation back to float32)
    assert (low - fused).abs().max() > 0
    assert (low - reference).abs().max() <= 0.02 * reference.abs().max()


def test_image_to_tokens_changes_only_the_layout():
    """The stem pools channels-last (PyTorch's CPU max-pool is 6x faster there): the tokens are
    exactly those of conv -> BN -> max-pool -> patch conv in the default layout."""
    torch.manual_seed(0)
    stem = zoo.create_model('ceit_t', img_size=64).i2t.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, grid = stem(x)
        fmap = stem.proj(stem.pool(stem.bn(stem.conv(x))))
    assert grid == (4, 4)
    assert torch.equal(tokens, fmap.flatten(2).transpose(1, 2))
