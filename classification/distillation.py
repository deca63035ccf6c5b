"""DeiT distillation (Touvron et al., 2021): a frozen teacher and the loss that trains the
student's distillation token against it.

The teacher is any zoo model (``name='deit_small_patch16_224'``) or any torchvision
classification model (``name='torchvision.resnet18'``), with its weights from ``checkpoint``: a
checkpoint tools/train.py wrote (a ``Classifier``'s, whose keys start with ``backbone.``), a
plain state dict, or an official release.
"""
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import zoo
from zoo.factory import weights_overrides
from zoo.pretrained import (classifier_mismatch, convert_checkpoint, read_checkpoint,
                            unwrap_state_dict)

TORCHVISION_PREFIX = 'torchvision.'


def build_network(name: str, num_classes: int, pretrained=False, **overrides) -> nn.Module:
    """A zoo model by its registered name, or a torchvision one as ``'torchvision.<name>'``
    (``pretrained`` then is False or a torchvision weights name such as ``'DEFAULT'``).

    For a zoo model ``pretrained`` is False, True (released weights) or a checkpoint path: an
    official / timm one or one tools/train.py wrote; at another resolution its position table is
    resampled, with another class count its classifier is left out (a warning); the model is
    built as weights are loaded (:func:`zoo.factory.weights_overrides`: T2T-ViT's scale)."""
    if name.startswith(TORCHVISION_PREFIX):
        import torchvision
        weights = None if pretrained in (False, None) else pretrained
        kwargs = dict(overrides)
        if weights is None:
            kwargs['num_classes'] = num_classes
        return torchvision.models.get_model(name[len(TORCHVISION_PREFIX):], weights=weights,
                                            **kwargs)
    if not isinstance(pretrained, (str, os.PathLike)):
        return zoo.create_model(name, pretrained=pretrained, num_classes=num_classes, **overrides)
    # A local checkpoint, possibly a Classifier's (keys under backbone.): loaded as create_model
    # loads one, position table resampled and classifier dropped on another class count.
    model = zoo.create_model(name, **weights_overrides(name, dict(num_classes=num_classes,
                                                                  **overrides)))
    sd = convert_checkpoint(model, classifier_state_dict(os.fspath(pretrained)))
    reset = classifier_mismatch(model, sd)
    if reset:
        warnings.warn(f'{name}: the checkpoint {pretrained} has a classifier for another class '
                      f'count than num_classes={num_classes}; it is not loaded (a new head is '
                      f'trained)', stacklevel=2)
    return zoo.load_pretrained(model, sd, strict=True, reset_classifier=reset)


def classifier_state_dict(checkpoint) -> dict:
    """A path or loaded checkpoint -> the network's state dict: mmengine's ``state_dict``
    wrapper, DDP's ``module.`` and a ``Classifier``'s ``backbone.`` prefixes are removed."""
    if isinstance(checkpoint, str):
        checkpoint = read_checkpoint(checkpoint)
    sd = unwrap_state_dict(checkpoint)
    if any(k.startswith('backbone.') for k in sd):
        sd = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    return sd


def build_teacher(name: str, checkpoint: str | None, num_classes: int, **overrides) -> nn.Module:
    """The frozen teacher network in eval mode, its weights from ``checkpoint`` or, without one,
    from ``pretrained`` (released weights: True for a zoo model, a weights name such as
    ``'IMAGENET1K_V1'`` for a torchvision one). A teacher without trained weights would teach
    noise: one of the two is required."""
    if not checkpoint and not overrides.get('pretrained'):
        raise ValueError(
            f'the distillation teacher {name!r} needs trained weights: set '
            f'model.distillation.teacher.checkpoint to a checkpoint (e.g. one tools/train.py '
            f'wrote for the teacher\'s own config, work_dirs/<config>/epoch_N.pth), or '
            f'teacher.pretrained to released weights')
    teacher = build_network(name, num_classes, **overrides)
    if checkpoint:
        if os.path.isdir(checkpoint):  # a classification run's work dir: its last checkpoint
            from zoo.runtime.checkpointing import resolve_checkpoint
            checkpoint = resolve_checkpoint(checkpoint, 'teacher checkpoint')
        sd = classifier_state_dict(checkpoint)
        if name.startswith(TORCHVISION_PREFIX):
            own = teacher.state_dict()
            missing = [k for k in own if k not in sd]
            unexpected = [k for k in sd if k not in own]
            misshaped = [k for k in sd if k in own and own[k].shape != sd[k].shape]
            if missing or unexpected or misshaped:
                raise zoo.CheckpointMismatchError(
                    f'teacher checkpoint {checkpoint} does not match {name}: missing '
                    f'{missing[:10]}, unexpected {unexpected[:10]}, mis-shaped {misshaped[:10]}')
            teacher.load_state_dict(sd)
        else:
            zoo.load_pretrained(teacher, sd, strict=True)
    teacher.requires_grad_(False)
    return teacher.eval()


class DistillationLoss(nn.Module):
    """DeiT's loss: the base loss on the class head, plus the distillation head against the
    teacher's outputs on the same (augmented, mixed) inputs.

    kind 'soft': KL(softmax(teacher / tau) || softmax(dist / tau)) * tau^2, summed over the batch
    and the classes and divided by ``soft_reduction``'s count: 'elements' (default) B * K, as
    DeiT's code (``reduction='sum'`` ... ``/ outputs.numel()``); 'batch' B, the KL per image, a
    K times stronger term.
    'hard': cross-entropy of the distillation head against the teacher's argmax.
    loss = (1 - alpha) * base + alpha * distillation (DeiT: alpha 0.5, tau 1 and, for hard
    distillation, the two terms weighted equally as here).
    """

    def __init__(self, teacher: nn.Module, kind: str = 'hard', alpha: float = 0.5,
                 tau: float = 1.0, soft_reduction: str = 'elements'):
        super().__init__()
        if kind not in ('soft', 'hard'):
            raise ValueError(f"distillation kind must be 'soft' or 'hard', got {kind!r}")
        if soft_reduction not in ('elements', 'batch'):
            raise ValueError(f"soft_reduction must be 'elements' (DeiT: the summed KL over B * K) "
                             f"or 'batch' (over B), got {soft_reduction!r}")
        # Kept out of the module tree: the teacher is not trained, not saved in the student's
        # checkpoints and not wrapped by DDP.
        self.__dict__['teacher'] = teacher
        self.kind, self.alpha, self.tau = kind, alpha, tau
        self.soft_reduction = soft_reduction

    def forward(self, inputs: torch.Tensor, outputs, base_loss) -> dict[str, torch.Tensor]:
        """inputs (B, C, H, W); outputs (class logits (B, K), distillation logits (B, K)), or one
        (B, K) tensor for a student without a distillation token (then it is distilled too);
        ``base_loss(logits (B, K)) -> scalar``. Returns the weighted parts."""
        pair = isinstance(outputs, (tuple, list))
        cls_logits, dist_logits = outputs if pair else (outputs, outputs)
        teacher = self.teacher
        if next(teacher.parameters()).device != inputs.device:
            teacher.to(inputs.device)
        with torch.no_grad():
            teacher_logits = teacher(inputs)
        if teacher_logits.shape != dist_logits.shape:
            raise ValueError(f'the teacher outputs {tuple(teacher_logits.shape)} logits and the '
                             f'student {tuple(dist_logits.shape)}: both must be trained for the '
                             f'same classes')
        if self.kind == 'soft':
            t = self.tau
            count = (dist_logits.numel() if self.soft_reduction == 'elements'
                     else dist_logits.shape[0])
            distill = F.kl_div(F.log_softmax(dist_logits / t, dim=1),
                               F.log_softmax(teacher_logits / t, dim=1),
                               reduction='sum', log_target=True) * (t * t / count)
        else:
            distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
        return dict(loss_cls=base_loss(cls_logits) * (1 - self.alpha),
                    loss_distill=distill * self.alpha)
