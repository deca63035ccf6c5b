"""Loading weights: official / timm checkpoints, converted to the zoo's layout, checked strictly."""
import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .runtime.checkpoint_reading import read_checkpoint as read_torch_file
from .runtime.stop import StopWithMessage

WRAPPER_KEYS = ('model', 'state_dict', 'state_dict_ema', 'model_ema')


class CheckpointMismatchError(RuntimeError):
    """The checkpoint and the model disagree; the message names every offending key."""


def read_checkpoint(path: str) -> dict:
    """Load a ``.pth`` / ``.pth.tar`` / ``.bin`` (torch) or ``.npz`` (JAX / big_vision) file onto
    the CPU. A missing or unreadable file raises the error every tool gives ("could not read
    checkpoint PATH: <reason>", ``zoo.runtime.checkpoint_reading.read_checkpoint``)."""
    if path.endswith('.npz') and os.path.isfile(path):
        with np.load(path) as npz:
            return {k: torch.from_numpy(npz[k]) for k in npz.files}
    # Released checkpoints sometimes pickle an argparse Namespace next to the weights, which
    # torch >= 2.6's weights_only default refuses; these files are the user's own choice.
    return read_torch_file(path, map_location='cpu')


class WrongCheckpointError(StopWithMessage, ValueError):
    """A checkpoint whose weights do not fit the config's model (another architecture or class
    count); the message names the disagreeing keys."""


def wrong_checkpoint(path: str, model: nn.Module, error: Exception) -> WrongCheckpointError:
    """The one error for a checkpoint that does not fit ``model`` exactly, whichever loader
    found out (``error``: its strict-loading message, cut short)."""
    return WrongCheckpointError(
        f'{path} is not a checkpoint of this config\'s {type(model).__name__.lower()}: {str(error)[:600]} ... '
        'Pass the checkpoint trained with this config, or the config it was trained with')


def load_exactly(model: nn.Module, path: str) -> dict:
    """Read the checkpoint at ``path`` and load its weights (mmengine's ``state_dict`` entry, or
    the file itself) into ``model`` strictly: every key, every shape. tools/test.py, infer.py and
    export.py load this way, where mmengine's ``load_from`` would load the keys that fit, warn,
    and evaluate a half-random model. Returns the whole checkpoint (its ``meta`` too)."""
    checkpoint = read_checkpoint(path)
    weights = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, Mapping) else checkpoint
    if not isinstance(weights, Mapping):
        raise wrong_checkpoint(path, model, TypeError(f'it holds a {type(weights).__name__}, not weights by name'))
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise wrong_checkpoint(path, model, e) from e
    return checkpoint


def unwrap_state_dict(checkpoint: Mapping, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Strip training wrappers: ``model`` / ``state_dict`` / ``state_dict_ema`` entries, a
    ``module.`` prefix (DataParallel / DDP), the ``backbone.`` of an mmengine classifier."""
    order = ('state_dict_ema', 'model_ema') + WRAPPER_KEYS if use_ema else WRAPPER_KEYS
    sd = checkpoint
    for key in order:
        if isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    sd = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    if 'meta' in checkpoint and any(k.startswith('backbone.') for k in sd):
        # An mmengine checkpoint of a classifier (this project's, mmpretrain's): the network is
        # under ``backbone.``; anything else (a distillation teacher) is not part of it.
        sd = {k[len('backbone.'):]: v for k, v in sd.items() if k.startswith('backbone.')}
    return sd


def _fmt(keys, limit=20):
    keys = sorted(keys)
    more = f' ... and {len(keys) - limit} more' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def convert_checkpoint(model: nn.Module, checkpoint, use_ema: bool = False) -> dict:
    """A path or a (wrapped) state dict -> a state dict in this model's key layout, through the
    family converter ``model.checkpoint_filter_fn`` (key renames, position-table resampling)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_checkpoint(os.fspath(checkpoint))
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f'checkpoint must be a path or a state dict, got {type(checkpoint).__name__}')
    sd = unwrap_state_dict(checkpoint, use_ema=use_ema)
    convert = getattr(model, 'checkpoint_filter_fn', None)
    return convert(sd, model) if convert is not None else sd


def _is_classifier(model: nn.Module, key: str) -> bool:
    return any(key == c or key.startswith(c + '.') for c in getattr(model, 'classifier_keys', ()))


def classifier_mismatch(model: nn.Module, state_dict: dict) -> bool:
    """True when the checkpoint's classifier has another shape (class count) than the model's."""
    own = model.state_dict()
    return any(_is_classifier(model, k) and k in own and own[k].shape != v.shape
               for k, v in state_dict.items())


def load_pretrained(model: nn.Module, checkpoint, strict: bool = True,
                    reset_classifier: bool = False, use_ema: bool = False) -> nn.Module:
    """Load ``checkpoint`` (a path or a state dict, official or timm layout) into ``model``.

    The model's family converter maps foreign key layouts to the zoo's and resamples position
    embeddings to the model's grid. With ``strict`` every key must match in name and shape, or a
    CheckpointMismatchError names the missing, unexpected and mis-shaped keys.
    ``reset_classifier`` drops the checkpoint's classifier (another class count) and keeps the
    model's freshly initialised one; a model built without a classifier (``num_classes=0``)
    ignores the checkpoint's.
    """
    sd = convert_checkpoint(model, checkpoint, use_ema=use_ema)
    own = model.state_dict()
    # A headless model (num_classes=0, a feature extractor) takes everything but the classifier.
    sd = {k: v for k, v in sd.items() if k in own or not _is_classifier(model, k)}
    if reset_classifier:
        dropped = [k for k in sd if _is_classifier(model, k)]
        sd = {k: v for k, v in sd.items() if not _is_classifier(model, k)}
        if dropped:
            warnings.warn(f'classifier weights not loaded (reset_classifier): {_fmt(dropped)}',
                          stacklevel=2)

    missing = [k for k in own if k not in sd and not (reset_classifier and _is_classifier(model, k))]
    unexpected = [k for k in sd if k not in own]
    misshaped = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or misshaped:
        msg = [f'checkpoint does not match {type(model).__name__}:']
        if missing:
            msg.append(f'  missing keys ({len(missing)}): {_fmt(missing)}')
        if unexpected:
            msg.append(f'  unexpected keys ({len(unexpected)}): {_fmt(unexpected)}')
        if misshaped:
            shapes = [f'{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)})'
                      for k in misshaped]
            msg.append(f'  mis-shaped keys ({len(misshaped)}): {_fmt(shapes)}')
            if any(_is_classifier(model, k) for k in misshaped):
                msg.append("  the classifier has another class count: pass reset_classifier=True "
                           "to keep the model's new head")
        if strict:
            raise CheckpointMismatchError('\n'.join(msg))
        warnings.warn('\n'.join(msg) + '\n  (strict=False: loading the keys that match)',
                      stacklevel=2)
        sd = {k: v for k, v in sd.items() if k in own and k not in misshaped}
    model.load_state_dict(sd, strict=False)
    return model


def download_checkpoint(url: str, model_name: str) -> dict:
    """Fetch released weights through torch.hub's cache (``$TORCH_HOME/hub/checkpoints``)."""
    from urllib.error import URLError
    cache = os.path.join(torch.hub.get_dir(), 'checkpoints')
    try:
        release_name = os.path.basename(url.split('?')[0])
        match = torch.hub.HASH_REGEX.search(release_name)
        # Hub-style addresses share generic names (pytorch_model.bin): without a hash in the name,
        # the cache file is named after the model so two variants never read each other's weights.
        filename = release_name if match else f'{model_name}-{release_name}'
        path = os.path.join(cache, filename)
        if not os.path.isfile(path):
            os.makedirs(cache, exist_ok=True)
            # Release files carry a sha256 prefix in their name (deit_tiny_...-a1311bcf.pth).
            torch.hub.download_url_to_file(url, path, hash_prefix=match.group(1) if match else None,
                                           progress=True)
    except (URLError, OSError, ConnectionError) as e:
        raise RuntimeError(
            f'could not download the pretrained weights of {model_name} from {url} ({e}). '
            f'This machine seems to be offline: download the file elsewhere, then pass its path, '
            f'e.g. create_model({model_name!r}, pretrained="/path/to/{release_name}"), or copy it '
            f'to {path}') from e
    return read_checkpoint(path)


# --- this project's own classifiers as pretrained weights ----------------------------------------

class ArchitectureMismatchError(StopWithMessage, ValueError):
    """A classifier checkpoint whose network was built with other settings than the model it is
    loaded into; the message names each setting and the value that fits."""


# Settings that change no weight's meaning and may differ between a classifier and a model built
# on its weights: the head, the input size (the position table is resampled), regularisation,
# the attention kernel.
FREE_SETTINGS = frozenset({'num_classes', 'img_size', 'drop_rate', 'attn_drop_rate', 'drop_path_rate', 'fused_attn',
                           'global_pool', 'pretrained', 'name'})
_UNSET = object()


def trained_classifier(checkpoint) -> dict | None:
    """The backbone settings (``dict(name, pretrained, **overrides)``) of a checkpoint this
    project's classification training wrote (a ``Classifier`` config in ``meta['cfg']``, the
    config text mmengine stores); None for any other checkpoint, or where the text does not parse."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    text = meta.get('cfg') if isinstance(meta, Mapping) else None
    if not isinstance(text, str):
        return None
    from mmengine.config import Config
    try:
        model = Config.fromstring(text, '.py').get('model') or {}
    except Exception:  # a config this version cannot parse: the weights still load, unchecked
        return None
    if model.get('type') != 'Classifier' or not isinstance(model.get('backbone'), Mapping):
        return None
    return dict(model['backbone'], num_classes=model.get('num_classes'))


def classifier_settings(backbone: Mapping) -> tuple[str, dict]:
    """A ``Classifier``'s backbone config -> (model name, the settings its network was built with):
    its overrides, under the variant's ``weights_arch`` where it was built to load weights (as
    ``classification.distillation.build_network`` builds it)."""
    from .registry import MODEL_INFO
    settings = dict(backbone)
    name = settings.pop('name')
    pretrained = settings.pop('pretrained', False)
    if pretrained not in (False, None) and name in MODEL_INFO:
        settings = {**MODEL_INFO[name].weights_arch, **settings}
    return name, settings


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_classifier_settings(name: str, overrides: dict, model: nn.Module, classifier: Mapping, path) -> None:
    """Refuse to load the classifier checkpoint at ``path`` (its backbone config ``classifier``,
    :func:`trained_classifier`) into ``model`` (``name`` built with ``overrides``) when the two were
    built with other settings: another variant, or a setting such as T2T-ViT's ``qk_scale`` that
    changes what the same weights compute without changing their shapes (so strict loading would
    not notice). Settings in :data:`FREE_SETTINGS` may differ. A setting one side leaves out has
    the variant's value."""
    import inspect
    their_name, theirs = classifier_settings(classifier)
    if their_name != name:
        raise ArchitectureMismatchError(
            f'{path} is a {their_name} classifier, and the model here is {name}: build {their_name} '
            f'(a detector: model.detector.backbone.name={their_name}), or give a {name} checkpoint')
    variant = getattr(model, 'variant_arch', {})
    defaults = {k: p.default for k, p in inspect.signature(type(model).__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    def value(settings, key):
        return settings[key] if key in settings else variant.get(key, defaults.get(key, _UNSET))

    differ = [(k, value(theirs, k), value(overrides, k)) for k in sorted((set(theirs) | set(overrides)) - FREE_SETTINGS)
              if not _same(value(theirs, k), value(overrides, k))]
    if differ:
        shown = '; '.join(f'{k}={_shown(a)} in the classifier, {_shown(b)} here' for k, a, b in differ)
        fix = ' '.join(f'{k}={a!r}' for k, a, _ in differ if a is not _UNSET)
        raise ArchitectureMismatchError(
            f'{path}: the {name} classifier was built with other settings than this {name}: {shown}. The same weights '
            f'would compute something else. Build it as the classifier was: {fix} (in a detector config: '
            f'model.detector.backbone.<setting>; a setting the classifier left out has the variant\'s value)')


def _shown(value) -> str:
    if value is _UNSET:
        return '(not set)'
    return f'{value!r}' + (' (head_dim ** -0.5)' if value is None else '')


def loading_report(name: str, path, raw: Mapping, converted: Mapping, model: nn.Module, classifier: Mapping | None,
                   reset: bool) -> str:
    """One line: what ``create_model`` loaded from ``path`` into ``model``: how many tensors, which
    were resampled (the position table, from the checkpoint's grid), which were left out."""
    own = model.state_dict()
    loaded = [k for k in own if k in converted and not (reset and _is_classifier(model, k))]
    resampled = [k for k in loaded if k in raw and tuple(raw[k].shape) != tuple(own[k].shape)]
    left_out = [k for k in converted if k not in own or (reset and _is_classifier(model, k))]
    prefix = getattr(model, 'num_prefix_tokens', 0)

    def grid(tokens):
        side = int(round((tokens - prefix) ** 0.5))
        return f'{side}x{side} grid' if side * side == tokens - prefix else f'{tokens} tokens'

    what = f'a {name} classifier trained here, {classifier.get("num_classes")} classes' if classifier else 'weights'
    parts = [f'{name}: loaded {len(loaded)} of {len(own)} tensors from {path} ({what})']
    for key in resampled:
        a, b = tuple(raw[key].shape), tuple(own[key].shape)
        where = f' from the checkpoint\'s {grid(a[1])} to {grid(b[1])}' if key == 'pos_embed' and len(a) == 3 else ''
        parts.append(f'resampled {key} {a} -> {b}{where}')
    if left_out:
        parts.append(f'left out {len(left_out)} ({_fmt(left_out, 4)}: the classifier head)'
                     if all(_is_classifier(model, k) for k in left_out) else f'left out {_fmt(left_out, 4)}')
    return '; '.join(parts)
