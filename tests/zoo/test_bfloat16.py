"""bfloat16 on the CPU: autocast inference of every family stays close to float32 and really
runs in bfloat16; ``--amp`` training works without CUDA (zoo.runtime.engine.AutocastOptimWrapper);
``test.py --amp`` evaluates under autocast."""
import os

import pytest
import torch
from torch import nn

import zoo
from zoo.runtime.engine import (AutocastOptimWrapper, AutocastTestLoop, autocast_for, resolve_amp_dtype,
                        use_amp, use_amp_evaluation)
from helpers import ROOT


# One variant of every family: its real width, two blocks (per stage), a 32 px input.
FAMILIES = {
    'vit_small_patch16_224': dict(img_size=32, patch_size=4, depth=2),
    'deit_small_patch16_224': dict(img_size=32, patch_size=4, depth=2),
    'deit_tiny_distilled_patch16_224': dict(img_size=32, patch_size=4, depth=2),
    't2t_vit_7': dict(img_size=32, depth=2),
    'cait_xxs24_224': dict(img_size=32, patch_size=4, depth=2, depth_token_only=1),
    'deepvit_s': dict(img_size=32, patch_size=4, depth=2, num_reattention_blocks=1),
    'cpvt_ti': dict(img_size=32, patch_size=4, depth=2),
    'cvt_13': dict(img_size=32, depths=(1, 1, 2)),
    'ceit_t': dict(img_size=32, depth=2),
}
# |logits_bf16 - logits_fp32| <= REL_TOL * max |logits_fp32|. bfloat16 keeps 8 significant
# bits (relative rounding 2^-9 = 0.002 per op); through two blocks of random weights the
# largest deviation measured was below 0.03 of the logits' scale on every family.
REL_TOL = 0.06


def _model(name):
    torch.manual_seed(0)
    return zoo.create_model(name, num_classes=10, **FAMILIES[name]).eval()


@pytest.mark.parametrize('name', sorted(FAMILIES))
@torch.no_grad()
def test_autocast_logits_are_close_to_float32_and_computed_in_bfloat16(name):
    model = _model(name)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref = model(x)
    seen = {}

    def record(module, args, output):
        seen[module] = output.dtype
    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, (nn.Linear, nn.Conv2d))]
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = model(x)
    finally:
        for h in hooks:
            h.remove()
    # Every matmul and convolution ran in bfloat16: no family falls back to float32 on the way.
    assert seen and set(seen.values()) == {torch.bfloat16}, \
        {type(m).__name__: d for m, d in seen.items() if d != torch.bfloat16}
    assert low.dtype == torch.bfloat16  # the head itself ran in bfloat16
    scale = ref.abs().max()
    assert scale > 0
    err = (low.float() - ref).abs().max()
    assert err <= REL_TOL * scale, f'{name}: max |d| {err:.4g} vs logit scale {scale:.4g}'


def test_amp_dtype_defaults():
    assert resolve_amp_dtype(None, 'cpu') == torch.bfloat16
    assert resolve_amp_dtype('auto', 'cuda') == torch.float16
    assert resolve_amp_dtype('bfloat16', 'cuda') == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_amp_dtype('float64', 'cpu')
    with autocast_for(nn.Linear(2, 2)):
        assert torch.is_autocast_enabled('cpu') and torch.get_autocast_dtype('cpu') == torch.bfloat16


def test_mmengine_amp_wrapper_refuses_the_cpu_so_train_py_uses_the_autocast_wrapper():
    """The reason for AutocastOptimWrapper: mmengine's AmpOptimWrapper asserts a GPU/NPU."""
    from mmengine.config import Config
    from mmengine.optim import AmpOptimWrapper
    if not torch.cuda.is_available():
        with pytest.raises(AssertionError, match='only available'):
            AmpOptimWrapper(optimizer=torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))))
    use_amp(cfg, device_type='cpu')
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper' and cfg.optim_wrapper.dtype == 'bfloat16'
    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))))
    use_amp(cfg, device_type='cuda')
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg = Config(dict(test_cfg=dict(type='TestLoop')))
    use_amp_evaluation(cfg)
    assert cfg.test_cfg.type == 'AutocastTestLoop'


def _train_step(model, data, steps=2):
    wrapper = AutocastOptimWrapper(optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = []
    hook = next(m for m in model.modules() if isinstance(m, nn.Linear)).register_forward_hook(
        lambda m, a, out: dtypes.append(out.dtype))
    model.train()
    for _ in range(steps):
        losses = model.train_step(data, wrapper)
    hook.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay float32
    after = model.state_dict()
    changed = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    return changed, losses


def test_cpu_amp_training_step_classifier():
    import classification.engine  # noqa: F401
    from classification.engine import Classifier
    torch.manual_seed(0)
    model = Classifier(dict(name='deit_tiny_patch16_224', img_size=32, patch_size=4, depth=2), num_classes=10)
    data = dict(inputs=torch.randn(4, 3, 32, 32),
                data_samples=dict(labels=torch.tensor([0, 1, 2, 3]), indices=torch.arange(4)))
    changed, losses = _train_step(model, data)
    assert 'backbone.head.weight' in changed and len(changed) > 10


def test_cpu_amp_training_step_detector():
    import detection.engine  # noqa: F401
    from detection.engine import Detector
    torch.manual_seed(0)
    model = Detector(dict(backbone=dict(name='deit_tiny_patch16_224', depth=1, img_size=64), num_queries=8,
                          hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64, dropout=0.0),
                     num_classes=3)
    targets = [dict(labels=torch.tensor([1]), boxes=torch.tensor([[0.5, 0.5, 0.3, 0.4]]), image_id=0,
                    orig_size=torch.tensor([64, 64])) for _ in range(2)]
    data = dict(inputs=torch.randn(2, 3, 64, 64), masks=torch.zeros(2, 64, 64, dtype=torch.bool),
                data_samples=targets)
    changed, _ = _train_step(model, data)
    assert len(changed) > 10


def test_train_py_amp_on_cpu_builds_the_autocast_wrapper_and_trains(tmp_path, monkeypatch):
    """tools/train.py --amp on a CPU: the config names AutocastOptimWrapper, the runner builds it,
    and a training iteration through the runner changes the weights with a finite loss."""
    import importlib.util
    from mmengine.config import Config
    monkeypatch.syspath_prepend(os.path.join(ROOT, 'tools'))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(Config, 'pretty_text', property(lambda cfg: repr(cfg.to_dict())))
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    spec = importlib.util.spec_from_file_location('vitzoo_tool_train_bf16', os.path.join(ROOT, 'tools', 'train.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    missing = str(tmp_path / 'no_fashion_mnist')
    cfg_path = tmp_path / 'tiny.py'
    cfg_path.write_text(
        f"_base_ = ['{ROOT}/configs/classification/deit_tiny_fashion_mnist.py']\n"
        "model = dict(backbone=dict(embed_dim=32, depth=1, num_heads=2))\n"
        f"train_dataloader = dict(batch_size=8, dataset=dict(root='{missing}', fallback=dict(num_samples=8)))\n"
        f"val_dataloader = dict(batch_size=4, dataset=dict(root='{missing}', fallback=dict(num_samples=4)))\n"
        "test_dataloader = val_dataloader\n"
        "visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])\n"
        "param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]\n")
    cfg = train.build_config(train.parse_args([str(cfg_path), '--amp', '--work-dir', str(tmp_path / 'w')]))
    assert cfg.optim_wrapper.type == 'AutocastOptimWrapper'
    from zoo.runtime.engine import Runner
    runner = Runner.from_cfg(cfg)
    wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    assert isinstance(wrapper, AutocastOptimWrapper)
    model = runner.model
    before = model.backbone.head.weight.clone()
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    losses = model.train_step(batch, wrapper)
    assert torch.isfinite(losses['loss']) and not torch.equal(before, model.backbone.head.weight)
    # and evaluation under autocast (test.py --amp) through the registered loop
    use_amp_evaluation(cfg)
    assert cfg.test_cfg.type == 'AutocastTestLoop'
    from mmengine.registry import LOOPS
    assert LOOPS.get('AutocastTestLoop') is AutocastTestLoop


def test_cpu_bfloat16_inference_attends_explicitly_without_amx_and_training_keeps_the_fused_kernel(monkeypatch):
    """zoo.layers.attention.explicit_is_faster: with the explicit_bf16_attn switch on (the default on
    CPUs without AMX), CPU bfloat16 without autograd takes q k^T, softmax, @ v (oneDNN's bfloat16
    products; the CPU flash kernel runs bfloat16 at float32's speed there); with autograd, in
    float32 and for maps over the size limit the fused kernel runs. A layer built with the switch
    off (the default with AMX, where the flash kernel is faster) takes the fused kernel, with the
    same outputs within bfloat16's rounding."""
    import torch.nn.functional as F

    from zoo.layers import Attention, fast_paths
    from zoo.layers import attention as attention_module
    torch.manual_seed(0)
    with fast_paths(explicit_bf16_attn=True):
        attn = Attention(64, num_heads=4).eval()
    with fast_paths(explicit_bf16_attn=False):
        amx = Attention(64, num_heads=4).eval()
    amx.load_state_dict(attn.state_dict())
    assert attn.explicit_bf16 and not amx.explicit_bf16
    x = torch.randn(2, 50, 64)
    key_mask = torch.ones(2, 50, dtype=torch.bool)
    key_mask[1, 40:] = False  # window padding: masked keys
    ref = attn(x, key_mask=key_mask)
    fused_calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, 'scaled_dot_product_attention',
                        lambda *a, **k: fused_calls.append(1) or real(*a, **k))
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        low = attn(x, key_mask=key_mask)
    assert fused_calls == []
    assert (low.float() - ref).abs().max() <= 0.02 * ref.abs().max()
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        low_fused = amx(x, key_mask=key_mask)
    assert len(fused_calls) == 1
    assert (low_fused.float() - ref).abs().max() <= 0.02 * ref.abs().max()
    with torch.inference_mode():
        attn(x, key_mask=key_mask)  # float32: fused
    assert len(fused_calls) == 2
    with torch.autocast('cpu', dtype=torch.bfloat16):
        attn(x, key_mask=key_mask).float().sum().backward()  # autograd: fused, no map kept
    assert len(fused_calls) == 3
    monkeypatch.setattr(attention_module, '_EXPLICIT_MAP_LIMIT', 2 * 4 * 50 * 50 - 1)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        attn(x, key_mask=key_mask)  # the map is over the limit: fused
    assert len(fused_calls) == 4


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_attention_map_without_autograd_equals_the_map_with_it(dtype):
    """Without autograd the map is computed with the scale inside the product and the softmax
    in place; it equals the autograd path's map (masked keys included) up to rounding."""
    from zoo.layers import Attention
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4)
    q, k = torch.randn(2, 4, 9, 8, dtype=dtype), torch.randn(2, 4, 11, 8, dtype=dtype)
    key_mask = torch.ones(2, 11, dtype=torch.bool)
    key_mask[1, 7:] = False
    with torch.enable_grad():
        ref = attn.attention_map(q, k, key_mask)
    with torch.no_grad():
        out = attn.attention_map(q, k, key_mask)
    assert out.dtype == dtype
    assert torch.all(out[1, ..., 7:] == 0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=4e-3)
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(out.float().sum(-1), torch.ones(2, 4, 9), rtol=0, atol=2e-2)
