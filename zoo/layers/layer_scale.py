"""LayerScale (CaiT): a learned per-channel scale on a residual branch."""
import torch
from torch import nn


class LayerScale(nn.Module):
    """x: (..., D) -> (..., D) multiplied by a learned diagonal ``gamma`` initialised to ``init_values``."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
