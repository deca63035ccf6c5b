"""Helpers the test files share (importable because pytest puts tests/ on sys.path)."""
import numpy as np
import torch


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
