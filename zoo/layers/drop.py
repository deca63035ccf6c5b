"""Stochastic depth (DropPath), per sample."""
import torch
from torch import nn


def drop_path(x: torch.Tensor, p: float = 0.0, training: bool = False) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``p``; scale survivors by 1/(1-p).

    x: (B, ...) -> (B, ...)
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f'p={self.p}'


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rule of DeiT: rate grows linearly from 0 at the first block to the last."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
