"""CPVT. No official CPVT code or weights were released (Meituan-AutoML/CPVT holds only a README;
the PEG code came out with Twins as ``PosCNN``, which timm 1.0.31 ships as
``timm.models.twins.PosConv``). The reference here is assembled from timm parts: timm's
VisionTransformer without a position table (DeiT widths) plus timm's PosConv after the PEG blocks,
as the CPVT paper's listing wires them."""
import pytest
import timm
import torch
from timm.models.twins import PosConv
from timm.models.vision_transformer import VisionTransformer as TimmViT

import zoo
from helpers import assert_detection_mode, assert_onnx_matches, count_params
from zoo.layers.peg import PositionalEncodingGenerator

CPVT = zoo.list_models('cpvt_*')
WIDTHS = {'ti': (192, 3), 's': (384, 6), 'b': (768, 12)}


def _arch(name):
    dim, heads = WIDTHS[name.split('_')[1]]
    gap = name.endswith('_gap')
    return dim, heads, gap, (0, 1, 2, 3, 4) if gap else (0,)


def test_all_six_variants_are_registered():
    assert CPVT == sorted(['cpvt_ti', 'cpvt_s', 'cpvt_b',
                           'cpvt_ti_gap', 'cpvt_s_gap', 'cpvt_b_gap'])


# By hand, DeiT's count (timm: 5,717,416 / 22,050,664 / 86,567,656) minus its position table
# (197 x D) plus one depthwise 3x3 PEG (9D + D) per position; GAP also drops the class token (D):
#   cpvt_ti     5,717,416 -  37,824       +  1,920 =  5,681,512
#   cpvt_ti_gap 5,717,416 -  37,824 - 192 + 9,600 =  5,689,000
#   cpvt_s     22,050,664 -  75,648       +  3,840 = 21,978,856
#   cpvt_s_gap 22,050,664 -  75,648 - 384 + 19,200 = 21,993,832
#   cpvt_b     86,567,656 - 151,296       +  7,680 = 86,424,040
#   cpvt_b_gap 86,567,656 - 151,296 - 768 + 38,400 = 86,453,992
BY_HAND = {'cpvt_ti': 5_681_512, 'cpvt_ti_gap': 5_689_000, 'cpvt_s': 21_978_856,
           'cpvt_s_gap': 21_993_832, 'cpvt_b': 86_424_040, 'cpvt_b_gap': 86_453_992}


@pytest.mark.parametrize('name', CPVT)
def test_parameter_count(name):
    dim, heads, gap, positions = _arch(name)
    with torch.device('meta'):
        ours = zoo.create_model(name)
        vit = TimmViT(embed_dim=dim, depth=12, num_heads=heads, pos_embed='none',
                      class_token=not gap, global_pool='avg' if gap else 'token')
        peg = PosConv(dim, dim)
    assert count_params(ours) == BY_HAND[name] == count_params(vit) + len(positions) * count_params(peg)
    # CPVT paper: 5.7M (0.1M rounding) for Ti, 22M / 86M (whole M) for S / B.
    paper = zoo.get_model_info(name).paper['params']
    assert abs(count_params(ours) / 1e6 - paper) <= (0.05 if paper != int(paper) else 0.5)


@torch.no_grad()
def test_peg_matches_timm_posconv_and_skips_the_class_token():
    ours = PositionalEncodingGenerator(32)
    theirs = PosConv(32, 32, stride=1)
    theirs.proj[0].weight.copy_(ours.proj.weight)
    theirs.proj[0].bias.copy_(ours.proj.bias)
    x = torch.randn(2, 1 + 5 * 7, 32)
    out = ours(x, (5, 7))
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], theirs(x[:, 1:], (5, 7)))
    # the prefix is what the grid leaves over: the patches alone (detection mode) give the same
    torch.testing.assert_close(ours(x[:, 1:], (5, 7)), out[:, 1:])


def _reference(name, depth):
    """timm ViT (no position table) + timm PosConv after the PEG blocks, in official layout.
    GAP: final norm, then the mean over the patches (fc_norm off), as Twins' CPVTV2 does."""
    dim, heads, gap, positions = _arch(name)
    timm.layers.set_fused_attn(False)
    try:
        vit = TimmViT(embed_dim=dim, depth=depth, num_heads=heads, pos_embed='none',
                      class_token=not gap, global_pool='avg' if gap else 'token',
                      fc_norm=False, dynamic_img_size=True).eval()
    finally:
        timm.layers.set_fused_attn(True)
    pegs = {i: PosConv(dim, dim).eval() for i in positions if i < depth}
    with torch.no_grad():
        for peg in pegs.values():
            peg.proj[0].weight.normal_(0, 0.3)
            peg.proj[0].bias.normal_(0, 0.1)

    def forward(x):
        grid = (x.shape[-2] // 16, x.shape[-1] // 16)
        t = vit.patch_embed(x)
        t = vit._pos_embed(t)  # only prepends the class token: there is no table
        n = vit.num_prefix_tokens
        for i, block in enumerate(vit.blocks):
            t = block(t)
            if i in pegs:
                t = torch.cat([t[:, :n], pegs[i](t[:, n:], grid)], dim=1)
        return vit.forward_head(vit.norm(t))

    sd = dict(vit.state_dict())
    # Official (Twins PosCNN) layout: pos_block.{i}.proj.0.*, a Sequential around the conv.
    for j, i in enumerate(sorted(pegs)):
        sd[f'pos_block.{j}.proj.0.weight'] = pegs[i].proj[0].weight
        sd[f'pos_block.{j}.proj.0.bias'] = pegs[i].proj[0].bias
    return forward, sd


@pytest.mark.parametrize('name', ['cpvt_ti', 'cpvt_ti_gap', 'cpvt_s_gap'])
@torch.no_grad()
def test_outputs_match_timm_assembled_reference(name):
    depth = 6
    forward, sd = _reference(name, depth)
    ours = zoo.create_model(name, depth=depth).eval()
    zoo.load_pretrained(ours, {'model': {f'module.{k}': v for k, v in sd.items()}})
    for size in [(224, 224), (176, 272)]:
        x = torch.randn(1, 3, *size)
        diff = (ours(x) - forward(x)).abs().max().item()
        assert diff <= 1e-5, (name, size, diff)


def test_single_peg_layout_of_the_paper_listing_loads():
    """The paper's listing keeps one bare ``pos_block.proj`` conv."""
    src = zoo.create_model('cpvt_ti', depth=2)
    sd = {k.replace('pos_block.0.proj.', 'pos_block.proj.'): v for k, v in src.state_dict().items()}
    assert 'pos_block.proj.weight' in sd
    dst = zoo.load_pretrained(zoo.create_model('cpvt_ti', depth=2), sd)
    torch.testing.assert_close(dst.pos_block[0].proj.weight, src.pos_block[0].proj.weight)


def test_missing_peg_is_reported():
    sd = zoo.create_model('cpvt_ti_gap', depth=5).state_dict()
    del sd['pos_block.4.proj.bias']
    with pytest.raises(zoo.CheckpointMismatchError, match='pos_block.4.proj.bias'):
        zoo.load_pretrained(zoo.create_model('cpvt_ti_gap', depth=5), sd)


def test_structure():
    with torch.device('meta'):
        ti, gap = zoo.create_model('cpvt_ti'), zoo.create_model('cpvt_s_gap')
    assert ti.pos_embed is None and ti.cls_token is not None and ti.peg_positions == (0,)
    assert gap.cls_token is None and gap.num_prefix_tokens == 0 and gap.global_pool == 'avg'
    assert gap.peg_positions == (0, 1, 2, 3, 4)
    assert not any(k.startswith(('pos_embed', 'cls_token')) for k in gap.state_dict())
    assert ti.no_weight_decay() == {'cls_token', 'pos_block.0.proj.weight', 'pos_block.0.proj.bias'}
    with pytest.raises(ValueError, match='class token'):
        zoo.create_model('cpvt_ti', class_token=False, global_pool='token')
    with pytest.raises(ValueError, match='peg_positions'):
        zoo.create_model('cpvt_ti_gap', depth=3)


@pytest.mark.parametrize('name', CPVT)
def test_gradients_reach_every_parameter(name):
    """Every variant's widths, 5 blocks: all five PEG positions of the GAP variants."""
    # drop-path on, but low enough that no branch drops all 4 samples (zero grad by chance)
    model = zoo.create_model(name, depth=5, num_classes=5, drop_path_rate=0.05).train()
    model(torch.randn(4, 3, 32, 48)).square().mean().backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize('name', ['cpvt_ti', 'cpvt_ti_gap'])
@torch.no_grad()
def test_feature_maps_follow_feature_info_on_non_square_input(name):
    model = zoo.create_model(name, depth=6).eval()
    assert model.feature_info[0]['stride'] == 16 and model.feature_info[0]['channels'] == 192
    x = torch.randn(1, 3, 16 * 5, 16 * 8)
    (fmap,) = model.forward_feature_maps(x)
    assert fmap.shape == (1, 192, 5, 8)
    tokens = model.forward_features(x)
    assert tokens.shape == (1, model.num_prefix_tokens + 40, 192)
    assert_detection_mode(model, x, fmap)
    if name.endswith('gap'):  # no class token: the map is exactly forward_features' patches
        torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens)
        # GAP head: the mean of the patch tokens
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens.mean(1))


@torch.no_grad()
def test_any_input_size_without_resampling():
    model = zoo.create_model('cpvt_ti', depth=2).eval()
    for size in [(32, 32), (224, 224), (400, 144)]:
        assert model(torch.randn(1, 3, *size)).shape == (1, 1000)


@pytest.mark.parametrize('name', ['cpvt_ti', 'cpvt_ti_gap'])
@torch.no_grad()
def test_fused_and_explicit_attention_agree_and_maps(name):
    fused = zoo.create_model(name, depth=6).eval()
    explicit = zoo.create_model(name, depth=6, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 112, 160)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    maps = fused.get_attention_maps(x)
    n = fused.num_prefix_tokens + 7 * 10
    assert len(maps) == 6 and maps[0].shape == (2, 3, n, n)
    torch.testing.assert_close(maps[-1].sum(-1), torch.ones(2, 3, n))


@torch.no_grad()
def test_onnx_export_matches_onnxruntime(tmp_path):
    model = zoo.create_model('cpvt_ti_gap', depth=5).eval()
    assert_onnx_matches(model, tmp_path, (64, 96))  # non-square: the PEGs follow the traced grid
