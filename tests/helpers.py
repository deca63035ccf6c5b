"""Helpers the test files share (importable because pytest puts tests/ on sys.path)."""
import importlib.util
import os
import textwrap

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_detr_config(directory, name: str = 'tiny_detr.py', num_train: int = 8, num_val: int = 2,
                     max_epochs: int = 2, detector: str = '', extra: str = '',
                     local_vis: bool = True) -> str:
    """The demo DETR (T2T-ViT-7, one block) shrunk to milliseconds a step, on ``num_train`` /
    ``num_val`` generated 64 px images (batches of 4 / 2), a checkpoint, a validation and a log
    line every epoch, a constant learning rate. ``detector`` adds detector arguments (python
    source, e.g. ``"denoising=dict(num_groups=2)"``), ``extra`` config lines; ``local_vis`` logs
    scalars to json only (no TensorBoard). Returns the config's path, written in ``directory``."""
    data_root = str(directory / 'shapes') + '/'
    path = directory / name
    detector = f', {detector}' if detector else ''
    vis = "visualizer = dict(vis_backends=[dict(type='LocalVisBackend')])" if local_vis else ''
    path.write_text(textwrap.dedent(f"""
        _base_ = ['{ROOT}/configs/demo/detr_t2t_shapes.py']
        data_root = '{data_root}'
        synthetic = dict(root=data_root, num_train={num_train}, num_val={num_val}, size=64, max_objects=2, seed=0)
        train_dataloader = dict(batch_size=4, dataset=dict(
            img_dir=data_root + 'train', ann_file=data_root + 'annotations/instances_train.json',
            synthetic=synthetic, transforms=dict(type='shapes_train_transforms', scales=(64,), max_size=64)))
        val_dataloader = dict(batch_size=2, dataset=dict(
            img_dir=data_root + 'val', ann_file=data_root + 'annotations/instances_val.json',
            synthetic=synthetic, transforms=dict(type='shapes_test_transforms', size=64)))
        test_dataloader = val_dataloader
        model = dict(detector=dict(backbone=dict(name='t2t_vit_7', depth=1), num_queries=4,
                                   hidden_dim=32, num_heads=2, enc_layers=1, dec_layers=1, ffn_dim=64{detector}))
        train_cfg = dict(max_epochs={max_epochs}, val_interval=1)
        default_hooks = dict(checkpoint=dict(interval=1), logger=dict(interval=1))
        param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    """) + vis + '\n' + textwrap.dedent(extra))
    return str(path)


def plain_pretty_text(cfg) -> str:
    """A stand-in for ``Config.pretty_text``: its yapf formatting costs seconds a dump on 2 cores."""
    return '\n'.join(f'{k} = {v!r}' for k, v in cfg.to_dict().items())


def load_tool(name: str, module_name: str):
    """tools/<name>.py as a module, to run its ``main`` in this process (a subprocess costs
    seconds of imports on 2 cores); tools/ must be on sys.path for its ``_bootstrap``."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_params(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def deterministic_state_dict(shapes: dict) -> dict:
    """{key: (shape, dtype)} -> a state dict whose values depend only on the key name, so the
    same checkpoint can be written in any key layout."""
    sd = {}
    for name, (shape, dtype) in shapes.items():
        if not dtype.is_floating_point:
            sd[name] = torch.zeros(shape, dtype=dtype)
            continue
        wave = torch.sin(torch.arange(int(np.prod(shape)), dtype=torch.float64) * 0.73
                         + sum(map(ord, name)) % 97)
        if name.endswith('running_var'):
            values = 1.0 + 0.5 * wave
        elif name.endswith('weight') and len(shape) == 1:  # norm scales
            values = 1.0 + 0.2 * wave
        else:
            values = 0.2 * wave
        sd[name] = values.reshape(shape).float()
    return sd


def wave_image(*shape) -> torch.Tensor:
    """A deterministic input of the given shape (no RNG: the same on every machine)."""
    wave = torch.cos(torch.arange(int(np.prod(shape)), dtype=torch.float64) * 0.31)
    return wave.reshape(shape).float()


@torch.no_grad()
def assert_detection_mode(model, x: torch.Tensor, fmap: torch.Tensor) -> None:
    """``fmap`` = model.forward_feature_maps(x)[0] is ViTDet's detection mode: the patches run
    the blocks alone, so the class / distillation tokens cannot reach the map (moving them
    changes nothing), while the patches do (moving one image row changes the map)."""
    saved = {}
    for name in ('cls_token', 'dist_token'):
        token = getattr(model, name, None)
        if token is not None:
            saved[name] = token.clone()
            token.add_(1.0)
    try:
        torch.testing.assert_close(model.forward_feature_maps(x)[0], fmap, rtol=0, atol=0)
    finally:
        for name, value in saved.items():
            getattr(model, name).copy_(value)
    moved = x.clone()
    moved[..., :8, :] += 1.0
    assert not torch.allclose(model.forward_feature_maps(moved)[0], fmap)


def spy_calls(module, name: str, fn) -> list[tuple]:
    """The positional arguments of every call ``fn()`` makes to ``module.<name>`` (a module-level
    function, replaced by a recording wrapper for the duration of the call)."""
    calls, real = [], getattr(module, name)

    def record(*args):
        calls.append(args)
        return real(*args)
    setattr(module, name, record)
    try:
        fn()
    finally:
        setattr(module, name, real)
    return calls


def assert_onnx_matches(model, tmp_path, size: tuple[int, int]) -> None:
    """``model`` (eval) exported to ONNX at batch 2 of (3, *size) images gives, in onnxruntime, its
    PyTorch logits on a batch of 3 (another batch size than the one traced) within 1e-4."""
    import onnxruntime as ort  # a test dependency, imported only by the tests that export
    path = os.path.join(str(tmp_path), 'model.onnx')
    torch.onnx.export(model, (torch.randn(2, 3, *size),), path, input_names=['images'], output_names=['logits'],
                      dynamic_axes={'images': {0: 'batch'}}, dynamo=False)
    y = torch.randn(3, 3, *size)
    (out,) = ort.InferenceSession(path, providers=['CPUExecutionProvider']).run(None, {'images': y.numpy()})
    np.testing.assert_allclose(out, model(y).numpy(), atol=1e-4, rtol=0)
