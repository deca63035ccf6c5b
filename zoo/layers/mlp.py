"""Transformer feed-forward network."""
import torch
from torch import nn

from .linear import Linear


class Mlp(nn.Module):
    """Two-layer MLP: (..., D) -> fc1 -> act -> drop -> fc2 -> drop -> (..., D_out)."""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, act_layer: type[nn.Module] = nn.GELU,
                 drop: float = 0.0, bias: bool = True):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``grid`` is accepted and ignored: Block hands the token grid to its mlp_layer whenever
        it hands it to the attention, and this feed-forward is per token."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
