"""CaiT against timm 1.0.31, whose CaiT keeps the official key layout (facebookresearch/deit
cait_models.py: gamma_1 / gamma_2, attn.proj_l / proj_w, blocks_token_only.*), so timm state
dicts are official-layout checkpoints for the converter."""
import pytest
import timm
import torch

import zoo
from helpers import assert_onnx_matches, count_params
from zoo.layers import Attention
from zoo.layers.class_attention import ClassAttention
from zoo.layers.talking_heads import TalkingHeadsAttention

CAIT = zoo.list_models('cait_*')
LARGE_384 = {'cait_xs24_384', 'cait_s24_384', 'cait_s36_384', 'cait_m36_384'}
FAST_FULL_DEPTH = {'cait_xxs24_224'}


def test_all_seven_variants_are_registered():
    assert CAIT == sorted(['cait_xxs24_224', 'cait_xxs36_224', 'cait_xs24_384', 'cait_s24_224',
                           'cait_s24_384', 'cait_s36_384', 'cait_m36_384'])


@pytest.mark.parametrize('name', CAIT)
def test_parameter_count_equals_timm_and_paper(name):
    with torch.device('meta'):
        ours = zoo.create_model(name)
        theirs = timm.create_model(name, pretrained=False)
    assert count_params(ours) == count_params(theirs)
    # Paper table (0.1M) for the 224 models, README_cait.md (whole M) for the 384 ones.
    paper = zoo.get_model_info(name).paper['params']
    tol = 0.05 if paper != int(paper) else 0.5
    assert abs(count_params(ours) / 1e6 - paper) <= tol, (name, count_params(ours) / 1e6, paper)


def _timm_reference(name, **kw):
    timm.layers.set_fused_attn(False)
    try:
        model = timm.create_model(name, pretrained=False, **kw).eval()
    finally:
        timm.layers.set_fused_attn(True)
    # LayerScale starts at 1e-5 / 1e-6 and talking heads near random: make every branch count,
    # or a wrong block would hide under the tiny residual scale.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if 'gamma' in n:
                p.copy_(torch.randn_like(p) * 0.2)
            elif 'proj_l' in n or 'proj_w' in n:
                p.add_(torch.randn_like(p) * 0.3)
    return model


def _official(sd):
    """timm's keys are the official ones; add the release's wrapper and DDP prefix."""
    return {'model': {f'module.{k}': v for k, v in sd.items()}, 'epoch': 400}


def _side(name):
    return 384 if name.endswith('384') else 224


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n == 'cait_m36_384'
                                  else n for n in CAIT])
@torch.no_grad()
def test_outputs_match_timm_at_native_size_shallow(name):
    """Every variant's widths at its native size, 2 self-attention blocks on both sides."""
    theirs = _timm_reference(name, depth=2)
    ours = zoo.create_model(name, depth=2).eval()
    zoo.load_pretrained(ours, _official(theirs.state_dict()))
    x = torch.randn(1, 3, _side(name), _side(name))
    diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= 1e-5, (name, diff)


@pytest.mark.parametrize('name', [n if n in FAST_FULL_DEPTH
                                  else pytest.param(n, marks=pytest.mark.slow) for n in CAIT])
@torch.no_grad()
def test_outputs_match_timm_full_depth(name):
    theirs = _timm_reference(name)
    ours = zoo.create_model(name).eval()
    zoo.load_pretrained(ours, _official(theirs.state_dict()))
    x = torch.randn(1, 3, _side(name), _side(name))
    diff = (ours(x) - theirs(x)).abs().max().item()
    assert diff <= 1e-5, (name, diff)


@torch.no_grad()
def test_non_square_input_matches_timm_built_at_that_size():
    """timm's CaiT has no dynamic image size: the peer is timm built for 176x272 holding our
    converter's bicubically resampled table; ours keeps the 14x14 table and resamples per input."""
    theirs = _timm_reference('cait_xxs24_224', depth=3)
    ours = zoo.create_model('cait_xxs24_224', depth=3).eval()
    zoo.load_pretrained(ours, _official(theirs.state_dict()))
    at_size = zoo.create_model('cait_xxs24_224', depth=3, img_size=(176, 272)).eval()
    zoo.load_pretrained(at_size, _official(theirs.state_dict()))
    assert at_size.pos_embed.shape == (1, 11 * 17, 192)
    peer = _timm_reference('cait_xxs24_224', depth=3, img_size=(176, 272))
    peer.load_state_dict({k.replace('ls1.gamma', 'gamma_1').replace('ls2.gamma', 'gamma_2'): v
                          for k, v in at_size.state_dict().items()})
    x = torch.randn(2, 3, 176, 272)
    assert (ours(x) - peer(x)).abs().max() <= 1e-5
    assert (at_size(x) - peer(x)).abs().max() <= 1e-5


def test_converter_renames_layer_scale_and_loads_strictly():
    src = _timm_reference('cait_xxs24_224', depth=2, img_size=64).state_dict()
    assert 'blocks.0.gamma_1' in src and 'blocks_token_only.1.gamma_2' in src
    assert 'blocks.1.attn.proj_l.weight' in src and 'blocks_token_only.0.attn.k.weight' in src
    model = zoo.load_pretrained(zoo.create_model('cait_xxs24_224', depth=2, img_size=64),
                                _official(src))
    torch.testing.assert_close(model.blocks[0].ls1.gamma, src['blocks.0.gamma_1'])
    torch.testing.assert_close(model.blocks_token_only[1].ls2.gamma,
                               src['blocks_token_only.1.gamma_2'])


def test_wrong_layout_is_reported():
    sd = _timm_reference('cait_xxs24_224', depth=2, img_size=64).state_dict()
    del sd['blocks.1.attn.proj_w.bias']
    with pytest.raises(zoo.CheckpointMismatchError, match='blocks.1.attn.proj_w.bias'):
        zoo.load_pretrained(zoo.create_model('cait_xxs24_224', depth=2, img_size=64), sd)


def test_position_table_resampled_when_fine_tuning_at_another_resolution():
    sd = _timm_reference('cait_xxs24_224', depth=2).state_dict()  # 14 x 14 table
    model = zoo.load_pretrained(zoo.create_model('cait_xxs24_224', depth=2, img_size=384), sd)
    assert model.pos_embed.shape == (1, 24 * 24, 192)


@pytest.mark.parametrize('name', CAIT)
def test_gradients_reach_every_parameter(name):
    """Every variant's widths, 2 self-attention blocks and both class-attention blocks."""
    # drop-path on, but low enough that no branch drops all 4 samples (zero grad by chance)
    model = zoo.create_model(name, depth=2, num_classes=5, drop_path_rate=0.05).train()
    model(torch.randn(4, 3, 32, 48)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_variant_hyperparameters_follow_official_code():
    """Official cait_models.py: cait_S36 is 384 / 36 deep / 8 heads; XXS is 192 wide, 4 heads."""
    with torch.device('meta'):
        m = zoo.create_model('cait_s36_384')
        xxs36 = zoo.create_model('cait_xxs36_224', drop_path_rate=0.2)
    assert len(m.blocks) == 36 and len(m.blocks_token_only) == 2
    assert m.patch_embed.grid_size == (24, 24) and m.blocks[0].attn.num_heads == 8
    assert xxs36.blocks[0].attn.num_heads == 4 and xxs36.embed_dim == 192
    # drop-path constant over depth in the self-attention blocks, none in class attention
    assert {b.drop_path1.p for b in xxs36.blocks} == {0.2}
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in xxs36.blocks_token_only)


# Official cait_models.py init_scale: 1e-5 for the 24-deep models and, unlike the paper's rule,
# for the XXS36 release too; 1e-6 for S36 / M36.
@pytest.mark.parametrize('name,init', [('cait_xxs24_224', 1e-5), ('cait_xxs36_224', 1e-5),
                                       ('cait_s36_384', 1e-6)])
def test_layer_scale_init(name, init):
    model = zoo.create_model(name, depth=1, img_size=32)
    assert torch.all(model.blocks[0].ls1.gamma == torch.tensor(init))
    assert torch.all(model.blocks_token_only[0].ls2.gamma == torch.tensor(init))


@torch.no_grad()
def test_feature_maps_follow_feature_info_on_non_square_input():
    model = zoo.create_model('cait_xxs24_224', depth=2).eval()
    assert model.feature_info == [dict(channels=192, stride=16, module='norm')]
    x = torch.randn(1, 3, 16 * 5, 16 * 8)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, 192, 5, 8)
    # class attention leaves the patches alone: the map is forward_features' patch rows
    tokens = model.forward_features(x)
    assert tokens.shape == (1, 1 + 40, 192)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens[:, 1:])


@torch.no_grad()
def test_attention_maps():
    model = zoo.create_model('cait_xxs24_224', depth=3).eval()
    x = torch.randn(2, 3, 64, 96)
    maps = model.get_attention_maps(x)
    assert [m.shape for m in maps] == [(2, 4, 24, 24)] * 3 + [(2, 4, 1, 25)] * 2
    # class attention: a softmax over [cls, patches]
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 4, 1))


@torch.no_grad()
def test_talking_heads_with_identity_mixing_is_plain_attention():
    th = TalkingHeadsAttention(48, num_heads=4, qkv_bias=True).eval()
    plain = Attention(48, num_heads=4, qkv_bias=True, fused=False).eval()
    plain.load_state_dict(th.state_dict(), strict=False)
    for mix in (th.proj_l, th.proj_w):
        mix.weight.copy_(torch.eye(4))
        mix.bias.zero_()
    x = torch.randn(2, 7, 48)
    out, attn = th(x, return_attention=True)
    ref, ref_attn = plain(x, return_attention=True)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(attn, ref_attn)


@torch.no_grad()
def test_talking_heads_mixes_heads_and_has_no_fused_path():
    th = TalkingHeadsAttention(48, num_heads=4, fused=True)
    assert th.fused is False
    x = torch.randn(1, 5, 48)
    base = th(x)
    th.proj_w.weight[0, 1] += 1.0  # head 1's map now feeds head 0's output
    assert not torch.allclose(th(x), base)


@torch.no_grad()
def test_class_attention_fused_and_explicit_agree_and_update_only_cls():
    fused = zoo.create_model('cait_xxs24_224', depth=2).eval()
    explicit = zoo.create_model('cait_xxs24_224', depth=2, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    assert fused.blocks_token_only[0].attn.fused and not explicit.blocks_token_only[0].attn.fused
    x = torch.randn(2, 3, 224, 160)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    attn = ClassAttention(32, num_heads=2)
    assert not hasattr(attn, 'qkv')
    assert attn(torch.randn(3, 10, 32)).shape == (3, 1, 32)


def test_forward_head_pre_logits():
    model = zoo.create_model('cait_xxs24_224', depth=1).eval()
    feats = model.forward_features(torch.randn(1, 3, 32, 32))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 192)
    assert model.no_weight_decay() == {'pos_embed', 'cls_token'}


@torch.no_grad()
def test_onnx_export_matches_onnxruntime(tmp_path):
    model = zoo.create_model('cait_xxs24_224', depth=2, img_size=96).eval()
    with torch.no_grad():
        for b in model.blocks:  # visible residual branches
            b.ls1.gamma.fill_(0.5)
            b.ls2.gamma.fill_(0.5)
    assert_onnx_matches(model, tmp_path, (96, 96))


def test_mix_heads_equals_a_linear_over_heads_and_a_1x1_convolution():
    """zoo.layers.mix_heads (talking heads' proj_l / proj_w, re-attention's head_mix) against
    the two forms the official code writes: a Linear on the heads-last map (CaiT) and a 1x1
    Conv2d over the heads (DeepViT); forward and gradients."""
    from zoo.layers import mix_heads
    torch.manual_seed(0)
    attn = torch.randn(2, 4, 5, 7, requires_grad=True)
    linear, conv = torch.nn.Linear(4, 4), torch.nn.Conv2d(4, 4, kernel_size=1)
    ours = mix_heads(attn, linear.weight, linear.bias)
    reference = linear(attn.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    g = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, (attn, linear.weight, linear.bias), g)
    grads_ref = torch.autograd.grad(reference, (attn, linear.weight, linear.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mix_heads(attn, conv.weight.flatten(1), conv.bias), conv(attn),
                               rtol=1e-6, atol=1e-6)
