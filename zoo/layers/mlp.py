"""Transformer feed-forward network."""
import torch
from torch import nn

from .helpers import unhooked
from .linear import Linear, linear_gelu


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

    def forward(self, x: torch.Tensor, grid: tuple[int, int] | None = None,
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``grid`` and ``valid`` (the padding mask) are accepted and ignored: Block hands them
        to its mlp_layer whenever it has them, and this feed-forward is per token."""
        if self._gelu_fusable():
            hidden = linear_gelu(x, *self.fc1.operands(x), self.fc1.onednn, self.fc1.onednn_float32)
        else:
            hidden = self.act(self.fc1(x))
        return self.drop2(self.fc2(self.drop1(hidden)))

    def _gelu_fusable(self) -> bool:
        """fc1 and an exact GELU as one call (:func:`linear_gelu`, one pass in bfloat16 inference),
        without autograd only, and unless a hook watches either module or either was replaced."""
        return (not torch.is_grad_enabled() and type(self.fc1) is Linear and type(self.act) is nn.GELU
                and self.act.approximate == 'none' and unhooked(self.fc1, self.act))
