"""Locally-enhanced feed-forward (LeFF) of CeiT (Yuan et al., 2021)."""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import private_ops  # the private oneDNN convolution, or None without it
from .config import needs_plain_ops, use_onednn
from .helpers import unhooked
from .padding import valid_map, zero_outside


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight (O, I/g, k, k) and bias (O,) of one convolution that computes ``bn(conv(x))`` with
    the batch norm's running statistics (eval mode)."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    return conv.weight * scale[:, None, None, None], (bias - bn.running_mean) * scale + bn.bias


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
        self.onednn = use_onednn()
        self.norms_folded = False  # fuse(): the batch norms folded into the convolutions, for inference
        self.folded_weights = None  # their folded (weight, bias) pairs, computed once; not in the state dict

    def forward(self, x: torch.Tensor, grid: tuple[int, int],
                valid: torch.Tensor | None = None) -> torch.Tensor:
        """``valid`` (B, P + h*w), False at an image's padding in a padded batch: the depthwise conv
        then reads zeros there, as at the border of the image alone."""
        num_prefix = x.shape[1] - grid[0] * grid[1]
        prefix, tokens = x[:, :num_prefix], x[:, num_prefix:]
        fmap = rearrange(tokens, 'b (h w) d -> b d h w', h=grid[0], w=grid[1])
        real = valid_map(valid, grid)
        if self._folded_path():
            fmap = self._folded_forward(fmap, real)
        else:
            fmap = self.act(self.bn1(self.conv1(fmap)))
            fmap = zero_outside(fmap, real)
            fmap = self.act(self.bn2(self.conv2(fmap)))
            fmap = self.bn3(self.conv3(fmap))
        tokens = rearrange(fmap, 'b d h w -> b (h w) d')
        return torch.cat([prefix, tokens], dim=1)

    def _pairs(self) -> tuple[tuple[nn.Conv2d, nn.BatchNorm2d], ...]:
        return (self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)

    def fuse(self) -> None:
        """Fold each batch norm into its convolution, for inference (eval mode): the forward then
        runs three convolutions instead of eight steps over the (B, 4D, h, w) maps, on oneDNN with
        the GELUs as their post-ops where the ``onednn`` switch (read when this layer was built)
        and the operator allow. The same function up to float rounding.

        Inference only, and nothing else changes: the convolutions and batch norms keep their
        parameters, buffers and state-dict keys. The folded weights are computed here, once;
        loading a state dict or moving the module (``.to``) folds again at the next forward, and
        ``train()`` undoes the fusion (call ``fuse()`` again after training)."""
        if self.training:
            raise RuntimeError('LeFF.fuse() folds the batch norms\' running statistics, which only eval '
                               'mode uses: call .eval() first')
        for conv, bn in self._pairs():
            if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
                raise TypeError(f'LeFF.fuse() folds nn.Conv2d -> nn.BatchNorm2d with running statistics; this '
                                f'layer has {type(conv).__name__} -> {type(bn).__name__}'
                                f'{" without running statistics" if getattr(bn, "running_var", 1) is None else ""}')
        self.norms_folded = True
        self.folded_weights = self._fold()

    def _fold(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with torch.no_grad():
            return [fold_batch_norm(conv, bn) for conv, bn in self._pairs()]

    def train(self, mode: bool = True):
        if mode:
            self.norms_folded, self.folded_weights = False, None
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.folded_weights = None  # moved or cast: folded again, from the moved weights, when next used
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.folded_weights = None  # new weights: folded again when next used
        super()._load_from_state_dict(*args, **kwargs)

    def _folded_path(self) -> bool:
        """Whether the forward runs on the folded weights: after :meth:`fuse`, in eval mode without
        autograd (the folded weights carry no gradient to the parameters), and while no forward
        hook watches a part whose call the folded forward would skip."""
        return self.norms_folded and not self.training and not torch.is_grad_enabled() and unhooked(
            self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3, self.act)

    def _folded_forward(self, fmap: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D, h, w) -> (B, D, h, w) through the folded convolutions: three oneDNN calls, each GELU
        its convolution's post-op, where :meth:`_onednn_dtype` allows; else three ``F.conv2d``."""
        if self.folded_weights is None:
            self.folded_weights = self._fold()
        dtype = self._onednn_dtype(fmap)
        if dtype is not None:
            fmap = fmap.to(dtype)
        for i, ((weight, bias), conv) in enumerate(zip(self.folded_weights, (self.conv1, self.conv2, self.conv3))):
            if i == 1:
                fmap = zero_outside(fmap, real)
            if dtype is None:
                fmap = F.conv2d(fmap, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
                fmap = self.act(fmap) if i < 2 else fmap
            else:
                post_op = 'gelu' if i < 2 else 'none'
                fmap = private_ops.convolution_pointwise(
                    fmap, weight.to(dtype), bias.to(dtype), conv.padding, conv.stride, conv.dilation,
                    conv.groups, post_op, [], 'none' if post_op == 'gelu' else '')
        return fmap

    def _onednn_dtype(self, fmap: torch.Tensor) -> torch.dtype | None:
        """The dtype the folded convolutions run in on oneDNN, or None where ``F.conv2d`` must: the
        switch on, a CPU map in float32 or bfloat16 (autocast's dtype when it is on), the activation
        an exact GELU (the post-op), plain ops not needed, and the operator in this torch."""
        dtype = torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else fmap.dtype
        if not self.onednn or fmap.device.type != 'cpu' or dtype not in (torch.float32, torch.bfloat16) \
                or type(self.act) is not nn.GELU or self.act.approximate != 'none' \
                or not private_ops.onednn_convolution_available() or needs_plain_ops():
            return None
        return dtype
