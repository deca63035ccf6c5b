"""CvT against Hugging Face transformers' CvtForImageClassification (installed peer) and against
figures produced by the official code (microsoft/CvT, lib/models/cls_cvt.py at f851e68, run
outside this repository with the cvt-13 / cvt-21 / cvt-w24 yaml specs)."""
import re

import numpy as np
import pytest
import torch
from torch import nn

import zoo
from helpers import count_params
from zoo.layers.conv_attention import ConvProjectionAttention

CVT = zoo.list_models('cvt_*')

# Parameter counts of the official ConvolutionalVisionTransformer built from the yaml specs
# (QuickGELU, 1000 classes); transformers' CvtForImageClassification gives the same 19,997,480 and
# 31,622,696 (checked below). The README rounds them to 20M / 32M / 277M.
OFFICIAL_PARAMS = {'cvt_13': 19_997_480, 'cvt_13_384': 19_997_480, 'cvt_21': 31_622_696,
                   'cvt_21_384': 31_622_696, 'cvt_w24_384': 277_196_392}


@pytest.mark.parametrize('name', CVT)
def test_parameter_count_equals_official(name):
    with torch.device('meta'):
        model = zoo.create_model(name)
    assert count_params(model) == OFFICIAL_PARAMS[name]
    paper = zoo.get_model_info(name).paper['params']
    assert abs(count_params(model) / 1e6 - paper) / paper <= 0.005, (name, count_params(model), paper)


# --- Hugging Face transformers ---------------------------------------------------------------

def _hf_reference(depth):
    """transformers' CvtForImageClassification for cvt-13 / cvt-21 widths, eval mode, random
    weights (fan-in scaled), random norm statistics and affine terms so that no mis-mapped
    tensor can go unnoticed. Its own initialisation is skipped: it costs seconds."""
    from transformers import CvtConfig, CvtForImageClassification
    from transformers.initialization import no_init_weights
    with no_init_weights():
        model = CvtForImageClassification(CvtConfig(depth=list(depth), num_labels=1000)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (fan_in ** -0.5 if p.ndim > 1 else 0.2))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.add_(1.0)
    return model


@pytest.mark.parametrize('name,depth', [('cvt_13', (1, 2, 10)),
                                        pytest.param('cvt_21', (1, 4, 16), marks=pytest.mark.slow)])
@torch.no_grad()
def test_outputs_match_hugging_face(name, depth):
    theirs = _hf_reference(depth)
    assert count_params(theirs) == OFFICIAL_PARAMS[name]
    # transformers runs the MLPs with the exact GELU; the official code (and our default) with
    # QuickGELU, so the comparison is made with act_layer=nn.GELU.
    ours = zoo.create_model(name, act_layer=nn.GELU).eval()
    zoo.load_pretrained(ours, theirs.state_dict())
    official_act = zoo.create_model(name).eval()
    official_act.load_state_dict(ours.state_dict())
    for size in [(224, 224), (160, 256)]:
        x = torch.randn(1, 3, *size)
        out = theirs(x, output_hidden_states=True)
        assert (ours(x) - out.logits).abs().max() <= 1e-5, size
    # Stage outputs are the un-normalised residual stream (values up to ~15 here): the bound
    # scales with their size.
    for fmap, ref in zip(ours.forward_feature_maps(x), out.hidden_states, strict=True):
        assert fmap.shape == ref.shape
        assert (fmap - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())
    # Sensitivity: the official activation shifts the logits well beyond the tolerance.
    assert (official_act(x) - out.logits).abs().max() > 1e-3


def test_hugging_face_file_loads_through_create_model(tmp_path):
    # transformers indexes its per-layer drop-path list by the stage index, so a stage needs at
    # least (index + 1) layers there.
    theirs = _hf_reference((1, 2, 3))
    path = tmp_path / 'pytorch_model.bin'
    torch.save(theirs.state_dict(), path)
    ours = zoo.create_model('cvt_13', pretrained=str(path), depths=(1, 2, 3),
                            act_layer=nn.GELU).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert (ours(x) - theirs(x).logits).abs().max() <= 1e-5


# --- official layout -------------------------------------------------------------------------

def _official_state_dict(model, seed=0):
    """Random weights for ``model`` under the official key names (``stage{s}.``, separate
    ``attn.proj_{q,k,v}``), drawn in sorted-key order so the official code can be fed the same."""
    sd = {}
    for key, value in model.state_dict().items():
        key = re.sub(r'^stages\.(\d+)\.', r'stage\1.', key)
        if '.attn.qkv.' in key:
            for n, part in zip('qkv', value.chunk(3)):
                sd[key.replace('.qkv.', f'.proj_{n}.')] = part
        else:
            sd[key] = value
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(sd):
        if key.endswith('num_batches_tracked'):
            out[key] = torch.tensor(0)
            continue
        r = torch.randn(sd[key].shape, generator=g)
        if key.endswith('running_var'):
            r = 0.5 + r.abs()
        elif re.search(r'(norm\d?|\.bn)\.weight$', key):
            r = 1.0 + 0.2 * r
        else:
            r = 0.05 * r
        out[key] = r
    return out


# Logits [0, :6] and their sum for a 1x3x64x96 input of torch.manual_seed(1), produced by the
# official cvt-13 (QuickGELU, LayerNorm eps 1e-5) loaded strictly with _official_state_dict(seed=0).
OFFICIAL_CVT13_LOGITS = [1.008856, -0.879988, -0.146277, 0.029807, -0.552218, -0.08304]
OFFICIAL_CVT13_SUM = 1.94564


@torch.no_grad()
def test_official_layout_loads_strictly_and_matches_official_outputs():
    model = zoo.create_model('cvt_13').eval()
    sd = _official_state_dict(model)
    # 459 entries in the official cvt-13 state dict (counted from the official code).
    assert len(sd) == 459
    assert 'stage2.cls_token' in sd and 'stage0.blocks.0.attn.proj_q.weight' in sd
    checkpoint = {'model': 'cls_cvt', 'state_dict': {'module.' + k: v for k, v in sd.items()}}
    zoo.load_pretrained(model, checkpoint)
    torch.testing.assert_close(model.stages[2].blocks[3].attn.qkv.weight[384:768],
                               sd['stage2.blocks.3.attn.proj_k.weight'], rtol=0, atol=0)
    torch.manual_seed(1)
    logits = model(torch.randn(1, 3, 64, 96))
    np.testing.assert_allclose(logits[0, :6].numpy(), OFFICIAL_CVT13_LOGITS, atol=1e-4)
    assert abs(logits.sum().item() - OFFICIAL_CVT13_SUM) <= 1e-3


def test_official_layout_mismatch_names_the_keys():
    model = zoo.create_model('cvt_13', depths=(1, 1, 1))
    sd = _official_state_dict(model)
    del sd['stage1.blocks.0.attn.conv_proj_v.bn.running_var']
    missing = r'stages\.1\.blocks\.0\.attn\.conv_proj_v\.bn\.running_var'
    with pytest.raises(zoo.CheckpointMismatchError, match=missing):
        zoo.load_pretrained(model, sd)


# --- behaviour -------------------------------------------------------------------------------

@pytest.mark.parametrize('name', CVT)
def test_gradients_reach_every_parameter(name):
    # W24 at full depth is 277M parameters: its widths and heads with fewer blocks suffice here.
    kw = dict(depths=(1, 1, 2)) if name == 'cvt_w24_384' else {}
    model = zoo.create_model(name, num_classes=5, drop_path_rate=0.1, **kw).train()
    feats = model.forward_features(torch.randn(2, 3, 32, 32))
    out = model.forward_head(feats)
    assert out.shape == (2, 5)
    # The logits see only the class token, whose query skips the last block's q convolution:
    # the patch tokens join the loss so that convolution is exercised too.
    (out.square().mean() + feats.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@torch.no_grad()
def test_feature_maps_follow_feature_info_for_non_square_input():
    model = zoo.create_model('cvt_13', depths=(1, 1, 2)).eval()
    info = [(f['channels'], f['stride']) for f in model.feature_info]
    assert info == [(64, 4), (192, 8), (384, 16)]
    x = torch.randn(1, 3, 16 * 5, 16 * 7)
    maps = model.forward_feature_maps(x)
    assert [m.shape for m in maps] == [(1, f['channels'], 80 // f['stride'], 112 // f['stride'])
                                       for f in model.feature_info]
    # The last map holds the patch tokens of forward_features before the final norm.
    tokens = model.forward_features(x)
    assert tokens.shape == (1, 1 + 5 * 7, 384)
    torch.testing.assert_close(model.norm(maps[-1].flatten(2).transpose(1, 2)), tokens[:, 1:])
    assert model(x).shape == (1, 1000)


@torch.no_grad()
def test_attention_maps_and_fused_path_agree():
    fused = zoo.create_model('cvt_13', depths=(1, 1, 2)).eval()
    explicit = zoo.create_model('cvt_13', depths=(1, 1, 2), fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 96, 64)
    assert (fused(x) - explicit(x)).abs().max() <= 1e-5
    maps = fused.get_attention_maps(x)
    # Stage grids 24x16, 12x8, 6x4; keys and values on the stride-2 grids 12x8, 6x4, 3x2.
    assert [m.shape for m in maps] == [(2, 1, 384, 96), (2, 3, 96, 24), (2, 6, 25, 7),
                                       (2, 6, 25, 7)]
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))


def test_conv_attention_scale_is_full_width_and_class_token_skips_the_convolutions():
    attn = ConvProjectionAttention(384, num_heads=6, qkv_bias=True, num_prefix_tokens=1).eval()
    assert attn.scale == 384 ** -0.5
    x = torch.randn(1, 1 + 4 * 4, 384)
    q_in, k_in, v_in = attn.project_inputs(x, (4, 4))
    assert q_in.shape == (1, 17, 384) and k_in.shape == v_in.shape == (1, 1 + 2 * 2, 384)
    for t in (q_in, k_in, v_in):
        torch.testing.assert_close(t[:, 0], x[:, 0])


def test_drop_path_rate_float_applies_to_the_last_stage_as_in_the_official_configs():
    model = zoo.create_model('cvt_13', drop_path_rate=0.1)
    rates = [[getattr(b.drop_path1, 'p', 0.0) for b in s.blocks] for s in model.stages]
    assert rates[0] == [0.0] and rates[1] == [0.0, 0.0]
    assert rates[2][0] == 0.0 and rates[2][-1] == pytest.approx(0.1) and len(rates[2]) == 10


def test_no_weight_decay_and_pre_logits():
    model = zoo.create_model('cvt_13', depths=(1, 1, 1)).eval()
    assert model.no_weight_decay() == {'stages.2.cls_token'}
    feats = model.forward_features(torch.randn(1, 3, 32, 48))
    assert model.forward_head(feats, pre_logits=True).shape == (1, 384)


def test_wrong_channel_count_is_explained():
    model = zoo.create_model('cvt_13', depths=(1, 1, 1))
    with pytest.raises(ValueError, match=r'expected 3 input channels, got 1'):
        model(torch.randn(1, 1, 64, 64))


@pytest.mark.slow
def test_onnx_export_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip('onnxruntime')
    model = zoo.create_model('cvt_13', depths=(1, 1, 2)).eval()
    x = torch.randn(1, 3, 96, 128)
    path = str(tmp_path / 'cvt.onnx')
    torch.onnx.export(model, (x,), path, input_names=['x'], output_names=['logits'],
                      opset_version=17, dynamo=False)
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {'x': x.numpy()})
    with torch.no_grad():
        assert np.abs(out - model(x).numpy()).max() <= 1e-4
