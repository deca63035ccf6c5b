"""Export paths users ask for: ONNX (checked with onnxruntime) and TorchScript tracing."""
import pytest
import torch

import zoo
from helpers import assert_onnx_matches


@pytest.mark.parametrize('name', ['vit_tiny_patch16_224', 'deit_tiny_distilled_patch16_224'])
@torch.no_grad()
def test_onnx_export_matches_onnxruntime(name, tmp_path):
    model = zoo.create_model(name, depth=2, img_size=96).eval()
    assert_onnx_matches(model, tmp_path, (96, 96))


@torch.no_grad()
def test_torchscript_trace_matches_eager():
    model = zoo.create_model('vit_tiny_patch16_224', depth=2, img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), model(x))


@torch.no_grad()
def test_bfloat16_autocast_stays_close_to_float32():
    model = zoo.create_model('deit_tiny_patch16_224', depth=4).eval()
    x = torch.randn(2, 3, 224, 224)
    ref = model(x)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = model(x)
    assert low.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; logits of a random-init model are O(1).
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()
