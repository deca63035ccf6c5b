"""ViTDet's parts (Li et al., ECCV 2022): decomposed relative position bias, the simple feature
pyramid's per-level convolutions, and the last block global.

The reference bias is written out here from its definition (ViTDet Sec. 4.1 after MViTv2 Eq. 4,
as detectron2's ``add_decomposed_rel_pos`` computes it): for a query at cell (i, j) and a key at
(k, l), logit += q . R_h[i - k] + q . R_w[j - l], with q the unscaled query. Offsets beyond a
table are clipped to its last row (the project's rule, so a padded batch cannot change it)."""
import pytest
import torch

import zoo
from detection.deformable_detr import DeformableDETR
from detection.neck import LayerNorm2d, MultiScaleNeck, ViTDetLevelProjection
from zoo.layers import Attention, TalkingHeadsAttention

from test_batch_invariance import _batch, _image


def _reference(attn, x, grid, key_mask=None):
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    logits = torch.empty(b, attn.num_heads, n, n)
    s_h, s_w = (attn.rel_pos_h.shape[0] + 1) // 2, (attn.rel_pos_w.shape[0] + 1) // 2
    for a in range(n):
        i, j = divmod(a, grid[1])
        for c in range(n):
            kk, ll = divmod(c, grid[1])
            dh = max(-(s_h - 1), min(s_h - 1, i - kk)) + s_h - 1
            dw = max(-(s_w - 1), min(s_w - 1, j - ll)) + s_w - 1
            logits[:, :, a, c] = (attn.scale * (q[:, :, a] * k[:, :, c]).sum(-1)
                                  + (q[:, :, a] * attn.rel_pos_h[dh]).sum(-1)
                                  + (q[:, :, a] * attn.rel_pos_w[dw]).sum(-1))
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[:, None, None, :], float('-inf'))
    out = logits.softmax(-1) @ v
    return attn.proj(out.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize('fused', [True, False])
@pytest.mark.parametrize('grad', [True, False])
def test_rel_pos_bias_is_the_decomposed_formula(fused, grad):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=2, qkv_bias=True, fused=fused)
    attn.set_rel_pos(3)  # offsets up to 2: a 4 x 5 grid exercises the clipping
    assert attn.rel_pos_h.shape == (5, 8) and not attn.rel_pos_h.any()  # zero at first
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x, grid = torch.randn(2, 20, 16), (4, 5)
    key_mask = torch.ones(2, 20, dtype=torch.bool)
    key_mask[1, 15:] = False
    with torch.set_grad_enabled(grad):
        for mask in (None, key_mask):
            torch.testing.assert_close(attn(x, grid=grid, key_mask=mask), _reference(attn, x, grid, mask),
                                       rtol=1e-5, atol=1e-5)


def test_talking_heads_rows_at_a_time_equal_the_whole_map():
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(16, num_heads=4)
    attn.set_rel_pos(4)
    with torch.no_grad():
        attn.rel_pos_h.normal_()
        attn.rel_pos_w.normal_()
    x, grid = torch.randn(2, 30, 16), (5, 6)
    whole = attn(x, grid=grid)
    attn.max_map_elements = 2 * 4 * 30 * 7  # seven query rows a chunk
    torch.testing.assert_close(attn(x, grid=grid), whole, rtol=1e-5, atol=1e-6)


def test_checkpoints_without_or_with_other_tables_load():
    attn = Attention(16, num_heads=2)
    plain = {k: v for k, v in attn.state_dict().items()}
    attn.set_rel_pos(7)
    attn.load_state_dict(plain)  # strict: the tables are added at their zero init
    assert attn.rel_pos_h.shape == (13, 8) and not attn.rel_pos_h.any()
    other = dict(plain, rel_pos_h=torch.arange(5.)[:, None].expand(5, 8), rel_pos_w=torch.zeros(5, 8))
    attn.load_state_dict(other)  # a table of another size is resampled linearly over the offsets
    # ViTDet's F.interpolate(mode='linear'): sample offset i at (i + 0.5) * 5 / 13 - 0.5 of the
    # old table, clamped to its ends; the old table holds its own index here
    expected = ((torch.arange(13.) + 0.5) * 5 / 13 - 0.5).clamp(0, 4)
    torch.testing.assert_close(attn.rel_pos_h[:, 0], expected)


def test_backbone_tables_cover_windows_and_the_global_canvas_and_the_last_block_is_global():
    model = zoo.create_model('deit_tiny_patch16_224', num_classes=0, depth=8)
    model.set_window_attention(4, global_blocks=2, rel_pos=True, rel_pos_size=64)
    windows = [b.window_size for b in model.window_blocks]
    assert windows == [4, 4, 4, 0, 4, 4, 4, 0]
    assert [b.attn.rel_pos_h.shape[0] for b in model.window_blocks] == [7, 7, 7, 127, 7, 7, 7, 127]
    with pytest.raises(ValueError, match='patch grid'):
        model(torch.randn(1, 3, 64, 64))  # classification (class token present) runs without


def test_vitdet_pyramid_levels_strides_and_convs():
    neck = MultiScaleNeck([dict(channels=64, stride=16)], hidden_dim=32, num_levels=4, vitdet_convs=True)
    assert neck.strides == [8, 16, 32, 64]
    for proj in neck.input_proj[:3]:
        assert isinstance(proj, ViTDetLevelProjection)
        assert proj.lateral.kernel_size == (1, 1) and proj.output.kernel_size == (3, 3)
        assert proj.lateral.bias is None and proj.output.bias is None
        assert isinstance(proj.lateral_norm, LayerNorm2d) and isinstance(proj.output_norm, LayerNorm2d)
    levels = neck([torch.randn(2, 64, 6, 10)])
    assert [tuple(x.shape) for x in levels] == [(2, 32, 12, 20), (2, 32, 6, 10), (2, 32, 3, 5), (2, 32, 2, 3)]
    # LayerNorm2d normalises each position over its channels
    x = torch.randn(2, 32, 3, 3)
    torch.testing.assert_close(LayerNorm2d(32)(x), torch.nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (32,)).permute(0, 3, 1, 2))


def test_vitdet_detector_is_batch_invariant():
    torch.manual_seed(0)
    model = DeformableDETR(dict(name='deit_tiny_patch16_224', depth=3, window_size=3, global_blocks=1,
                                rel_pos=True, rel_pos_size=8),
                           num_classes=3, num_queries=8, hidden_dim=32, num_heads=2, enc_layers=1,
                           dec_layers=1, ffn_dim=64, dropout=0.0, num_feature_levels=4, enc_points=2,
                           dec_points=2, vitdet_pyramid=True).eval()
    with torch.no_grad():
        for p in model.backbone.parameters():
            if p.ndim == 2 and p.shape[0] in (5, 15):  # the relative position tables
                p.normal_()
        model.bbox_embed[0].layers[-1].weight.normal_(0, 0.1)
        small, large = _image(80, 112, 1), _image(160, 224, 2)
        alone, batched = model(*_batch(small)), model(*_batch(small, large))
    torch.testing.assert_close(batched['pred_boxes'][:1], alone['pred_boxes'], rtol=0, atol=1e-4)
    torch.testing.assert_close(batched['pred_logits'][:1], alone['pred_logits'], rtol=0, atol=1e-4)
