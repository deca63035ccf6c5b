"""Fine-tuning a detector from a detector checkpoint of any class count.

``tools/train.py CONFIG --load-from CKPT`` (or ``load_from`` in a config) starts a new run from
this project's own detector checkpoints (a file or a work dir) or the official DETR / Deformable
DETR / Hugging Face releases (converted by ``detection.checkpoints``), whatever classes they were
trained on:

* what depends on the class count (:data:`CLASS_DEPENDENT`: DETR's class head with its no-object
  row, Deformable DETR's per-layer class heads and the two-stage encoder's, the denoising label
  embedding, the dense head's class branch) keeps this model's fresh initialisation when the
  checkpoint has another class count, or the same count of other class names;
* everything else must match in name and shape and is loaded; a checkpoint of another backbone,
  width, depth or set of parts is refused with what differs (keys, shapes, and the model settings
  that differ where the checkpoint records its config), before anything is trained;
* one log line says what was loaded and what was re-initialised.

mmengine's own ``load_from`` loads non-strictly: it prints "size mismatch for
net.class_embed.weight" and leaves every other disagreement at its random initialisation.
"""
import re
from collections.abc import Mapping

import torch
from mmengine.config import Config

from zoo.pretrained import read_checkpoint
from zoo.runtime.stop import StopWithMessage

from .checkpoints import LAYOUTS, convert_layout, select_coco_classes

# Key prefixes of a DETR / DeformableDETR state dict whose shapes depend on num_classes.
CLASS_DEPENDENT = ('class_embed.', 'denoising.label_embed.', 'dense_head.class_head.')

# Which setting builds each part of the network, for the refusal's hint (first match wins).
_PART_SETTINGS = (
    ('backbone.', 'model.detector.backbone (name and its size settings)'),
    ('denoising.', 'model.detector.denoising'),
    ('dense_head.', 'model.detector.dense_aux'),
    ('query_embed', 'model.detector.num_queries'),
    ('', 'model.detector widths and depths (hidden_dim, ffn_dim, enc_layers, dec_layers, num_feature_levels)'),
)
# Settings that may differ between the checkpoint's run and this one.
_FREE_SETTINGS = re.compile(r'(^|\.)(num_classes|pretrained|top_k|grad_checkpointing|frozen_blocks|dropout|'
                            r'drop_path_rate|drop_rate|attn_drop_rate|matcher|criterion)(\.|$)')


class FineTuneMismatchError(StopWithMessage, ValueError):
    """A ``--load-from`` checkpoint that does not fit the config's detector apart from the class
    heads; the message names what differs and how to make them agree."""


def is_class_dependent(key: str) -> bool:
    """Whether ``key`` (of the network, no ``net.``) has a shape that depends on num_classes."""
    return key.startswith(CLASS_DEPENDENT)


def network_weights(checkpoint: Mapping) -> dict:
    """A checkpoint as read -> the detector network's tensors by name: mmengine's ``state_dict``
    entry, the official releases' ``model`` entry, or the file itself (Hugging Face, a bare state
    dict); DDP's ``module.`` and the ``Detector``'s ``net.`` prefixes removed."""
    weights = checkpoint
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), Mapping):
            weights = checkpoint[key]
            break
    weights = {k: v for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if weights and all(k.startswith('module.') for k in weights):
        weights = {k[len('module.'):]: v for k, v in weights.items()}
    if any(k.startswith('net.') for k in weights):
        weights = {k[len('net.'):]: v for k, v in weights.items() if k.startswith('net.')}
    return weights


def checkpoint_config(meta: Mapping | None) -> Config | None:
    """The config a checkpoint of this project was trained with (mmengine keeps its text in
    ``meta['cfg']``); None for other checkpoints or a text that does not parse."""
    text = (meta or {}).get('cfg')
    if not isinstance(text, str):
        return None
    try:
        return Config.fromstring(text, '.py')
    except Exception:  # a config of another version may not parse: its settings are then not compared
        return None


def _flatten(value, prefix: str = '') -> dict:
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f'{prefix}{key}.'))
        return out
    return {prefix[:-1]: value}


def _plain(value):
    """Config values as plain dicts and lists (a tuple and the list it prints as compare equal)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def settings_diff(checkpoint_model: Mapping | None, model: Mapping | None, limit: int = 8) -> list[str]:
    """The model settings (``model.*``) that differ between the checkpoint's config and this
    run's, as 'model.KEY: checkpoint A, this config B' (class counts, pretrained weights and
    training-only settings left out)."""
    if not checkpoint_model or not model:
        return []
    theirs, ours = _flatten(_plain(checkpoint_model)), _flatten(_plain(model))
    missing = '(not set)'
    lines = []
    for key in sorted(set(theirs) | set(ours)):
        a, b = theirs.get(key, missing), ours.get(key, missing)
        if _FREE_SETTINGS.search(key) or key.startswith('data_preprocessor') or a == b:
            continue
        lines.append(f'model.{key}: checkpoint {a!r}, this config {b!r}')
    return lines[:limit] + ([f'... and {len(lines) - limit} more'] if len(lines) > limit else [])


def key_prefixes(keys, limit: int = 8) -> str:
    """Keys -> their modules, numbered siblings collapsed: ``class_embed.0-6, denoising.label_embed``."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        module = key.rsplit('.', 1)[0] if '.' in key else key
        match = re.search(r'\.(\d+)(?=\.|$)', module)
        if match:
            pattern = module[:match.start(1)] + '{}' + module[match.end(1):]
            groups.setdefault(pattern, []).append(int(match[1]))
        else:
            groups.setdefault(module, [])
    names = []
    for pattern, numbers in sorted(groups.items()):
        numbers = sorted(set(numbers))
        if not numbers:
            names.append(pattern)
        elif numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1:
            names.append(pattern.format(f'{numbers[0]}-{numbers[-1]}'))
        else:
            names.append(pattern.format(','.join(map(str, numbers))))
    more = f' and {len(names) - limit} more' if len(names) > limit else ''
    return ', '.join(names[:limit]) + more


def _where(keys) -> str:
    """The settings that build the parts ``keys`` belong to."""
    found = []
    for key in keys:
        setting = next(s for prefix, s in _PART_SETTINGS if key.startswith(prefix))
        if setting not in found:
            found.append(setting)
    return '; '.join(found)


def checkpoint_class_count(weights: Mapping, kind: str) -> int | None:
    """The class count a converted state dict's class head was trained for."""
    head = weights.get('class_embed.weight', weights.get('class_embed.0.weight'))
    if head is None:
        return None
    return head.shape[0] - int(kind == 'DETR')


def load_for_finetuning(detector, path: str, model_cfg: Mapping | None = None,
                        classes: list[str] | None = None, logger=None) -> dict:
    """Load the checkpoint at ``path`` into ``detector`` (a ``Detector``) to start a new run
    from it (see the module docstring). ``model_cfg``: this run's ``cfg.model``, compared with the
    checkpoint's for the refusal; ``classes``: this run's class names, which decide whether
    class heads of the same count are kept. Returns the checkpoint as read (its ``meta`` too).
    Raises :class:`FineTuneMismatchError` naming what differs."""
    net = detector.net
    kind = type(net).__name__
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, Mapping):
        raise FineTuneMismatchError(f'--load-from {path}: it holds a {type(checkpoint).__name__}, not weights by name')
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), Mapping) else {}
    their_cfg = checkpoint_config(meta)
    their_model = their_cfg.get('model') if their_cfg is not None else None
    if isinstance(their_model, Mapping) and their_model.get('type') == 'Classifier':
        name = (their_model.get('backbone') or {}).get('name')
        raise FineTuneMismatchError(
            f'--load-from {path} is a classifier checkpoint ({name}), not a detector one: a detector starts from a '
            f'classifier through its backbone, --cfg-options model.detector.backbone.pretrained={path} '
            f'(with model.detector.backbone.name={name})')
    try:
        weights, layout, encoder_head = convert_layout(network_weights(checkpoint), net)
    except ValueError as error:
        raise FineTuneMismatchError(f'--load-from {path}: {error}') from error
    if layout in LAYOUTS:  # the releases' 91 COCO ids: narrowed where this model has COCO's 80 classes
        try:
            weights = select_coco_classes(weights, net.num_classes, no_object=kind == 'DETR',
                                          encoder_head=encoder_head)
        except ValueError:
            pass  # another class count: the heads are re-initialised below

    own = net.state_dict()
    their_classes = list((meta.get('dataset_meta') or {}).get('classes') or []) or None
    their_count = len(their_classes) if their_classes else checkpoint_class_count(weights, kind)
    same_shapes = all(weights[k].shape == v.shape for k, v in own.items() if is_class_dependent(k) and k in weights)
    other_names = same_shapes and bool(classes and their_classes and list(classes) != their_classes)
    keep_heads = same_shapes and not other_names

    missing = [k for k in own if k not in weights and not is_class_dependent(k)]
    unexpected = [k for k in weights if k not in own]
    misshaped = [k for k in own if k in weights and not is_class_dependent(k) and weights[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        source = LAYOUTS.get(layout, {'ours': 'this project\'s layout'}.get(layout, 'an unknown layout'))
        lines = [f'--load-from {path} ({source}) does not fit this config\'s {kind} beyond its class heads, so it is '
                 'not loaded:']
        differs = settings_diff(their_model, model_cfg)
        if differs:
            lines.append('  settings that differ: ' + '; '.join(differs))
        if missing:
            lines.append(f'  the model has {len(missing)} tensors the checkpoint lacks: {key_prefixes(missing)}')
        if unexpected:
            lines.append(f'  the checkpoint has {len(unexpected)} tensors the model lacks: {key_prefixes(unexpected)}')
        if misshaped:
            shown = ', '.join(f'{k} (checkpoint {tuple(weights[k].shape)}, model {tuple(own[k].shape)})'
                              for k in misshaped[:4])
            lines.append(f'  {len(misshaped)} tensors of other shapes: {shown}'
                         + (f' and {len(misshaped) - 4} more' if len(misshaped) > 4 else ''))
        how = ('the checkpoint\'s values above' if differs
               else f'the settings of {_where(missing + unexpected + misshaped)}')
        lines.append(f'Build the detector as the checkpoint was built: its own config, or --cfg-options with {how}. '
                     'Only the class count may differ.')
        raise FineTuneMismatchError('\n'.join(lines))

    reinit = [k for k in own if is_class_dependent(k) and (not keep_heads or k not in weights)]
    state = {k: (own[k] if k in reinit else weights[k]) for k in own}
    net.load_state_dict(state, strict=True)

    source = {'ours': 'this project\'s layout'}.get(layout, LAYOUTS.get(layout, layout))
    counted = f'{their_count} classes' if their_count is not None else 'classes unknown'
    if their_classes:
        counted += ': ' + ', '.join(their_classes[:6]) + (', ...' if len(their_classes) > 6 else '')
    if not reinit:
        why = 'class heads kept: same classes'
    elif other_names:
        why = f'for this run\'s {net.num_classes} classes (the same count, other names)'
    else:
        why = f'for this model\'s {net.num_classes} classes'
    message = (f'--load-from {path} ({source}, {counted}): loaded {len(own) - len(reinit)} of {len(own)} tensors; '
               + (f're-initialised {len(reinit)} {why}: {key_prefixes(reinit)}' if reinit else why))
    if logger is not None:
        logger.info(message)
    return checkpoint
