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
