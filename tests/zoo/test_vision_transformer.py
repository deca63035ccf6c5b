"""ViT and DeiT against timm 1.0.31, the reference implementation (DeiT's official code is built
on it, and its checkpoints use the same key layout)."""
import numpy as np
import pytest
import timm
import torch

import zoo
from helpers import assert_detection_mode, count_params

VIT_DEIT = zoo.list_models('vit_*') + zoo.list_models('deit_*')
LARGE = {'vit_large_patch16_224', 'vit_large_patch16_384', 'vit_base_patch16_384',
         'deit_base_patch16_384'}


@pytest.mark.parametrize('name', VIT_DEIT)
def test_parameter_count_equals_timm(name):
    with torch.device('meta'):
        ours = zoo.create_model(name)
        theirs = timm.create_model(name, pretrained=False)
    assert count_params(ours) == count_params(theirs)
    paper = zoo.get_model_info(name).paper['params']
    # The reference table rounds to 0.1M (DeiT README) or 0.01M (timm tables).
    assert abs(count_params(ours) / 1e6 - paper) <= 0.06, (name, count_params(ours) / 1e6, paper)


def _timm_reference(name):
    timm.layers.set_fused_attn(False)
    try:
        return timm.create_model(name, pretrained=False, dynamic_img_size=True).eval()
    finally:
        timm.layers.set_fused_attn(True)


def _sizes(name):
    side = 384 if name.endswith('384') else 224
    return [(side, side), (192, 288) if 'patch32' in name else (176, 272)]


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n
                                  for n in VIT_DEIT])
@torch.no_grad()
def test_outputs_match_timm(name):
    theirs = _timm_reference(name)
    ours = zoo.create_model(name).eval()
    zoo.load_pretrained(ours, theirs.state_dict())
    for size in _sizes(name):
        x = torch.randn(2, 3, *size)
        diff = (ours(x) - theirs(x)).abs().max().item()
        assert diff <= 1e-5, (name, size, diff)


@torch.no_grad()
def test_fused_and_explicit_attention_agree():
    fused = zoo.create_model('deit_small_patch16_224').eval()
    explicit = zoo.create_model('deit_small_patch16_224', fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 224, 160)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    maps = fused.get_attention_maps(x)
    assert len(maps) == 12 and maps[0].shape == (2, 6, 1 + 14 * 10, 1 + 14 * 10)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 6, 141))


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224'])
def test_gradients_reach_every_parameter(name):
    model = zoo.create_model(name, num_classes=5, drop_path_rate=0.1).train()
    out = model(torch.randn(2, 3, 64, 96))
    loss = sum(o.square().mean() for o in out) if isinstance(out, tuple) else out.square().mean()
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_distilled_returns_both_heads_in_training_and_their_mean_in_eval():
    model = zoo.create_model('deit_tiny_distilled_patch16_224', num_classes=7)
    x = torch.randn(2, 3, 64, 64)
    cls, dist = model.train()(x)
    assert cls.shape == dist.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize('name,stride', [('vit_tiny_patch16_224', 16), ('vit_base_patch32_224', 32),
                                         ('deit_tiny_distilled_patch16_224', 16)])
@torch.no_grad()
def test_feature_maps_follow_feature_info(name, stride):
    model = zoo.create_model(name).eval()
    assert model.feature_info[0]['stride'] == stride
    x = torch.randn(1, 3, stride * 5, stride * 8)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, model.feature_info[0]['channels'], 5, 8)
    # Detection mode (ViTDet): the class and distillation tokens are left out of the blocks.
    assert_detection_mode(model, x, fmap)


def test_forward_head_pre_logits():
    model = zoo.create_model('vit_tiny_patch16_224').eval()
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 192)


# --- bad input -------------------------------------------------------------------------------

def test_wrong_channel_count_is_explained():
    model = zoo.create_model('vit_tiny_patch16_224')
    with pytest.raises(ValueError, match=r'expected 3 input channels, got 1.*in_chans=1'):
        model(torch.randn(1, 1, 224, 224))


def test_side_not_multiple_of_patch_is_explained():
    model = zoo.create_model('vit_tiny_patch16_224')
    with pytest.raises(ValueError, match=r'230x224 is not a multiple of the patch stride 16x16.*224'):
        model(torch.randn(1, 3, 230, 224))


def test_unbatched_input_is_explained():
    model = zoo.create_model('vit_tiny_patch16_224')
    with pytest.raises(ValueError, match='unsqueeze'):
        model(torch.randn(3, 224, 224))


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'deit_smal_patch16_224'.*deit_small_patch16_224"):
        zoo.create_model('deit_smal_patch16_224')


# --- official JAX release layout --------------------------------------------------------------

def _big_vision_npz(path, dim=192, depth=2, heads=3, classes=10, grid=4, patch=16):
    """A random checkpoint in the official ViT (.npz) layout, as the ViT repository writes it."""
    rng = np.random.default_rng(0)
    r = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.05  # noqa: E731
    hd = dim // heads
    arrays = {'embedding/kernel': r(patch, patch, 3, dim), 'embedding/bias': r(dim),
              'cls': r(1, 1, dim), 'Transformer/posembed_input/pos_embedding': r(1, 1 + grid * grid, dim),
              'Transformer/encoder_norm/scale': 1 + r(dim), 'Transformer/encoder_norm/bias': r(dim),
              'head/kernel': r(dim, classes), 'head/bias': r(classes)}
    for i in range(depth):
        p = f'Transformer/encoderblock_{i}/'
        for ln in ('LayerNorm_0', 'LayerNorm_2'):
            arrays[p + ln + '/scale'], arrays[p + ln + '/bias'] = 1 + r(dim), r(dim)
        for n in ('query', 'key', 'value'):
            arrays[f'{p}MultiHeadDotProductAttention_1/{n}/kernel'] = r(dim, heads, hd)
            arrays[f'{p}MultiHeadDotProductAttention_1/{n}/bias'] = r(heads, hd)
        arrays[f'{p}MultiHeadDotProductAttention_1/out/kernel'] = r(heads, hd, dim)
        arrays[f'{p}MultiHeadDotProductAttention_1/out/bias'] = r(dim)
        arrays[f'{p}MlpBlock_3/Dense_0/kernel'], arrays[f'{p}MlpBlock_3/Dense_0/bias'] = r(dim, 4 * dim), r(4 * dim)
        arrays[f'{p}MlpBlock_3/Dense_1/kernel'], arrays[f'{p}MlpBlock_3/Dense_1/bias'] = r(4 * dim, dim), r(dim)
    np.savez(path, **arrays)


@torch.no_grad()
def test_official_jax_npz_layout_matches_timm_loader(tmp_path):
    from timm.models.vision_transformer import _load_weights
    path = str(tmp_path / 'vit.npz')
    _big_vision_npz(path)
    timm.layers.set_fused_attn(False)
    theirs = timm.create_model('vit_tiny_patch16_224', depth=2, num_classes=10, img_size=64).eval()
    timm.layers.set_fused_attn(True)
    _load_weights(theirs, path)
    ours = zoo.create_model('vit_tiny_patch16_224', depth=2, num_classes=10, img_size=64).eval()
    zoo.load_pretrained(ours, path)
    x = torch.randn(2, 3, 64, 64)
    assert (ours(x) - theirs(x)).abs().max() <= 1e-5
