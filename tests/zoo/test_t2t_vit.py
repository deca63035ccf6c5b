"""T2T-ViT against the official implementation (yitu-opensource/T2T-ViT, commit 0f63dc9).

The official code is not a dependency: its figures (parameter counts, outputs on a seeded
official-layout checkpoint) were produced by running it locally and are written out below.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

import zoo
from helpers import assert_detection_mode, count_params
from zoo.layers.squeeze_excite import SEAttention, SqueezeExcite
from zoo.layers.tokens_to_token import TokenPerformer, TokensToToken, TokenTransformer

T2T = zoo.list_models('t2t_vit*')
LARGE = {'t2t_vit_19', 't2t_vit_24', 't2t_vit_t_19', 't2t_vit_t_24', 't2t_vit_14_wide'}

# sum(p.numel() for p in model.parameters()) of the official builders (frozen performer `w` and
# sinusoid pos_embed included), e.g. models.t2t_vit.t2t_vit_7(), at 224 x 224.
OFFICIAL_PARAMS = {
    't2t_vit_7': 4310222, 't2t_vit_10': 5889230, 't2t_vit_12': 6941902,
    't2t_vit_14': 21545550, 't2t_vit_19': 39177422, 't2t_vit_24': 64105934,
    't2t_vit_t_14': 21541070, 't2t_vit_t_19': 39172942, 't2t_vit_t_24': 64101454,
    't2t_vit_14_resnext': 21545550, 't2t_vit_14_wide': 25156302, 't2t_vit_14_se': 21803598,
}


def test_all_twelve_variants_are_registered():
    assert sorted(T2T) == sorted(OFFICIAL_PARAMS)


@pytest.mark.parametrize('name', T2T)
def test_parameter_count_equals_official(name):
    with torch.device('meta'):
        model = zoo.create_model(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    # README / paper figures are rounded to 0.1M (T2T-ViT-12: 6.94M listed as 6.9M); the paper's
    # 21.9M for T2T-ViT-14-SE is 0.45% above the official code's 21.80M.
    paper = zoo.get_model_info(name).paper['params']
    assert abs(count_params(model) / 1e6 - paper) <= max(0.05, 0.005 * paper), (name, paper)


# --- the official checkpoint layout -----------------------------------------------------------

def _official_layout(tokens_type='performer', dim=256, depth=1, mlp_ratio=2.0, classes=10,
                     grid=4, se=False):
    """Key names and shapes of the official ``T2T_ViT`` / ``T2T_ViT_SE`` state dict."""
    shapes = {}
    for i, width in ((1, 3 * 7 * 7), (2, 64 * 3 * 3)):
        p = f'tokens_to_token.attention{i}.'
        if tokens_type == 'performer':
            shapes.update({p + 'kqv.weight': (192, width), p + 'kqv.bias': (192,),
                           p + 'proj.weight': (64, 64), p + 'proj.bias': (64,),
                           p + 'norm1.weight': (width,), p + 'norm1.bias': (width,),
                           p + 'norm2.weight': (64,), p + 'norm2.bias': (64,),
                           p + 'mlp.0.weight': (64, 64), p + 'mlp.0.bias': (64,),
                           p + 'mlp.2.weight': (64, 64), p + 'mlp.2.bias': (64,),
                           p + 'w': (32, 64)})
        else:
            shapes.update({p + 'norm1.weight': (width,), p + 'norm1.bias': (width,),
                           p + 'attn.qkv.weight': (192, width),
                           p + 'attn.proj.weight': (64, 64), p + 'attn.proj.bias': (64,),
                           p + 'norm2.weight': (64,), p + 'norm2.bias': (64,),
                           p + 'mlp.fc1.weight': (64, 64), p + 'mlp.fc1.bias': (64,),
                           p + 'mlp.fc2.weight': (64, 64), p + 'mlp.fc2.bias': (64,)})
    shapes.update({'tokens_to_token.project.weight': (dim, 576),
                   'tokens_to_token.project.bias': (dim,),
                   'cls_token': (1, 1, dim), 'pos_embed': (1, 1 + grid * grid, dim)})
    hidden = int(dim * mlp_ratio)
    for i in range(depth):
        p = f'blocks.{i}.'
        shapes.update({p + 'norm1.weight': (dim,), p + 'norm1.bias': (dim,),
                       p + 'attn.qkv.weight': (3 * dim, dim),
                       p + 'attn.proj.weight': (dim, dim), p + 'attn.proj.bias': (dim,)})
        if se:
            shapes.update({p + 'attn.se_layer.fc.0.weight': (dim // 16, dim),
                           p + 'attn.se_layer.fc.2.weight': (dim, dim // 16)})
        shapes.update({p + 'norm2.weight': (dim,), p + 'norm2.bias': (dim,),
                       p + 'mlp.fc1.weight': (hidden, dim), p + 'mlp.fc1.bias': (hidden,),
                       p + 'mlp.fc2.weight': (dim, hidden), p + 'mlp.fc2.bias': (dim,)})
    shapes.update({'norm.weight': (dim,), 'norm.bias': (dim,),
                   'head.weight': (classes, dim), 'head.bias': (classes,)})
    return shapes


def _official_state_dict(seed=0, **layout):
    """Seeded random values in the official layout: LayerNorm weights near 1, matrices scaled
    by fan_in^-0.5, vectors by 0.1."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in _official_layout(**layout).items():
        v = torch.randn(shape, generator=g)
        if 'norm' in key and key.endswith('weight'):
            v = 1 + 0.1 * v
        elif len(shape) == 2 and not key.endswith('.w'):
            v = v * shape[1] ** -0.5
        elif len(shape) == 1:
            v = 0.1 * v
        sd[key] = v
    return sd


# Logits of the official models (T2T_ViT / T2T_ViT_SE, img_size=64, depth=1, num_classes=10,
# qk_scale as in our builder) with _official_state_dict(seed=0, ...) loaded strictly, on
# torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)); printed by the
# official code at commit 0f63dc9. The performer case loads a 128 x 128 (8 x 8 grid) checkpoint
# through the official utils.load_state_dict, which resizes pos_embed bicubically.
OFFICIAL_LOGITS = {
    't2t_vit_7': (dict(tokens_type='performer', dim=256, mlp_ratio=2.0, grid=8), [
        [0.513274, -0.337454, 1.740424, 0.921284, -0.376671,
         0.134178, 1.626666, 0.881136, 0.172777, 1.139661],
        [0.380209, -0.300870, 1.822006, 0.592853, -0.489932,
         0.155833, 1.412841, 0.633337, 0.138587, 0.672160]]),
    't2t_vit_t_14': (dict(tokens_type='transformer', dim=384, mlp_ratio=3.0), [
        [-0.534159, 1.408657, -0.983095, 0.014864, -1.409241,
         0.093605, 1.498192, 1.435691, 0.131899, -0.041091],
        [-0.748185, 1.081326, -0.859954, 0.067534, -1.323847,
         0.054089, 1.226082, 1.462104, 0.390149, -0.109504]]),
    't2t_vit_14_se': (dict(tokens_type='performer', dim=384, mlp_ratio=3.0, se=True), [
        [2.271508, -0.515573, -0.646143, -0.260859, -0.709955,
         1.107777, 0.737438, 0.260690, -1.038142, 0.080294],
        [2.239197, -0.451577, -0.667507, -0.409667, -0.830187,
         1.008934, 0.717797, 0.373359, -1.104290, -0.011568]]),
}


@pytest.mark.parametrize('name', sorted(OFFICIAL_LOGITS))
@torch.no_grad()
def test_official_checkpoint_loads_strictly_and_reproduces_official_logits(name, tmp_path):
    layout, expected = OFFICIAL_LOGITS[name]
    official = _official_state_dict(seed=0, **layout)
    # Released files are .pth.tar dicts with state_dict and state_dict_ema, `module.`-prefixed.
    ema = {k: v + 1 for k, v in official.items()}
    path = tmp_path / f'{name}.pth.tar'
    torch.save({'epoch': 300, 'state_dict': {f'module.{k}': v for k, v in official.items()},
                'state_dict_ema': {f'module.{k}': v for k, v in ema.items()}}, path)
    # Loading builds the model as the official builders do with pretrained: qk_scale embed_dim^-0.5.
    model = zoo.create_model(name, pretrained=str(path), depth=1, num_classes=10, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(x), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    prefix = 'tokens_to_token.attention1.'
    mlp_key = 'mlp.0.weight' if layout['tokens_type'] == 'performer' else 'mlp.fc1.weight'
    torch.testing.assert_close(model.tokens_to_token.attention1.mlp.fc1.weight,
                               official[prefix + mlp_key], rtol=0, atol=0)
    ema_model = zoo.load_pretrained(
        zoo.create_model(name, depth=1, num_classes=10, img_size=64), path, use_ema=True)
    assert model.blocks[0].attn.scale == layout['dim'] ** -0.5
    torch.testing.assert_close(ema_model.head.bias, ema['head.bias'], rtol=0, atol=0)


def test_attention_scale_follows_the_weights_as_in_the_official_builders(tmp_path):
    """Official builders: qk_scale = embed_dim^-0.5 only when loading weights (the released ones
    were trained with it); from scratch the Attention default head_dim^-0.5."""
    from classification.distillation import build_network
    small = dict(depth=1, num_classes=10, img_size=64)
    scratch = zoo.create_model('t2t_vit_7', **small)  # 256 wide, 4 heads
    assert scratch.blocks[0].attn.scale == 64 ** -0.5
    path = str(tmp_path / 't2t_vit_7.pth')
    torch.save(scratch.state_dict(), path)
    assert zoo.create_model('t2t_vit_7', pretrained=path, **small).blocks[0].attn.scale == 256 ** -0.5
    # The classification builder's local-checkpoint path builds the same way.
    assert build_network('t2t_vit_7', 10, pretrained=path, depth=1, img_size=64) \
        .blocks[0].attn.scale == 256 ** -0.5
    assert build_network('t2t_vit_7', 10, depth=1, img_size=64).blocks[0].attn.scale == 64 ** -0.5
    # An explicit qk_scale wins: a checkpoint trained here from scratch loads at its own scale.
    assert zoo.create_model('t2t_vit_7', pretrained=path, qk_scale=None, **small) \
        .blocks[0].attn.scale == 64 ** -0.5
    wide = zoo.create_model('t2t_vit_14_wide', depth=1, num_classes=10, img_size=64)
    assert wide.blocks[0].attn.scale == 64 ** -0.5  # 768 / 12 heads
    assert zoo.get_model_info('t2t_vit_14_wide').weights_arch == dict(qk_scale=512 ** -0.5)


def test_official_checkpoint_with_a_missing_key_is_refused():
    official = _official_state_dict(tokens_type='performer', dim=256, grid=4)
    del official['tokens_to_token.attention2.w']
    model = zoo.create_model('t2t_vit_7', depth=1, num_classes=10, img_size=64)
    with pytest.raises(zoo.CheckpointMismatchError, match='tokens_to_token.attention2.w'):
        zoo.load_pretrained(model, {'state_dict': official})


# --- the token layers, written out by hand ------------------------------------------------------

@torch.no_grad()
def test_token_transformer_has_v_residual_and_input_width_scale():
    layer = TokenTransformer(dim=27, out_dim=8).eval()
    for p in layer.parameters():
        p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 27)
    h = F.layer_norm(x, (27,), layer.norm1.weight, layer.norm1.bias)
    q, k, v = (h @ layer.attn.qkv.weight.t()).split(8, dim=-1)  # no qkv bias
    attn = torch.softmax(q @ k.transpose(1, 2) * 27 ** -0.5, dim=-1)  # scale of the input width
    y = v + (attn @ v) @ layer.attn.proj.weight.t() + layer.attn.proj.bias  # v, not x, is residual
    h = F.layer_norm(y, (8,), layer.norm2.weight, layer.norm2.bias)
    y = y + F.linear(F.gelu(F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)),
                     layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    assert layer.attn.qkv.bias is None and layer.mlp.fc1.out_features == 8  # MLP ratio 1
    torch.testing.assert_close(layer(x), y)
    layer.attn.fused = not layer.attn.fused  # the other attention path gives the same
    torch.testing.assert_close(layer(x), y)


@torch.no_grad()
def test_token_performer_splits_k_q_v_in_that_order():
    layer = TokenPerformer(dim=27, out_dim=8).eval()
    assert layer.w.shape == (4, 8)  # kernel_ratio 0.5
    x = torch.randn(2, 5, 27)
    h = F.layer_norm(x, (27,), layer.norm1.weight, layer.norm1.bias)
    k, q, v = F.linear(h, layer.kqv.weight, layer.kqv.bias).split(8, dim=-1)

    def features(t):  # positive random features exp(w t - |t|^2 / 2) / sqrt(m)
        return torch.exp(t @ layer.w.t() - (t * t).sum(-1, keepdim=True) / 2) / 2

    kp, qp = features(k), features(q)
    num = qp @ (kp.transpose(1, 2) @ v)
    den = qp @ kp.sum(1, keepdim=True).transpose(1, 2) + 1e-8
    y = v + F.linear(num / den, layer.proj.weight, layer.proj.bias)
    h = F.layer_norm(y, (8,), layer.norm2.weight, layer.norm2.bias)
    y = y + F.linear(F.gelu(F.linear(h, layer.mlp.fc1.weight, layer.mlp.fc1.bias)),
                     layer.mlp.fc2.weight, layer.mlp.fc2.bias)
    torch.testing.assert_close(layer(x), y)


def test_performer_random_matrix_is_frozen_saved_and_not_redrawn(tmp_path):
    torch.manual_seed(0)
    src = zoo.create_model('t2t_vit_7', depth=1)
    torch.manual_seed(1)
    dst = zoo.create_model('t2t_vit_7', depth=1)
    w_src = src.tokens_to_token.attention1.w
    assert not w_src.requires_grad
    # Orthogonal rows of norm sqrt(m), m = 32, as the official initialisation draws them.
    torch.testing.assert_close(w_src @ w_src.t(), 32 * torch.eye(32), atol=1e-4, rtol=0)
    assert not torch.equal(dst.tokens_to_token.attention1.w, w_src)
    torch.save({'state_dict': src.state_dict()}, tmp_path / 'ckpt.pth.tar')
    zoo.load_pretrained(dst, tmp_path / 'ckpt.pth.tar')
    for i in (1, 2):
        a = getattr(src.tokens_to_token, f'attention{i}').w
        b = getattr(dst.tokens_to_token, f'attention{i}').w
        assert torch.equal(a, b)  # bit-exact
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=0, atol=0)


@torch.no_grad()
def test_performer_survives_half_precision_where_a_naive_half_kernel_fails():
    layer = TokenPerformer(dim=27, out_dim=64).eval()
    layer.kqv.weight.mul_(8)  # large q, k: the kernel features exp(w q - |q|^2 / 2) get tiny
    x = torch.randn(2, 50, 27)
    ref = layer(x)
    assert torch.isfinite(ref).all()

    # The official computation carried out in float16: features underflow to 0 and the
    # epsilon 1e-8 is itself 0 in float16, so the normaliser is 0/0.
    assert torch.tensor(1e-8, dtype=torch.float16) == 0
    h = layer.norm1(x)
    k, q, v = layer.kqv(h).half().split(64, dim=-1)
    w = layer.w.half()
    kp = torch.exp(k @ w.t() - (k * k).sum(-1, keepdim=True) / 2) / math.sqrt(32)
    qp = torch.exp(q @ w.t() - (q * q).sum(-1, keepdim=True) / 2) / math.sqrt(32)
    naive = (qp @ (kp.transpose(1, 2) @ v)) / (qp @ kp.sum(1, keepdim=True).transpose(1, 2) + 1e-8)
    assert not torch.isfinite(naive).all()

    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast('cpu', dtype=dtype):
            low = layer(x)
        assert torch.isfinite(low).all(), dtype
        assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max(), dtype


@torch.no_grad()
def test_whole_model_under_float16_autocast_is_finite():
    model = zoo.create_model('t2t_vit_7', depth=2).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.autocast('cpu', dtype=torch.float16):
        assert torch.isfinite(model(x)).all()


# --- squeeze-excitation ------------------------------------------------------------------------

@torch.no_grad()
def test_squeeze_excite_gates_channels_from_the_mean_over_positions():
    se = SqueezeExcite(32, reduction=16)
    x = torch.randn(2, 5, 7, 32)  # channels last map; tokens (B, N, C) work the same way
    gate = torch.sigmoid(F.relu(x.mean((1, 2)) @ se.excite.fc1.weight.t()) @ se.excite.fc2.weight.t())
    torch.testing.assert_close(se(x), x * gate[:, None, None])
    assert se.excite.fc1.out_features == 2 and se.excite.fc1.bias is None


@torch.no_grad()
def test_se_attention_gates_the_projected_output():
    attn = SEAttention(32, num_heads=4).eval()
    x = torch.randn(2, 9, 32)
    plain = zoo.layers.Attention.forward(attn, x)
    torch.testing.assert_close(attn(x), attn.se(plain))
    out, maps = attn(x, return_attention=True)
    torch.testing.assert_close(out, attn(x))
    assert maps.shape == (2, 4, 9, 9)


# --- sizes, features, gradients, export ---------------------------------------------------------

@torch.no_grad()
def test_tokens_to_token_grid_is_a_sixteenth_of_each_side():
    t2t = TokensToToken('transformer', embed_dim=32)
    tokens, grid = t2t(torch.randn(1, 3, 80, 48))
    assert grid == (5, 3) and tokens.shape == (1, 15, 32)


@torch.no_grad()
def test_320x256_input_and_feature_maps_follow_feature_info():
    model = zoo.create_model('t2t_vit_7', depth=2).eval()
    assert model.feature_info == [dict(channels=256, stride=16, module='norm')]
    x = torch.randn(1, 3, 320, 256)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, 256, 20, 16)
    assert_detection_mode(model, x, fmap)
    assert model(x).shape == (1, 1000)


@torch.no_grad()
def test_other_training_size_resamples_the_position_table():
    model = zoo.create_model('t2t_vit_7', depth=1, img_size=(320, 256))
    assert model.pos_embed.shape == (1, 1 + 20 * 16, 256)
    sd = zoo.create_model('t2t_vit_7', depth=1).state_dict()  # 224: 14 x 14 grid
    sd['pos_embed'] = sd['pos_embed'] + torch.randn(1, 1 + 14 * 14, 256)  # not the model's own
    zoo.load_pretrained(model, sd)
    # As the official load_for_transfer_learning: bicubic, no antialiasing, class row kept.
    grid = rearrange(sd['pos_embed'][:, 1:], '1 (h w) d -> 1 d h w', h=14)
    grid = F.interpolate(grid, size=(20, 16), mode='bicubic', align_corners=False)
    expected = torch.cat([sd['pos_embed'][:, :1], rearrange(grid, '1 d h w -> 1 (h w) d')], 1)
    torch.testing.assert_close(model.pos_embed, expected)
    assert not model.pos_embed.requires_grad


def test_side_not_multiple_of_16_is_explained():
    model = zoo.create_model('t2t_vit_7', depth=1)
    with pytest.raises(ValueError, match='multiple of the patch stride 16x16'):
        model(torch.randn(1, 3, 200, 224))
    with pytest.raises(ValueError, match='multiples of 16'):
        zoo.create_model('t2t_vit_7', depth=1, img_size=230)


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n
                                  for n in T2T])
def test_forward_backward_reaches_every_trainable_parameter(name):
    model = zoo.create_model(name, depth=2, num_classes=5, drop_path_rate=0.1).train()
    model(torch.randn(4, 3, 32, 48)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    performer = '_t_' not in name
    assert frozen == (['pos_embed', 'tokens_to_token.attention1.w', 'tokens_to_token.attention2.w']
                      if performer else ['pos_embed'])


@torch.no_grad()
def test_fused_and_explicit_attention_agree_and_maps_are_retrievable():
    fused = zoo.create_model('t2t_vit_t_14', depth=2).eval()
    explicit = zoo.create_model('t2t_vit_t_14', depth=2, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 64, 96)
    torch.testing.assert_close(fused(x), explicit(x), atol=1e-5, rtol=1e-5)
    maps = fused.get_attention_maps(x)
    assert len(maps) == 2 and maps[0].shape == (2, 6, 1 + 4 * 6, 1 + 4 * 6)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 6, 25))


@pytest.mark.slow
@torch.no_grad()
def test_onnx_export_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    model = zoo.create_model('t2t_vit_7', depth=2, img_size=64).eval()
    path = str(tmp_path / 't2t.onnx')
    torch.onnx.export(model, (torch.randn(2, 3, 64, 64),), path, input_names=['images'],
                      output_names=['logits'], dynamic_axes={'images': {0: 'batch'}},
                      dynamo=False)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    y = torch.randn(3, 3, 64, 64)  # another batch size than the one traced
    (out,) = session.run(None, {'images': y.numpy()})
    np.testing.assert_allclose(out, model(y).numpy(), atol=1e-4, rtol=0)

