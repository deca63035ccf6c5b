"""``create_model``: build a registered variant, optionally with its released weights."""
import logging
import os
import sys
import warnings

from torch import nn

from .pretrained import (check_classifier_settings, classifier_mismatch, convert_checkpoint, download_checkpoint,
                         load_pretrained, loading_report, read_checkpoint, trained_classifier, unwrap_state_dict)
from .registry import MODELS, get_model_info


def create_model(name: str, pretrained: bool | str | os.PathLike = False, **overrides) -> nn.Module:
    """Build ``name`` with ``overrides`` (``num_classes``, ``img_size``, ``drop_path_rate``, ...).

    pretrained: False; True for the officially released weights (downloaded once into torch.hub's
    cache); or a path to a local checkpoint in the official or timm layout, or one this project's
    classification training wrote (``work_dirs/<run>/epoch_N.pth``, or the work dir for its last
    checkpoint). When ``num_classes`` differs from the checkpoint's, the classifier stays freshly
    initialised, with a warning.
    With weights the model is built as they were trained: released ones with the variant's
    ``weights_arch`` (:func:`weights_overrides`); a classifier trained here must have been built
    with the settings ``overrides`` give, compared with the config in its meta (another
    ``qk_scale``, say, raises ``ArchitectureMismatchError`` naming it). One log line says what
    was loaded, resampled (the position table, from the checkpoint's grid) and left out.
    """
    info = get_model_info(name)
    checkpoint = classifier = None
    if pretrained is True:
        if info.url is None:
            raise ValueError(f'{name} has no released weights; pass a checkpoint path instead')
        checkpoint = download_checkpoint(info.url, name)
    elif pretrained is not False and pretrained is not None:
        path = os.fspath(pretrained)
        if os.path.isdir(path):  # a classification run's work dir: its last checkpoint
            from .runtime.checkpointing import resolve_checkpoint
            path = pretrained = resolve_checkpoint(path, 'pretrained')
        checkpoint = read_checkpoint(path)
        classifier = trained_classifier(checkpoint)
    if checkpoint is not None and classifier is None:
        # released weights (or another project's): built as they were trained (weights_arch); a
        # classifier trained here was built with the settings its config names, checked below
        overrides = weights_overrides(name, overrides)
    model = MODELS.get(name)(**overrides)
    model.model_name = name
    model.model_info = info
    if checkpoint is None:
        return model
    where = info.url if pretrained is True else os.fspath(pretrained)
    if classifier is not None:
        check_classifier_settings(name, overrides, model, classifier, where)
    raw = unwrap_state_dict(checkpoint)
    state_dict = convert_checkpoint(model, checkpoint)
    reset = classifier_mismatch(model, state_dict)
    if reset:
        warnings.warn(f'{name}: the checkpoint\'s classifier was trained for another class count '
                      f'than num_classes={overrides.get("num_classes")}; it is not loaded',
                      stacklevel=2)
    # Already converted: a second pass of the converter is the identity on the zoo's layout.
    model = load_pretrained(model, state_dict, strict=True, reset_classifier=reset)
    _log_info(loading_report(name, where, raw, state_dict, model, classifier, reset))
    return model


def _log_info(message: str) -> None:
    """``message`` into the run's log where mmengine is in use (its current logger: the training
    run's log file and console), else into Python's ``logging`` as ``zoo.factory``. mmengine is
    not imported for this: ``import zoo`` stays free of the training framework."""
    if 'mmengine' in sys.modules:
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().info(message)
    else:
        logging.getLogger(__name__).info(message)


def weights_overrides(name: str, overrides: dict) -> dict:
    """``overrides`` for building ``name`` to load weights into: the variant's ``weights_arch``
    (the settings its released weights were trained with, such as T2T-ViT's qk_scale, which the
    official builders set only when loading them) under the caller's own overrides."""
    return {**get_model_info(name).weights_arch, **overrides}
