"""Small shared helpers: tuple coercion, input checks, prefix tokens."""
import collections.abc

import torch
from einops import repeat
from torch import nn

from . import private_ops


def to_2tuple(x) -> tuple:
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        x = tuple(x)
        if len(x) != 2:
            raise ValueError(f'expected an int or a pair, got {x}')
        return x
    return (x, x)


def check_image(x: torch.Tensor, in_chans: int, stride) -> None:
    """Raise a ValueError that says how to fix an input that is not (B, in_chans, H, W) with
    H and W multiples of ``stride``."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return
    sh, sw = to_2tuple(stride)
    if x.ndim != 4:
        raise ValueError(f'expected a batch of images shaped (B, {in_chans}, H, W), got a '
                         f'{x.ndim}-d tensor of shape {tuple(x.shape)}; add a batch dimension '
                         f'with x.unsqueeze(0) for a single image')
    if x.shape[1] != in_chans:
        hint = (' (grayscale: x.expand(-1, 3, -1, -1), or build the model with in_chans=1)'
                if x.shape[1] == 1 else '')
        raise ValueError(f'expected {in_chans} input channels, got {x.shape[1]} in an input of '
                         f'shape {tuple(x.shape)}{hint}')
    h, w = x.shape[-2:]
    if h % sh or w % sw or h < sh or w < sw:
        def near(n, s):
            lo = max(s, n // s * s)
            return sorted({lo, lo + s})
        raise ValueError(f'input size {h}x{w} is not a multiple of the patch stride {sh}x{sw}; '
                         f'resize or pad to e.g. height {near(h, sh)} and width {near(w, sw)}')


def prepend_tokens(x: torch.Tensor, *tokens: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D); each token: (1, n_i, D) -> (B, sum n_i + N, D), tokens first in order."""
    b = x.shape[0]
    return torch.cat([repeat(t, '1 n d -> b n d', b=b) for t in tokens] + [x], dim=1)


def unhooked(*modules: nn.Module) -> bool:
    """Whether no forward hook (global, or on any of ``modules``) would see these modules' calls:
    a fused path that skips their own forwards may run only then. Where this torch keeps its global
    hooks out of sight (:mod:`zoo.layers.private_ops`), never."""
    if private_ops.global_forward_hooks_registered():
        return False
    return not any(m._forward_hooks or m._forward_pre_hooks for m in modules)
