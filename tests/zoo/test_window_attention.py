"""Window attention (ViTDet, Li et al. ECCV 2022) and activation checkpointing for every family.

The reference for window attention is written out here by hand: every real token of a window
attends to the real tokens of that window only (padding is no key), computed window by window
with index lists, with no padding and no masks at all."""
import pytest
import torch

import zoo
from zoo.layers import Attention, Block, LayerScale, ReAttention, TalkingHeadsAttention
from zoo.layers.squeeze_excite import SEAttention
from zoo.layers.window import global_block_indices, window_merge, window_partition

TOKEN_FAMILIES = ['vit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224', 'deepvit_s',
                  'cait_xxs24_224', 'cpvt_ti', 'ceit_t', 't2t_vit_7']
ALL_FAMILIES = TOKEN_FAMILIES + ['cvt_13']


def _windows_by_hand(grid, window):
    """Index lists of the real tokens in each window, row-major windows, row-major tokens."""
    (h, w), out = grid, []
    for top in range(0, h, window):
        for left in range(0, w, window):
            out.append([r * w + c for r in range(top, min(top + window, h))
                        for c in range(left, min(left + window, w))])
    return out


def test_partition_pads_masks_and_merges_back():
    x = torch.randn(2, 5 * 7, 4)
    windows, mask = window_partition(x, (5, 7), 3)
    assert windows.shape == (2 * 2 * 3, 9, 4) and mask.shape == (12, 9)
    for i, idx in enumerate(_windows_by_hand((5, 7), 3)):
        real = windows[i][mask[i]]  # first image's windows come first
        torch.testing.assert_close(real, x[0, idx], rtol=0, atol=0)
        assert (windows[i][~mask[i]] == 0).all()
    torch.testing.assert_close(window_merge(windows, (5, 7), 3), x, rtol=0, atol=0)
    # a window at least as large as the grid is the grid itself, with nothing padded
    whole, none = window_partition(x, (5, 7), 14)
    assert none is None and whole.shape == (2, 35, 4)


def test_global_blocks_are_evenly_spaced_with_the_last_included():
    assert global_block_indices(12, 4) == (2, 5, 8, 11)  # ViTDet's ViT-B choice
    assert global_block_indices(14, 4) == (2, 6, 9, 13)
    assert global_block_indices(7, 0) == ()
    with pytest.raises(ValueError, match='between 0 and the depth'):
        global_block_indices(4, 5)


def _attention_by_hand(attn: Attention, x: torch.Tensor, grid, window) -> torch.Tensor:
    """The module's own weights, run separately on each window's real tokens (no padding)."""
    out = torch.empty_like(x)
    for idx in _windows_by_hand(grid, window):
        out[:, idx] = attn(x[:, idx])
    return out


@pytest.mark.parametrize('layer', [Attention, TalkingHeadsAttention, ReAttention, SEAttention])
@pytest.mark.parametrize('fused', [True, False])
@torch.no_grad()
def test_block_window_attention_equals_the_hand_written_reference(layer, fused):
    torch.manual_seed(0)
    # qkv bias on: a padded token's value is then not zero, so a leak would show
    block = Block(16, 4, qkv_bias=True, attn_layer=layer, fused_attn=fused).eval()
    if isinstance(block.attn, ReAttention):  # a non-trivial head norm
        block.attn.head_norm.running_mean.uniform_(-0.1, 0.1)
        block.attn.head_norm.running_var.uniform_(0.5, 1.5)
    grid, window = (5, 7), 3  # padded to 6 x 9: windows of 9, 6, 3 and 1 real tokens
    x = torch.randn(2, 35, 16)
    block.window_size = window
    ours = block(x, grid=grid)
    y = x + _attention_by_hand(block.attn, block.norm1(x), grid, window)
    expected = y + block.mlp(block.norm2(y))
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # the explicit path returns one map per window; a padded key gets no weight in any of them
    _, maps = block(x, grid=grid, return_attention=True)
    assert maps.shape == (2 * 6, 4, 9, 9)
    _, mask = window_partition(x, grid, window)
    assert (maps.transpose(1, 3)[~mask] == 0).all()


@pytest.mark.parametrize('layer', [Attention, TalkingHeadsAttention, ReAttention])
@torch.no_grad()
def test_one_window_over_the_grid_is_global_attention_exactly(layer):
    block = Block(16, 4, attn_layer=layer).eval()
    x = torch.randn(2, 5 * 7, 16)
    glob = block(x, grid=(5, 7))
    block.window_size = 7
    torch.testing.assert_close(block(x, grid=(5, 7)), glob, rtol=0, atol=0)


@pytest.mark.parametrize('name', TOKEN_FAMILIES)
@torch.no_grad()
def test_every_token_family_runs_windows_in_detection_mode(name):
    model = zoo.create_model(name, num_classes=0).eval()
    for m in model.modules():  # CaiT's LayerScale starts at 1e-5: let the attention show
        if isinstance(m, LayerScale):
            m.gamma.data.fill_(1.0)
    x = torch.randn(1, 3, 16 * 6, 16 * 9)  # grid 6 x 9
    (glob,) = model.forward_feature_maps(x)
    model.set_window_attention(window_size=9)  # one window over the grid: global, exactly
    torch.testing.assert_close(model.forward_feature_maps(x)[0], glob, rtol=0, atol=0)
    model.set_window_attention(window_size=4, global_blocks=2)  # padded to 8 x 12
    blocks = model.window_blocks
    assert [b.window_size for b in blocks].count(0) == 2 and blocks[-1].window_size == 0
    (windowed,) = model.forward_feature_maps(x)
    assert windowed.shape == glob.shape and torch.isfinite(windowed).all()
    assert not torch.allclose(windowed, glob, atol=1e-4)  # the windows did cut the grid
    model.set_window_attention(window_size=0)
    torch.testing.assert_close(model.forward_feature_maps(x)[0], glob, rtol=0, atol=0)


def test_window_attention_refuses_class_tokens_and_cvt():
    model = zoo.create_model('deit_tiny_patch16_224', num_classes=10)
    model.set_window_attention(4)
    with pytest.raises(ValueError, match='drop the class tokens'):
        model(torch.randn(1, 3, 64, 64))  # classification keeps its class token: no windows
    with pytest.raises(ValueError, match='global_blocks'):
        model.set_window_attention(4, global_blocks=[12])
    with pytest.raises(ValueError, match='CvT has no window attention'):
        zoo.create_model('cvt_13').set_window_attention(7)


@pytest.mark.parametrize('name', ALL_FAMILIES)
def test_checkpointing_changes_no_gradient(name):
    """Training mode with drop-path and dropout on: the recomputation must replay the same
    random draws, so every parameter's gradient is the same with checkpointing on and off."""
    torch.manual_seed(0)
    kwargs = dict(num_classes=5, drop_path_rate=0.1)
    model = zoo.create_model(name, **kwargs)
    twin = zoo.create_model(name, **kwargs)
    twin.load_state_dict(model.state_dict())
    twin.set_grad_checkpointing(True)
    assert any(getattr(m, 'grad_checkpointing', False) for m in twin.modules())
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for net in (model, twin):
        net.train()
        torch.manual_seed(1)
        out = net(x)
        out = out[0] + out[1] if isinstance(out, tuple) else out  # distilled: both heads
        out.square().mean().backward()
        grads.append({n: p.grad for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-4, atol=1e-6, msg=n)


def test_checkpointing_with_windows_in_detection_mode():
    torch.manual_seed(0)
    model = zoo.create_model('t2t_vit_7', num_classes=0)
    model.set_window_attention(4, global_blocks=1)
    x = torch.randn(1, 3, 16 * 5, 16 * 6)
    torch.manual_seed(1)  # the T2T stem's performers train with dropout 0.1
    model.forward_feature_maps(x)[0].square().mean().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model.forward_feature_maps(x)[0].square().mean().backward()
    for n, p in model.named_parameters():
        if n in plain:
            torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_config_switches_reach_the_blocks():
    """One config line each: the classifier's model.grad_checkpointing, the detectors'
    backbone.grad_checkpointing / window_size."""
    from classification.engine import Classifier
    from detection.backbone import build_backbone
    clf = Classifier(dict(name='deit_tiny_patch16_224', depth=2), num_classes=3, grad_checkpointing=True)
    assert all(b.grad_checkpointing for b in clf.backbone.blocks)
    with pytest.raises(ValueError, match='no set_grad_checkpointing'):
        Classifier(dict(name='torchvision.resnet18'), num_classes=3, grad_checkpointing=True)
    backbone = build_backbone('cait_xxs24_224', depth=4, window_size=7, global_blocks=[0],
                              grad_checkpointing=True)
    assert [b.window_size for b in backbone.body.blocks] == [0, 7, 7, 7]
    assert all(b.grad_checkpointing for b in backbone.body.blocks)
    with pytest.raises(ValueError, match='resnet50 takes no'):
        build_backbone('resnet50', window_size=14)


@pytest.mark.parametrize('name,blocks', [('deit_tiny_patch16_224', 3), ('t2t_vit_7', 2),
                                         ('cpvt_ti', 1), ('ceit_t', 2), ('deepvit_s', 2),
                                         ('cait_xxs24_224', 2), ('cvt_13', 1)])
def test_frozen_blocks_get_no_gradient_and_stay_in_eval(name, blocks):
    """As DETR's frozen ResNet stem and first stage: the stem and the first blocks get no
    gradient, every later block does, and training mode leaves the frozen part in eval."""
    from detection.backbone import build_backbone
    backbone = build_backbone(name, depth=4, frozen_blocks=blocks) if name != 'cvt_13' else \
        build_backbone(name, frozen_blocks=blocks)
    backbone.train()
    assert backbone.frozen and all(not m.training for m in backbone.frozen)
    maps = backbone(torch.randn(1, 3, 64, 64))
    sum(m.square().mean() for m in maps).backward()
    frozen = {id(p) for m in backbone.frozen for p in m.parameters()}
    body = backbone.body
    later = body.stages[-1].blocks if name == 'cvt_13' else body.window_blocks[blocks:]
    for p in body.parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None
    assert all(p.grad is not None for b in later for p in b.parameters() if p.requires_grad)
    assert sum(p.requires_grad for p in body.parameters()) < len(list(body.parameters()))
    with pytest.raises(ValueError, match='frozen_blocks must be between'):
        build_backbone(name, frozen_blocks=100)


def test_training_paths_attend_without_the_map(monkeypatch):
    """Windowed (masked) blocks and DETR's encoder and decoder run in training through
    F.scaled_dot_product_attention, whose backward keeps no N x N map; the families whose map is
    changed between the softmax and the values (talking heads, re-attention) cannot."""
    import torch.nn.functional as F
    from detection.transformer import Transformer
    calls = []
    fused = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(a[0].shape) or fused(*a, **k))
    block = Block(16, 4).train()
    block.window_size = 3
    block(torch.randn(2, 5 * 7, 16, requires_grad=True), grid=(5, 7)).sum().backward()
    assert calls == [(2 * 6, 4, 9, 4)]  # one call over the 12 padded windows, mask included
    calls.clear()
    detr = Transformer(32, 4, enc_layers=1, dec_layers=1, ffn_dim=64, dropout=0.1).train()
    src, pos = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[1, 8:] = True
    memory = detr.encode(src, padding, pos)
    detr.decode(memory, padding, pos, torch.randn(5, 32)).sum().backward()
    assert len(calls) == 3  # encoder self-attention, decoder self- and cross-attention
    calls.clear()
    Block(16, 4, attn_layer=TalkingHeadsAttention).train()(torch.randn(1, 6, 16)).sum().backward()
    assert calls == []


def test_talking_heads_large_maps_are_computed_in_row_chunks():
    """Values and gradients equal the one-piece map; the chunks keep a fraction of the memory."""
    torch.manual_seed(0)
    attn = TalkingHeadsAttention(16, 4, qkv_bias=True).train()
    x = torch.randn(2, 300, 16, requires_grad=True)
    whole = attn(x)
    whole.square().sum().backward()
    gx = x.grad
    grads = {n: p.grad for n, p in attn.named_parameters()}
    attn.zero_grad()
    attn.max_map_elements = 2 * 4 * 300 * 37  # 37 query rows at a time: 9 chunks, the last short
    x2 = x.detach().clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        chunked = attn(x2)
    chunked.square().sum().backward()
    # float32 sums in another order: compare at each tensor's own scale
    close = lambda a, b, **k: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item(), **k)
    close(chunked, whole)
    close(x2.grad, gx)
    # proj_l's bias moves every logit of a head alike, which the softmax ignores: its gradient
    # is rounding noise, so parameters are compared at the largest parameter gradient's scale
    scale = max(g.abs().max().item() for g in grads.values())
    for n, p in attn.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-5 * scale, msg=n)
    assert max(saved) < 2 * 4 * 300 * 300  # no whole (B, h, N, N) map is kept for backward
