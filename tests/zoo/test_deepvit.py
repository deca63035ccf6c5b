"""DeepViT against its official code (github.com/zhoudaquan/dvit_repo, models/layers.py and
models/deep_vision_transformer.py at commit 1ccb152). That code is not installable, so the
reference figures below were produced by running it (with timm 1.0.31) outside this repository:
parameter counts of its ``deepvit_S`` / ``deepvit_L`` builders, and logits of a small model in
its key layout filled with the name-keyed deterministic weights of ``_deterministic``."""
import copy

import pytest
import torch

import zoo
from helpers import assert_detection_mode, assert_onnx_matches, count_params, deterministic_state_dict, wave_image
from zoo.layers.attention import Attention
from zoo.layers.block import LayerNorm6
from zoo.layers.re_attention import ReAttention, masked_batch_norm
from zoo.layers.scaled_residual_block import ScaledResidualBlock

VARIANTS = ['deepvit_s', 'deepvit_l']
# sum(p.numel()) of the official builders deepvit_S / deepvit_L (the paper rounds to 27 / 55 M).
OFFICIAL_PARAMS = {'deepvit_s': 27_312_632, 'deepvit_l': 58_883_708}


@pytest.mark.parametrize('name', VARIANTS)
def test_parameter_count_equals_official(name):
    with torch.device('meta'):
        model = zoo.create_model(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    assert abs(count_params(model) / 1e6 - zoo.get_model_info(name).paper['params']) <= 0.05


def _official_layout(model) -> dict:
    """The model's keys as the official code names them."""
    def official(k):
        k = k.replace('.attn.head_mix.', '.attn.reatten_matrix.')
        return k.replace('.attn.head_norm.', '.attn.var_norm.')
    return {official(k): (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


def _small(scale_map, **kw):
    # Official: DeepVisionTransformer(img_size=(32, 48), embed_dim=48, depth=[False] * 3,
    # apply_transform=[False, True, True], num_heads=4, mlp_ratio=3, qkv_bias=True,
    # LayerNorm eps 1e-6, transform_scale=scale_map, use_cnn_embed=True, scale_adjustment=0.5,
    # num_classes=5).
    arch = dict(img_size=(32, 48), embed_dim=48, depth=3, num_heads=4, num_reattention_blocks=2,
                scale_reattention_map=scale_map, num_classes=5)
    return zoo.create_model('deepvit_s', **{**arch, **kw})


# Logits of the official model above, eval mode, on wave_image(2, 3, 32, 48).
OFFICIAL_LOGITS = {
    True: [[-0.503451, 0.338685, -0.248246, 0.411278, 0.133466],
           [-0.500028, 0.339015, -0.252254, 0.418049, 0.125479]],
    False: [[-0.601786, 0.367633, -0.201199, 0.298976, 0.285383],
            [-0.593917, 0.364377, -0.203298, 0.305953, 0.275123]],
}


@pytest.mark.parametrize('scale_map', [True, False])
@torch.no_grad()
def test_official_checkpoint_layout_loads_and_reproduces_official_logits(scale_map):
    model = _small(scale_map).eval()
    sd = deterministic_state_dict(_official_layout(model))
    assert {'blocks.2.attn.reatten_matrix.weight', 'blocks.2.attn.var_norm.running_var',
            'patch_embed.conv1.weight', 'patch_embed.bn2.running_mean',
            'patch_embed.proj.bias'} <= set(sd)
    assert not any('reatten_matrix' in k for k in sd if k.startswith('blocks.0.'))
    # As the official (timm) training script saves it: EMA weights of a DDP model.
    zoo.load_pretrained(model, {'state_dict_ema': {'module.' + k: v for k, v in sd.items()},
                                'epoch': 300})
    out = model(wave_image(2, 3, 32, 48))
    assert (out - torch.tensor(OFFICIAL_LOGITS[scale_map])).abs().max() <= 1e-4


def test_position_table_is_resampled_on_load():
    # Released checkpoints are square (224): a 2x2 table resampled to a 3x4 grid.
    small = _small(True, img_size=32)
    model = _small(True, img_size=(48, 64))
    zoo.load_pretrained(model, {'state_dict': small.state_dict()})
    assert model.pos_embed.shape == (1, 1 + 12, 48)
    torch.testing.assert_close(model.cls_token, small.cls_token)


@pytest.mark.parametrize('name', ['deepvit_s', pytest.param('deepvit_l', marks=pytest.mark.slow)])
def test_forward_backward_reaches_every_parameter(name):
    # No drop-path: with 32 blocks and a batch of 2 it may drop a whole branch for both samples.
    model = zoo.create_model(name, num_classes=5).train()
    out = model(torch.randn(2, 3, 32, 48))
    assert out.shape == (2, 5)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@torch.no_grad()
def test_feature_maps_follow_feature_info_on_non_square_input():
    model = zoo.create_model('deepvit_s', depth=3).eval()
    (info,) = model.feature_info
    assert info == dict(channels=396, stride=16, module='norm')
    x = torch.randn(1, 3, 16 * 5, 16 * 8)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, 396, 5, 8)
    assert_detection_mode(model, x, fmap)
    assert model(x).shape == (1, 1000)


@torch.no_grad()
def test_attention_maps_and_fused_path():
    fused = zoo.create_model('deepvit_s', depth=4, num_reattention_blocks=2).eval()
    explicit = zoo.create_model('deepvit_s', depth=4, num_reattention_blocks=2,
                                fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 64, 48)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    maps = fused.get_attention_maps(x)
    assert [m.shape for m in maps] == [(2, 12, 13, 13)] * 4
    # Plain blocks return the softmax map; re-attention blocks the re-generated one (BN on it).
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 12, 13))
    assert not torch.allclose(maps[-1].sum(-1), torch.ones(2, 12, 13))
    assert [type(b.attn) for b in fused.blocks] == [Attention] * 2 + [ReAttention] * 2


@torch.no_grad()
def test_re_attention_map_is_bn_of_head_mix_times_scale():
    attn = ReAttention(24, num_heads=4, qkv_bias=True, scale_map=True).eval()
    attn.head_norm.running_mean.uniform_(-0.1, 0.1)
    attn.head_norm.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 7, 24)
    q, k, v = attn.qkv(x).reshape(2, 7, 3, 4, 6).permute(2, 0, 3, 1, 4)
    soft = (q @ k.transpose(-2, -1) * 6 ** -0.5).softmax(-1)
    mixed = torch.einsum('gh,bhij->bgij', attn.head_mix.weight[:, :, 0, 0], soft) \
        + attn.head_mix.bias[None, :, None, None]
    bn = attn.head_norm
    expected_map = ((mixed - bn.running_mean[None, :, None, None])
                    / (bn.running_var[None, :, None, None] + bn.eps).sqrt()
                    * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]) * 6 ** -0.5
    out, amap = attn(x, return_attention=True)
    torch.testing.assert_close(amap, expected_map)
    expected = attn.proj((expected_map @ v).transpose(1, 2).reshape(2, 7, 24))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(attn(x), expected)


@torch.no_grad()
def test_scaled_residual_block_formula():
    block = ScaledResidualBlock(24, 4, branch_scale=0.5, mlp_ratio=3.0, qkv_bias=True,
                                norm_layer=LayerNorm6).eval()
    x = torch.randn(2, 5, 24) * 1e-3  # small input: LayerNorm's epsilon makes the 0.5 visible
    y = x + block.attn(block.norm1(0.5 * x)) / 0.5
    y = y + block.mlp(block.norm2(0.5 * y)) / 0.5
    torch.testing.assert_close(block(x), y)
    unscaled = x + block.attn(block.norm1(x))
    unscaled = unscaled + block.mlp(block.norm2(unscaled))
    assert not torch.allclose(block(x), unscaled)


@torch.no_grad()
def test_onnx_export_matches_onnxruntime(tmp_path):
    model = zoo.create_model('deepvit_l', depth=3, num_reattention_blocks=2, img_size=64).eval()
    assert_onnx_matches(model, tmp_path, (64, 64))


def test_side_not_multiple_of_stride_is_explained():
    model = zoo.create_model('deepvit_s', depth=1)
    with pytest.raises(ValueError, match=r'40x32 is not a multiple of the patch stride 16x16'):
        model(torch.randn(1, 3, 40, 32))


# Batch norm on padded maps. The references restate batch norm from its definition: per channel,
# the biased mean and variance over the entries that count normalise them; the running statistics
# move by the momentum towards that mean and the unbiased variance.

def _channel(t):
    """A per-channel vector (C,) as (1, C, 1, 1)."""
    return t[None, :, None, None]


def _mixed_map_by_hand(attn: ReAttention, x, key_mask):
    """x (B, N, D) -> the softmax map over the real keys mixed across the heads, before the norm
    (B, h, N, N), and v (B, h, N, d)."""
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    logits = (q @ k.transpose(-2, -1) * attn.scale).masked_fill(~key_mask[:, None, None, :], -1e9)
    mixed = torch.einsum('gh,bhij->bgij', attn.head_mix.weight[:, :, 0, 0], logits.softmax(-1))
    return mixed + _channel(attn.head_mix.bias), v


def _re_attention_with_statistics():
    """ReAttention (16 wide, 4 heads of 4) in training with a non-trivial norm and running
    statistics."""
    attn = ReAttention(16, num_heads=4, qkv_bias=True, scale_map=True).train()
    with torch.no_grad():
        attn.head_norm.weight.uniform_(0.5, 1.5)
        attn.head_norm.bias.uniform_(-0.5, 0.5)
        attn.head_norm.running_mean.uniform_(-0.1, 0.1)
        attn.head_norm.running_var.uniform_(0.5, 1.5)
    return attn


def test_re_attention_batch_norm_in_training_counts_real_query_key_pairs_only():
    attn = _re_attention_with_statistics()
    bn = attn.head_norm
    mean0, var0 = bn.running_mean.clone(), bn.running_var.clone()
    # Image padding (image 1), scattered padding (image 2), none (image 0); qkv bias on and padded
    # tokens not zero, so counting them would show.
    key_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 1, 0, 0, 1]]).bool()
    x = torch.randn(3, 6, 16) * 2
    out, amap = attn(x, return_attention=True, key_mask=key_mask)
    with torch.no_grad():
        mixed, v = _mixed_map_by_hand(attn, x, key_mask)
        pairs = key_mask[:, :, None] & key_mask[:, None, :]  # (B, N, N): real query, real key
        entries = mixed.permute(1, 0, 2, 3)[:, pairs]  # (h, number of real pairs)
        mean, var = entries.mean(1), entries.var(1, unbiased=False)
        expected_map = ((mixed - _channel(mean)) / _channel(var + bn.eps).sqrt()
                        * _channel(bn.weight) + _channel(bn.bias)) * 4 ** -0.5
        expected_map = expected_map * key_mask[:, None, None, :]
        expected = attn.proj((expected_map @ v).transpose(1, 2).reshape(3, 6, 16))
    # (number of real pairs, h); a padded query's row is dropped downstream, whatever it holds
    torch.testing.assert_close(amap.permute(0, 2, 3, 1)[pairs],
                               expected_map.permute(0, 2, 3, 1)[pairs])
    assert (amap.permute(0, 3, 1, 2)[~key_mask] == 0).all()  # masked keys keep zero weight
    torch.testing.assert_close(out[key_mask], expected[key_mask])
    torch.testing.assert_close(bn.running_mean, 0.9 * mean0 + 0.1 * mean)
    torch.testing.assert_close(bn.running_var, 0.9 * var0 + 0.1 * entries.var(1, unbiased=True))
    assert bn.num_batches_tracked == 1


def test_padded_image_trains_re_attention_as_its_real_tokens_alone():
    # One image, two of its seven tokens padding: output, running statistics and gradients are
    # those of the same layer on the five real tokens with no padding at all.
    padded = _re_attention_with_statistics()
    alone = copy.deepcopy(padded)
    key_mask = torch.tensor([[1, 1, 0, 1, 1, 1, 0]]).bool()
    x = torch.randn(1, 7, 16) * 2
    out = padded(x, key_mask=key_mask)[key_mask]
    out_alone = alone(x[key_mask][None])[0]
    torch.testing.assert_close(out, out_alone)
    for name in ['running_mean', 'running_var', 'num_batches_tracked']:
        torch.testing.assert_close(getattr(padded.head_norm, name), getattr(alone.head_norm, name))
    target = torch.randn_like(out)
    (out * target).sum().backward()
    (out_alone * target).sum().backward()
    for (name, p), q in zip(padded.named_parameters(), alone.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


@pytest.mark.parametrize('momentum', [0.1, None])
def test_masked_batch_norm_is_batch_norm_of_the_valid_entries(momentum):
    bn = torch.nn.BatchNorm2d(3, momentum=momentum)
    reference = copy.deepcopy(bn)
    for _ in range(2):  # the second step moves running statistics that are not the initial ones
        x = torch.randn(2, 3, 4, 5, requires_grad=True)
        valid = torch.rand(2, 1, 4, 5) > 0.4
        x.data.masked_fill_(~valid, float('nan'))  # what is not valid must reach nothing
        out = masked_batch_norm(x, valid, bn)
        entries = x.permute(1, 0, 2, 3)[:, valid[:, 0]]  # (C, number of valid entries)
        expected = reference(entries[None, :, :, None])[0, :, :, 0]  # a batch of those alone
        torch.testing.assert_close(out.permute(1, 0, 2, 3)[:, valid[:, 0]], expected)
        assert (out.permute(1, 0, 2, 3)[:, ~valid[:, 0]] == 0).all()
        for name in ['running_mean', 'running_var', 'num_batches_tracked']:
            torch.testing.assert_close(getattr(bn, name), getattr(reference, name))
        target = torch.randn_like(expected)
        (grad,) = torch.autograd.grad((expected * target).sum(), x)
        (ours,) = torch.autograd.grad((out.permute(1, 0, 2, 3)[:, valid[:, 0]] * target).sum(), x)
        torch.testing.assert_close(ours, grad.nan_to_num())
        assert torch.isfinite(ours).all()


def test_re_attention_masked_training_is_finite_and_eval_is_unchanged():
    attn = _re_attention_with_statistics()
    # The last window is all padding: its entries count nowhere and must not turn into NaN.
    key_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]]).bool()
    x = torch.randn(3, 5, 16, requires_grad=True)
    out, amap = attn(x, return_attention=True, key_mask=key_mask)
    assert torch.isfinite(out).all() and (amap[2] == 0).all()
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    assert torch.isfinite(attn.head_norm.running_var).all()
    # Eval: the running statistics normalise every entry on its own, as before.
    attn.eval()
    with torch.no_grad():
        out, amap = attn(x, return_attention=True, key_mask=key_mask)
        mixed, v = _mixed_map_by_hand(attn, x, key_mask)
        bn = attn.head_norm
        std = _channel(bn.running_var + bn.eps).sqrt()
        expected_map = ((mixed - _channel(bn.running_mean)) / std * _channel(bn.weight)
                        + _channel(bn.bias)) * 4 ** -0.5
        expected_map = expected_map * key_mask[:, None, None, :]
    # Rows 0 and 1 as before; row 2, every key masked, is a zero map as in training.
    torch.testing.assert_close(amap[:2], expected_map[:2])
    assert (amap[2] == 0).all() and torch.isfinite(out).all()
    expected = attn.proj((expected_map @ v).transpose(1, 2).reshape(3, 5, 16))
    torch.testing.assert_close(out[:2][key_mask[:2]], expected[:2][key_mask[:2]])
