"""Weight initialisation as ViT / DeiT do it."""
from torch import nn


def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """DeiT / timm rule for ``model.apply``: Linear weights truncated-normal(std), biases zero;
    LayerNorm weight one, bias zero. Convolutions keep PyTorch's default (as in timm)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
