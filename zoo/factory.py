"""``create_model``: build a registered variant, optionally with its released weights."""
import os
import warnings

from torch import nn

from .pretrained import classifier_mismatch, convert_checkpoint, download_checkpoint, load_pretrained
from .registry import MODELS, get_model_info


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **overrides) -> nn.Module:
    """Build ``name`` with ``overrides`` (``num_classes``, ``img_size``, ``drop_path_rate``, ...).

    pretrained: False; True for the officially released weights (downloaded once into torch.hub's
    cache); or a path to a local checkpoint in the official or timm layout. When ``num_classes``
    differs from the checkpoint's, the classifier stays freshly initialised, with a warning.
    With weights the model is built as they were trained (:func:`weights_overrides`).
    """
    info = get_model_info(name)
    if pretrained is not False and pretrained is not None:
        overrides = weights_overrides(name, overrides)
    model = MODELS.get(name)(**overrides)
    model.model_name = name
    model.model_info = info
    if pretrained is False or pretrained is None:
        return model
    if pretrained is True:
        if info.url is None:
            raise ValueError(f'{name} has no released weights; pass a checkpoint path instead')
        checkpoint = download_checkpoint(info.url, name)
    else:
        checkpoint = os.fspath(pretrained)
    state_dict = convert_checkpoint(model, checkpoint)
    reset = classifier_mismatch(model, state_dict)
    if reset:
        warnings.warn(f'{name}: the checkpoint\'s classifier was trained for another class count '
                      f'than num_classes={overrides.get("num_classes")}; it is not loaded',
                      stacklevel=2)
    # Already converted: a second pass of the converter is the identity on the zoo's layout.
    return load_pretrained(model, state_dict, strict=True, reset_classifier=reset)


def weights_overrides(name: str, overrides: dict) -> dict:
    """``overrides`` for building ``name`` to load weights into: the variant's ``weights_arch``
    (the settings its released weights were trained with, such as T2T-ViT's qk_scale, which the
    official builders set only when loading them) under the caller's own overrides."""
    return {**get_model_info(name).weights_arch, **overrides}
