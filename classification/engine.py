"""Classifiers as mmengine models, the accuracy metric, the datasets, the collate function and
the layer-decay optimiser constructor, registered so configs can name them:
``model=dict(type='Classifier', ...)``, ``val_evaluator=dict(type='Accuracy')``,
``dataset=dict(type='FashionMNIST', ...)``, ``collate_fn=dict(type='classification_collate')``,
``sampler=dict(type='RepeatAugSampler')``,
``optim_wrapper=dict(constructor='LayerDecayOptimWrapperConstructor', ...)``.
"""
import re

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModel
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import (DATA_SAMPLERS, DATASETS, FUNCTIONS, METRICS, MODELS,
                               OPTIM_WRAPPER_CONSTRUCTORS)
from torch import nn

import zoo.runtime.engine  # noqa: F401  (checkpoint loading fix, CPU torchrun)
from zoo.runtime.divergence import check_finite_losses

from . import transforms as recipes
from .data import FashionMNIST, ImageFolderDataset
from .distillation import DistillationLoss, build_network, build_teacher
from .samplers import RepeatAugSampler
from .transforms import classification_collate


@MODELS.register_module()
class Classifier(BaseModel):
    """A zoo (or torchvision) network trained with soft-target cross-entropy, optionally
    distilled from a teacher as in DeiT.

    backbone: ``dict(name=<zoo name | 'torchvision.<name>'>, pretrained=False | True | path,
    **overrides)`` (``img_size``, ``patch_size``, ``depth``, ``drop_path_rate``, ...). A
    pretrained checkpoint at another resolution has its position table resampled; one with
    another class count loads without its classifier, with a warning (:func:`zoo.create_model`).
    distillation: ``dict(teacher=dict(name, checkpoint, **overrides), kind='hard' | 'soft',
    alpha=0.5, tau=1.0, soft_reduction='elements' | 'batch')`` (:class:`DistillationLoss`);
    the teacher is built on the first training step, so evaluating a distilled student needs
    no teacher. ``grad_checkpointing=True`` recomputes each block's
    activations in backward (``model.set_grad_checkpointing``: less memory, same gradients).
    ``heads_without_teacher``: a distilled architecture trained without ``distillation`` trains
    its class head only, as DeiT (``'class'``: the distillation head stays at its initial
    weights and evaluation still averages both, as in DeiT), or both heads on the labels
    (``'both'``).

    forward(inputs (B, C, H, W), data_samples=dict(labels (B,), indices (B,), targets (B, K) |
    None), mode): 'loss' -> dict of losses; 'predict' -> per image dict(scores (K,) softmax,
    label, index); 'tensor' -> the network's output (logits (B, K), or the (class, distillation)
    pair of a distilled model in training mode).
    """

    def __init__(self, backbone: dict, num_classes: int, label_smoothing: float = 0.0,
                 distillation: dict | None = None, grad_checkpointing: bool = False,
                 heads_without_teacher: str = 'class', data_preprocessor=None, init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        backbone = dict(backbone)
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        name = backbone.pop('name')
        self.backbone = build_network(name, num_classes, **backbone)
        if grad_checkpointing:
            if not hasattr(self.backbone, 'set_grad_checkpointing'):
                raise ValueError(f'{name} has no set_grad_checkpointing: remove '
                                 'model.grad_checkpointing from the config')
            self.backbone.set_grad_checkpointing(True)
        self.distillation_cfg = dict(distillation) if distillation else None
        self._distill: DistillationLoss | None = None
        if heads_without_teacher not in ('class', 'both'):
            raise ValueError(f"heads_without_teacher must be 'class' (DeiT) or 'both', got "
                             f"{heads_without_teacher!r}")
        self.heads_without_teacher = heads_without_teacher
        head_dist = getattr(self.backbone, 'head_dist', None)
        if distillation is None and heads_without_teacher == 'class' and head_dist is not None:
            # DeiT without a teacher trains the class head only; frozen, the distillation head
            # is out of the optimiser (no weight decay either) and out of DDP's gradient sync.
            head_dist.requires_grad_(False)

    @staticmethod
    def config_callees(model_cfg: dict) -> dict:
        """What each nested dict of a Classifier config is handed to, by its path under ``model``,
        so that ``zoo.runtime.config_check`` can check its keys against the signature (and accept an
        argument the config file does not write)."""
        return {'backbone': build_network, 'distillation': DistillationLoss, 'distillation.teacher': build_teacher}

    def distillation_loss(self) -> DistillationLoss | None:
        if self.distillation_cfg is not None and self._distill is None:
            cfg = dict(self.distillation_cfg)
            teacher = dict(cfg.pop('teacher'))
            teacher = build_teacher(teacher.pop('name'), teacher.pop('checkpoint', None),
                                    self.num_classes, **teacher)
            self._distill = DistillationLoss(teacher, **cfg)
        return self._distill

    def forward(self, inputs, data_samples=None, mode='tensor'):
        outputs = self.backbone(inputs)
        if mode == 'tensor':
            return outputs
        if mode == 'loss':
            return self.loss(inputs, outputs, data_samples)
        if mode == 'predict':
            scores = outputs.softmax(dim=-1)
            return [dict(scores=s, label=int(label), index=int(index)) for s, label, index in
                    zip(scores, data_samples['labels'].tolist(), data_samples['indices'].tolist())]
        raise ValueError(f"mode must be 'loss', 'predict' or 'tensor', got {mode!r}")

    def loss(self, inputs, outputs, data_samples) -> dict[str, torch.Tensor]:
        labels, targets = data_samples['labels'], data_samples.get('targets')
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(
                f'label {int(labels.max())} in the data but the model has num_classes='
                f'{self.num_classes}: set num_classes (model.num_classes and the collate '
                f'function\'s) to the data\'s class count in the config')

        def base_loss(logits):
            if targets is not None:  # mixed, smoothed soft targets (B, K) from the collate
                return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
            return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

        distill = self.distillation_loss()
        if distill is not None:
            losses = distill(inputs, outputs, base_loss)
        elif isinstance(outputs, (tuple, list)):
            # A distilled architecture trained without a teacher: the class head learns the
            # labels (DeiT), or both heads do (heads_without_teacher='both').
            heads = outputs if self.heads_without_teacher == 'both' else outputs[:1]
            losses = dict(loss_cls=sum(base_loss(o) for o in heads) / len(heads))
        else:
            losses = dict(loss_cls=base_loss(outputs))
        check_finite_losses(losses)
        return losses


@METRICS.register_module()
class Accuracy(BaseMetric):
    """Top-k accuracy in percent over the whole evaluation set, correct in distributed runs:
    mmengine gathers every process's per-sample results, and samples the distributed sampler
    repeated (to even out the processes) are counted once, by their dataset index. With fewer
    than k classes, top-k is over all classes (100%)."""
    default_prefix = 'accuracy'

    def __init__(self, topk=(1, 5), collect_device: str = 'cpu', prefix=None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(topk)

    def process(self, data_batch, data_samples) -> None:
        for pred in data_samples:
            scores = pred['scores'].detach().float().cpu()
            # Rank of the true class among the scores (0 = top-1).
            rank = int((scores > scores[pred['label']]).sum())
            self.results.append((pred['index'], rank))

    def compute_metrics(self, results) -> dict:
        ranks = dict(results)  # de-duplicates samples the distributed sampler repeated
        n = max(len(ranks), 1)
        return {f'top{k}': 100.0 * sum(r < k for r in ranks.values()) / n for k in self.topk}


def layer_ids(names: list[str]) -> tuple[list[int], int]:
    """Parameter names of a network, in definition order -> each one's layer id for layer-wise
    lr decay, and the number of blocks L.

    Block i (``blocks.i``, in any stage, in order of appearance) is layer i + 1; parameters ahead
    of the first block (patch embedding, tokens, position table) are layer 0; parameters between
    blocks (a later stage's embedding) belong to the next block; the rest (final norm, head,
    class-attention blocks) are layer L + 1.
    """
    block_of = [m.group(0) if (m := re.match(r'(.*?(?:^|\.))?blocks\.\d+\.', n)) else None
                for n in names]
    order = list(dict.fromkeys(b for b in block_of if b is not None))
    index = {b: i + 1 for i, b in enumerate(order)}
    ids, seen = [], 0
    for b in block_of:
        if b is not None:
            seen = max(seen, index[b])
            ids.append(index[b])
        else:
            ids.append(0 if seen == 0 else seen + 1)
    return [min(i, len(order) + 1) for i in ids], len(order)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups as DeiT / BEiT fine-tuning make them, for a ``Classifier``.

    paramwise_cfg:
      layer_decay: lr multiplier decay ** (L + 1 - layer id) (:func:`layer_ids`); 1.0 = none.
      custom_keys: ``{substring: dict(lr_mult=, decay_mult=)}``, the longest match applied on
        top (e.g. ``{'backbone': dict(lr_mult=0.1), 'backbone.head': dict(lr_mult=1.0)}`` for a
        backbone learning at a tenth of the head's rate).
    No weight decay on 1-D parameters (norms, biases) and on the network's ``no_weight_decay()``
    names (class token, position table), as in DeiT.
    """

    def __call__(self, model: nn.Module):
        self.paramwise_cfg = dict(self.paramwise_cfg or {}) or dict(layer_decay=1.0)
        return super().__call__(model)

    def add_params(self, params: list, module: nn.Module, **kwargs) -> None:
        model = module
        backbone = getattr(model, 'backbone', model)
        prefix = 'backbone.' if backbone is not model else ''
        skip = {prefix + n for n in getattr(backbone, 'no_weight_decay', set)()}
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        ids, depth = layer_ids([n[len(prefix):] if n.startswith(prefix) else '' for n, _ in named])
        decay = float(self.paramwise_cfg.get('layer_decay', 1.0))
        custom = self.paramwise_cfg.get('custom_keys', {})
        base_lr, base_wd = self.base_lr, self.base_wd or 0.0
        groups: dict[tuple, dict] = {}
        for (name, param), layer in zip(named, ids):
            if prefix and not name.startswith(prefix):
                layer = depth + 1
            lr_mult, wd_mult = decay ** (depth + 1 - layer), 1.0
            if param.ndim <= 1 or name in skip or name.endswith('.bias'):
                wd_mult = 0.0
            keys = sorted((k for k in custom if k in name), key=len, reverse=True)
            if keys:
                lr_mult *= custom[keys[0]].get('lr_mult', 1.0)
                wd_mult *= custom[keys[0]].get('decay_mult', 1.0)
            key = (round(lr_mult, 12), wd_mult)
            group = groups.setdefault(key, dict(params=[], lr=base_lr * lr_mult,
                                                weight_decay=base_wd * wd_mult))
            group['params'].append(param)
        params.extend(groups.values())


@DATASETS.register_module(name='ImageFolderDataset')
class RegisteredImageFolder(ImageFolderDataset):
    """ImageFolderDataset built from a config: ``transform`` is a dict naming a recipe in
    ``classification.transforms`` with its arguments."""

    def __init__(self, root, transform=None, **kwargs):
        super().__init__(root, transform=build_transform(transform), **kwargs)


@DATASETS.register_module(name='FashionMNIST')
class RegisteredFashionMNIST(FashionMNIST):
    """FashionMNIST built from a config (``transform`` as for ImageFolderDataset)."""

    def __init__(self, transform=None, **kwargs):
        super().__init__(transform=build_transform(transform), **kwargs)


def build_transform(transform):
    if isinstance(transform, dict):
        transform = dict(transform)
        return getattr(recipes, transform.pop('type'))(**transform)
    return transform


FUNCTIONS.register_module(name='classification_collate', module=classification_collate)
DATA_SAMPLERS.register_module(name='RepeatAugSampler', module=RepeatAugSampler)
