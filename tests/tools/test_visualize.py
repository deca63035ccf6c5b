"""The numbers behind tools/visualize.py's figures (zoo.analysis, detection.analysis), its bad-input
errors, and one run of every sub-command on small models."""
import gc
import os
import re
import sys
import weakref

import pytest
import torch
from mmengine.config import Config
from PIL import Image

import zoo
from detection.ms_deform_attn import MSDeformAttn, ms_deform_attn
from zoo import analysis as za
from zoo.models._base import tokens_to_map
from helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, 'tools'))


def small_vit(**kw):
    return zoo.create_model('vit_tiny_patch16_224', depth=3, img_size=64, num_classes=0, **kw).eval()


def hand_rollout(maps, prefix=1):
    """Abnar and Zuidema's rollout written out: heads averaged, 0.5 A + 0.5 I, A'_L ... A'_1."""
    r = torch.eye(maps[0].shape[-1]).repeat(len(maps[0]), 1, 1)
    for a in maps:
        a = a.mean(1)
        r = torch.bmm(0.5 * a + 0.5 * torch.eye(a.shape[-1]), r)
    return r[:, 0, prefix:]


def test_rollout_equals_hand_computation():
    model, x = small_vit(), torch.randn(2, 3, 64, 64)
    expected = hand_rollout(model.get_attention_maps(x)).reshape(2, 4, 4)
    torch.testing.assert_close(za.attention_rollout(model, x), expected)


def test_rollout_cait_own_form_by_hand():
    """CaiT: self-attention over patches (the class token keeps its row), then class attention
    (the patches keep theirs), all in one product over [cls, patches]."""
    model = zoo.create_model('cait_xxs24_224', depth=2, img_size=64, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = model.get_attention_maps(x)
    n = 16
    r = torch.eye(1 + n)
    for a in maps:
        a = a[0].mean(0)
        full = torch.eye(1 + n)
        if a.shape[0] == n:
            full[1:, 1:] = a
        else:
            full[0] = a[0]
        r = (0.5 * full + 0.5 * torch.eye(1 + n)) @ r
    torch.testing.assert_close(za.attention_rollout(model, x)[0], r[0, 1:].reshape(4, 4))


def test_rollout_of_ceit_and_cvt_runs_on_their_grid():
    x = torch.randn(1, 3, 64, 64)
    ceit = zoo.create_model('ceit_t', depth=2, img_size=64, num_classes=0).eval()
    cvt = zoo.create_model('cvt_13', depths=(1, 1, 2), num_classes=0).eval()
    assert za.attention_rollout(ceit, x).shape == (1, 4, 4)
    r = za.attention_rollout(cvt, x)
    assert r.shape == (1, 4, 4) and torch.isfinite(r).all() and r.sum() > 0


def test_spread_keys_keeps_row_sums():
    attn = torch.rand(2, 1 + 25, 1 + 9).softmax(-1)  # 5 x 5 queries, 3 x 3 keys (stride 2)
    spread = za._spread_keys(attn, (5, 5), (3, 3), prefix=1)
    assert spread.shape == (2, 26, 26)
    torch.testing.assert_close(spread.sum(-1), attn.sum(-1))


def test_token_attention_is_the_models_row_not_its_column():
    model, x = small_vit(), torch.randn(1, 3, 64, 64)
    maps = model.get_attention_maps(x)
    pixel = (20, 40)  # patch row 1, column 2 of the 4 x 4 grid: token 1 + 4 + 2
    q = 1 + 1 * 4 + 2
    records = za.token_attention(model, x, pixel)
    assert len(records) == len(maps)
    for r, a in zip(records, maps):
        torch.testing.assert_close(r.attn, a[:, :, q, 1:].reshape(1, -1, 4, 4))
        assert not torch.allclose(r.attn, a[:, :, 1:, q].reshape(1, -1, 4, 4))
    cls = za.token_attention(model, x, 'cls')
    torch.testing.assert_close(cls[0].attn, maps[0][:, :, 0, 1:].reshape(1, -1, 4, 4))


def test_channel_fractions_on_a_hand_made_map():
    fmap = torch.zeros(1, 10, 4, 4)
    fmap[0, :8] = torch.tensor([1.0, -1.0]).repeat(8)[:16].reshape(4, 4)  # RMS 1, peak 1
    fmap[0, 9, 2, 3] = 100.0  # RMS sqrt(100^2 / 16) = 25; channel 8 stays zero
    # s = (8 * 1 + 0 + 25) / 10 = 3.3: dead below 0.05 s = 0.165, extreme above 10 s = 33
    dead, extreme = za.channel_fractions(fmap)
    assert dead.tolist() == [pytest.approx(0.1)] and extreme.tolist() == [pytest.approx(0.1)]
    dead, extreme = za.channel_fractions(fmap, dead_thr=0.4, extreme_thr=40.0)  # 1 <= 1.32; 100 < 132
    assert dead.tolist() == [pytest.approx(0.9)] and extreme.tolist() == [0.0]
    dead, extreme = za.channel_fractions(torch.zeros(1, 3, 2, 2))
    assert dead.tolist() == [1.0] and extreme.tolist() == [0.0]


def test_feature_maps_by_depth_are_the_block_outputs():
    model = zoo.create_model('vit_tiny_patch16_224', depth=5, img_size=64, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    lines = []
    records = za.feature_maps_by_depth(model, x, num_channels=4, log=lines.append)
    assert [r.index for r in records] == list(range(5)) and len(lines) == 5
    drawn = [r.index for r in records if r.channels is not None]
    assert drawn == za.default_depths(5)
    with torch.no_grad():
        tokens, grid = model.embed(x)
        for i, block in enumerate(model.blocks):
            tokens = block(tokens, grid=grid)
            if records[i].channels is not None:
                torch.testing.assert_close(records[i].channels, tokens_to_map(tokens, grid, 1)[:, :4])


def test_resnet50_depths_are_its_bottlenecks():
    model = za.create_analysis_model('resnet50')
    records = za.feature_maps_by_depth(model, torch.randn(1, 3, 64, 64), depths=[0, -1], num_channels=2)
    assert len(records) == 16 and records[-1].num_channels == 2048
    assert records[0].channels.shape == (1, 2, 16, 16)


def test_attention_maps_are_streamed_one_block_at_a_time():
    model, x = small_vit(), torch.randn(1, 3, 64, 64)
    refs, alive = [], []

    def consume(index, name, block, attn, grid):
        gc.collect()
        alive.append(sum(r() is not None for r in refs))
        refs.append(weakref.ref(attn))

    za.stream_attention_maps(model, x, consume)
    assert alive == [0, 0, 0]  # when a block's map arrives, no earlier map is held anywhere


def test_unknown_model_name():
    with pytest.raises(ValueError, match='unknown model .vit_tiny_patch16_225.*did you mean'):
        za.create_analysis_model('vit_tiny_patch16_225')


def test_file_that_is_not_an_image(tmp_path):
    path = tmp_path / 'notes.png'
    path.write_text('not a picture')
    with pytest.raises(ValueError, match='is not an image'):
        za.load_image(str(path))


def test_checkpoint_of_another_model(tmp_path):
    path = tmp_path / 'vit.pth'
    torch.save(small_vit().state_dict(), path)
    with pytest.raises(ValueError, match='is not a checkpoint of t2t_vit_7'):
        za.create_analysis_model('t2t_vit_7', checkpoint=str(path))


def test_detection_checkpoint_of_another_detector(tmp_path):
    from infer import load_detector
    from mmengine.registry import MODELS
    import detection.engine  # noqa: F401
    detr = Config.fromfile(os.path.join(ROOT, 'configs/demo/detr_t2t_shapes.py'))
    deformable = Config.fromfile(os.path.join(ROOT, 'configs/demo/deformable_detr_t2t_shapes.py'))
    path = tmp_path / 'deformable.pth'
    torch.save(dict(state_dict=MODELS.build(deformable.model).state_dict()), path)
    with pytest.raises(ValueError, match="is not a checkpoint of this config's detector"):
        load_detector(detr, str(path))


def test_pixel_outside_the_image():
    model, x = small_vit(), torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r'pixel \(y, x\) = \(10, 64\) is outside the 64 x 64 image'):
        za.token_attention(model, x, (10, 64))


def test_deformable_points_are_drawn_where_ms_deform_attn_samples():
    """One point per head: the value at every level pixel is its own (x, y) centre coordinate,
    which bilinear sampling reproduces exactly inside the map, so ms_deform_attn returns the
    coordinate it sampled; the figure's scatter must sit there (scaled to the image)."""
    from detection.analysis import DetectionAttention, locations_to_pixels, plot_detection_attention
    torch.manual_seed(0)
    heads, shapes = 4, torch.tensor([[8, 12], [4, 6]])
    attn = MSDeformAttn(dim=32, num_levels=2, num_heads=heads, num_points=1)
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.05)
    torch.nn.init.zeros_(attn.sampling_offsets.bias)
    query = torch.randn(1, 3, 32)
    ref = (0.3 + 0.4 * torch.rand(1, 3, 1, 2)).expand(-1, -1, 2, -1)  # inside, away from borders
    with torch.no_grad():
        locations, weights = attn.sampling(query, ref, shapes)
    # between the outermost pixel centres of the coarsest level (4 x 6), where bilinear is exact
    assert ((locations > 0.5 / 4) & (locations < 1 - 0.5 / 4)).all()
    assert locations.std() > 0.05  # the points do move around
    values, starts = [], [0, 96]
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing='ij')
        values.append(torch.stack([xs, ys], -1).reshape(h * w, 1, 2).expand(-1, heads, -1))
    value = torch.cat(values)[None]  # (1, S, M, 2): each pixel's (x, y) on its level
    image_size = (64, 96)  # the padded input is the image: 8 px per level-0 pixel
    drawn = locations_to_pixels(locations, image_size, image_size, image_size)
    for level, (h, w) in enumerate(shapes.tolist()):
        only = torch.zeros_like(weights)
        only[:, :, :, level] = 1.0
        sampled = ms_deform_attn(value, shapes, torch.tensor(starts), locations, only)
        sampled = sampled.reshape(1, 3, heads, 2) * torch.tensor([96 / w, 64 / h])
        torch.testing.assert_close(drawn[:, :, :, level, 0], sampled)
    result = DetectionAttention(
        'deformable', torch.zeros(64, 96, 3),
        [dict(query=q, label=0, score=1.0, box=torch.tensor([0.0, 0, 10, 10])) for q in range(3)],
        [], dict(points=drawn[0], weights=weights[0]), None, strides=[8, 16])
    fig = plot_detection_attention(result, ['a'], None)
    for q in range(3):
        for level in range(2):
            ax = fig.subfigs[0].axes[q * 2 + level]
            torch.testing.assert_close(torch.tensor(ax.collections[0].get_offsets().data, dtype=torch.float32),
                                       drawn[0, q, :, level, 0])


def test_detr_cross_attention_hook_leaves_the_output_alone():
    from mmengine.registry import MODELS
    import detection.engine  # noqa: F401
    from detection.analysis import multihead_attention_weights
    cfg = Config.fromfile(os.path.join(ROOT, 'configs/demo/detr_t2t_shapes.py'))
    net = MODELS.build(cfg.model).eval().net
    images, masks = torch.randn(1, 3, 64, 96), torch.zeros(1, 64, 96, dtype=torch.bool)
    with torch.no_grad():
        plain = net(images, masks)['pred_boxes']
        dec = net.transformer.decoder[-1].cross_attn
        with multihead_attention_weights([dec]) as store:
            hooked = net(images, masks)['pred_boxes']
    torch.testing.assert_close(hooked, plain)
    weights = store[dec]
    assert weights.shape == (1, 4, 4, 4 * 6)  # heads, queries, 4 x 6 positions at stride 16
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 4, 4))


# -- the command ---------------------------------------------------------------------------------
def run_tool(*argv):
    import visualize
    visualize.main([str(a) for a in argv])


def test_tool_bad_inputs_exit_with_the_reason(tmp_path, capsys):
    not_image = tmp_path / 'x.jpg'
    not_image.write_bytes(b'\x00' * 10)
    cases = [(['features', '--models', 'vit_tiny_patch16_225'], 'unknown model'),
             (['rollout', '--models', 'vit_tiny_patch16_224', '--image', not_image], 'is not an image'),
             (['attention', '--model', 'vit_tiny_patch16_224', '--image', not_image], 'is not an image')]
    img = tmp_path / 'img.png'
    Image.new('RGB', (40, 30)).save(img)
    cases.append((['attention', '--model', 'vit_tiny_patch16_224', '--image', img, '--pixel', 30, 5],
                  r'pixel \(y, x\) = \(30, 5\) is outside the 30 x 40 image'))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run_tool(*argv, '--out', tmp_path / 'o.png')
        assert e.value.code == 2
        assert re.search(message, capsys.readouterr().err)


def test_tool_makes_every_figure(tmp_path, capsys):
    img = tmp_path / 'img.png'
    Image.new('RGB', (64, 48), (200, 30, 30)).save(img)
    run_tool('features', '--models', 'resnet50', 't2t_vit_7', '--image', img, '--img-size', 64,
             '--out', tmp_path / 'f.png')
    run_tool('attention', '--model', 'cvt_13', '--image', img, '--pixel', 10, 20, '--img-size', 64,
             '--out', tmp_path / 'a.png')
    run_tool('rollout', '--models', 'cait_xxs24_224', 'ceit_t', '--image', img, '--img-size', 64,
             '--out', tmp_path / 'r.png')
    for config in ('detr_t2t_shapes', 'deformable_detr_t2t_shapes'):
        run_tool('detection', os.path.join(ROOT, f'configs/demo/{config}.py'), '--image', img,
                 '--pixels', 5, 5, '--out', tmp_path / f'{config}.png')
    out = capsys.readouterr().out
    assert 't2t_vit_7: blocks.6 (7/7)' in out  # progress, a line per block
    for name in ['f.png', 'a.png', 'r.png', 'detr_t2t_shapes.png', 'deformable_detr_t2t_shapes.png']:
        assert 1000 < (tmp_path / name).stat().st_size < 300_000
    table = (tmp_path / 'f.csv').read_text().splitlines()
    assert len(table) == 1 + 16 + 7 and table[16].startswith('resnet50,layer4.2,16,2048,')


# The smallest variant of every family, at 64 px (positions resampled), for the per-family run.
FAMILY_VARIANTS = ['vit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224', 'deepvit_s', 'cait_xxs24_224',
                   'cpvt_ti', 'cvt_13', 'ceit_t', 't2t_vit_7']


@pytest.mark.parametrize('name', FAMILY_VARIANTS)
def test_every_family_gives_features_token_attention_and_rollout(name):
    model = zoo.create_model(name, img_size=64, num_classes=0).eval()
    x = torch.randn(1, 3, 64, 64)
    layers = za.feature_layers(model)
    records = za.feature_maps_by_depth(model, x, num_channels=4)
    assert len(records) == len(layers) and sum(r.channels is not None for r in records) == min(4, len(layers))
    assert all(0 <= r.dead[0] <= 1 and 0 <= r.extreme[0] <= 1 for r in records)
    rows = za.token_attention(model, x, (40, 20))
    # (re-attention and talking heads mix heads after the softmax: their maps may be negative)
    assert rows and all(torch.isfinite(r.attn).all() and r.attn.abs().sum() > 0 for r in rows)
    rollout = za.attention_rollout(model, x)
    assert rollout.dim() == 3 and rollout.shape[0] == 1 and torch.isfinite(rollout).all() and rollout.abs().sum() > 0
