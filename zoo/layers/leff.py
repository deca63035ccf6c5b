"""Locally-enhanced feed-forward (LeFF) of CeiT (Yuan et al., 2021)."""
import torch
from einops import rearrange
from torch import nn


class LocallyEnhancedFeedForward(nn.Module):
    """(B, P + h*w, D) -> (B, P + h*w, D), given ``grid=(h, w)``.

    P is what the grid leaves over (0 in detection mode, where the class token is dropped).
    The h*w patch tokens are laid out on their grid and pass pointwise conv -> BN -> act ->
    depthwise k x k conv -> BN -> act -> pointwise conv -> BN. The P prefix (class) tokens have
    no place on the grid and leave unchanged, as in the official code. The grid must be the
    real one (non-square inputs), not inferred from the token count.
    Signature matches :class:`Mlp` so it plugs into ``Block(mlp_layer=...)``.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 act_layer: type[nn.Module] = nn.GELU, drop: float = 0.0, kernel_size: int = 3):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.conv1 = nn.Conv2d(in_features, hidden_features, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(hidden_features)
        self.conv2 = nn.Conv2d(hidden_features, hidden_features, kernel_size,
                               padding=kernel_size // 2, groups=hidden_features)
        self.bn2 = nn.BatchNorm2d(hidden_features)
        self.conv3 = nn.Conv2d(hidden_features, in_features, kernel_size=1)
        self.bn3 = nn.BatchNorm2d(in_features)
        self.act = act_layer()
        # ``drop`` is accepted for Mlp's signature and unused: the official LeFF has no dropout.

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        num_prefix = x.shape[1] - grid[0] * grid[1]
        prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
        fmap = rearrange(tokens, 'b (h w) d -> b d h w', h=grid[0], w=grid[1])
        fmap = self.act(self.bn1(self.conv1(fmap)))
        fmap = self.act(self.bn2(self.conv2(fmap)))
        fmap = self.bn3(self.conv3(fmap))
        tokens = rearrange(fmap, 'b d h w -> b (h w) d')
        return torch.cat([prefix, tokens], dim=1)
