"""What a detector checkpoint records about the run that wrote it, and the tools reading it back.

A run trained with ``--data DIR --img-size N`` has a class count, class names and image sizes
its config file does not say. Each checkpoint keeps them in ``meta['run_settings']``
(:func:`run_settings`, written by ``ClassCountCheckHook``): the class count and names, the
``--data`` folder, ``--img-size``, ``--val-fraction``, the train and test transforms the run used, and
the model settings its command line changed (``--cfg-options model.detector.num_queries=8``:
:func:`model_options`). tools/test.py, tools/infer.py, tools/export.py and ``detection.Predictor`` read
them back (:func:`use_checkpoint_settings`, :func:`apply_run_settings`), so that

    python tools/test.py configs/demo/detr_t2t_shapes.py work_dirs/mine

evaluates a ``--data`` run without repeating ``--data``, ``--img-size``, ``--val-fraction`` or
``--cfg-options model.num_classes=... model.detector.num_queries=...``, and without the run's dumped
config: the detector is built as it was trained. A work dir stands for
its last checkpoint (``zoo.runtime.checkpointing.resolve_checkpoint``), so no command names an epoch.
What the command line says wins over the checkpoint, and the checkpoint over the config file.
Checkpoints written before this record get the same settings from the config text mmengine
stores in their meta, except the model settings the command line changed (the text does not say
which ones those were: :func:`settings_from_meta` gives None for them).
"""
import os.path as osp
from collections.abc import Mapping

import torch
from mmengine.config import Config

from zoo.runtime.checkpointing import CheckpointNotFoundError, CheckpointReadError, resolve_checkpoint

META_KEY = 'run_settings'


def _plain(value):
    """Config values as plain Python (a checkpoint should unpickle without mmengine's types)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _transforms(cfg, loader: str):
    dataset = (cfg.get(loader) or {}).get('dataset') or {}
    return _plain(dataset.get('transforms')) if isinstance(dataset, Mapping) else None


def run_settings(cfg, classes=None, model_options: dict | None = None) -> dict:
    """The record a checkpoint of a detection run keeps: ``num_classes``, ``classes`` (names in
    label order), ``data_root`` (the ``--data`` folder, absolute; None for the config's own
    data), ``img_size`` (``--img-size``; None), ``val_fraction`` (the share a ``--data`` folder
    without a val split held out; None without ``--data``), ``train_transforms``,
    ``test_transforms`` and ``model_options`` (:func:`model_options`; None where unknown)."""
    folder = cfg.get('data_folder') or {}
    classes = classes if classes is not None else folder.get('classes')
    return dict(num_classes=int(cfg.model.num_classes), classes=list(classes) if classes else None,
                data_root=folder.get('root'), img_size=folder.get('img_size'),
                val_fraction=folder.get('val_fraction'),
                train_transforms=_transforms(cfg, 'train_dataloader'),
                test_transforms=_transforms(cfg, 'test_dataloader') or _transforms(cfg, 'val_dataloader'),
                model_options=model_options)


_NOT_SET = object()


def model_options(cfg) -> dict | None:
    """The model settings of a run that its config file does not say: ``cfg.model`` against the
    model of the file ``cfg.filename`` as written, as ``{'model.KEY.PATH': value}`` for each
    setting the run added or changed (``--cfg-options model.detector.num_queries=8``; train.py's
    ``--load-from`` switching the backbone's ``pretrained`` off and adding the released weights'
    settings). The class count is left out (``num_classes`` records it). None where the file
    cannot be read again (a config built in memory): then nothing is known."""
    from .finetune import _flatten, _plain as as_lists
    path = getattr(cfg, 'filename', None)
    if not path or not osp.isfile(path) or not isinstance(cfg.get('model'), Mapping):
        return None
    try:
        written = Config.fromfile(path).get('model') or {}
    except Exception:  # the file changed since and no longer parses: its differences are unknown
        return None
    run, file = _flatten(_plain(cfg.model)), _flatten(as_lists(written))
    return {f'model.{key}': value for key, value in run.items()
            if key != 'num_classes' and file.get(key, _NOT_SET) != as_lists(value)}


def _lookup(cfg, dotted: str):
    node = cfg
    for part in dotted.split('.'):
        if not isinstance(node, Mapping) or part not in node:
            return _NOT_SET
        node = node[part]
    return node


def _given(key: str, given) -> bool:
    """Whether the command line's ``--cfg-options`` set ``key``, or a dict holding it, or a part of it."""
    return any(key == g or key.startswith(g + '.') or g.startswith(key + '.') for g in given)


def read_meta(path: str) -> dict:
    """A checkpoint's ``meta`` (memory-mapped where torch can, so the weights are not read)."""
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
    except Exception:
        from zoo.runtime.checkpointing import read_checkpoint
        checkpoint = read_checkpoint(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    return dict(meta) if isinstance(meta, Mapping) else {}


def settings_from_meta(meta: Mapping) -> dict | None:
    """A checkpoint's run settings: its ``run_settings`` record, or, for a detector checkpoint
    written before it, the same read from the config text mmengine keeps in ``meta['cfg']`` and
    the training set's ``dataset_meta``. None for other checkpoints (official releases,
    classifiers)."""
    if isinstance(meta.get(META_KEY), Mapping):
        return dict(meta[META_KEY])
    from .finetune import checkpoint_config
    cfg = checkpoint_config(meta)
    if cfg is None or (cfg.get('model') or {}).get('type') != 'Detector':
        return None
    classes = (meta.get('dataset_meta') or {}).get('classes')
    return run_settings(cfg, list(classes) if classes else None)


def apply_run_settings(cfg: Config, settings: Mapping | None, args, need_data: bool = True) -> list[str]:
    """Put a checkpoint's run settings into ``cfg`` and ``args`` where the command line
    (``args.data``, ``args.img_size``, ``args.val_fraction``, ``args.cfg_options``) does not say
    otherwise: the class count (``cfg.model.num_classes``), the model settings the run's command
    line changed (``model_options``: each one ``--cfg-options`` sets now is left as given), the
    ``--data`` folder, its ``--val-fraction`` and ``--img-size`` (set on ``args``, for
    ``apply_data_arguments`` to apply next), else the test transforms the run used. Returns what
    differs from the config and was taken, for a log line. ``need_data``: the command reads the
    data (tools/test.py, infer.py ``--val``): the run's ``--data`` folder is used, and one that is
    gone stops the command with the fix; without it (drawing given images, exporting) the folder
    is not read."""
    from .finetune import _plain as as_lists  # tuples as lists: a config's tuple and its printed list agree
    if not settings or (cfg.get('model') or {}).get('type') != 'Detector':
        return []
    given = set(getattr(args, 'cfg_options', None) or {})
    taken = []
    if settings.get('num_classes') and 'model.num_classes' not in given:
        if cfg.model.num_classes != int(settings['num_classes']):
            taken.append(f'num_classes={settings["num_classes"]}')
        cfg.model.num_classes = int(settings['num_classes'])
    changed = {}
    for key, value in (settings.get('model_options') or {}).items():
        if not _given(key, given) and as_lists(_lookup(cfg, key)) != as_lists(value):
            changed[key] = value
    if changed:  # e.g. num_queries=8 given at training: built with 8 queries, or the weights would not fit
        cfg.merge_from_dict(changed)
        taken += [f'{key}={value!r}' for key, value in changed.items()]
    root = settings.get('data_root')
    if root and need_data and getattr(args, 'data', None) is None:
        if osp.isdir(root):
            args.data = root
            taken.append(f'--data {root}')
        else:
            raise SystemExit(f'error: the checkpoint was trained with --data {root}, which is no longer there: pass '
                             f'--data DIR with the folder where that data set is now')
    fraction = settings.get('val_fraction')
    if (root and need_data and fraction is not None and getattr(args, 'val_fraction', None) is None
            and getattr(args, 'data', None) and osp.abspath(args.data) == osp.abspath(root)):
        # the run's folder: the same held-out images (a folder without a val split; no effect otherwise)
        args.val_fraction = float(fraction)
        from .data.formats import VAL_FRACTION
        if args.val_fraction != VAL_FRACTION:
            taken.append(f'--val-fraction {args.val_fraction:g}')
    if getattr(args, 'img_size', None) is None and settings.get('img_size'):
        args.img_size = int(settings['img_size'])
        taken.append(f'--img-size {args.img_size}')
    elif getattr(args, 'img_size', None) is None and settings.get('test_transforms') and not any(
            k.endswith('.transforms') or '.transforms.' in k for k in given):
        changed = False
        for loader in ('val_dataloader', 'test_dataloader'):
            if cfg.get(loader) and cfg[loader].get('dataset') is not None:
                changed |= as_lists(cfg[loader].dataset.get('transforms')) != as_lists(settings['test_transforms'])
                cfg[loader].dataset.transforms = dict(settings['test_transforms'])
        if changed:
            taken.append(f'the test transforms {dict(settings["test_transforms"])}')
    return taken


def use_checkpoint_settings(cfg: Config, args, need_data: bool = True) -> str:
    """For the tools: ``args.checkpoint`` (a file or a work dir, whose last checkpoint is used)
    resolved to a file, and its run settings applied (:func:`apply_run_settings`), with a line
    on the terminal saying what came from the checkpoint. An ``.onnx`` graph is left as it is.
    Returns the checkpoint file; a path that names none ends the command with why."""
    path = args.checkpoint
    if str(path).endswith('.onnx'):
        return path
    try:
        path = resolve_checkpoint(path)
    except (CheckpointNotFoundError, CheckpointReadError) as error:
        raise SystemExit(f'error: {error}') from None
    if path != args.checkpoint:
        print(f'{args.checkpoint}: using its last checkpoint, {path}')
    args.checkpoint = path
    taken = apply_run_settings(cfg, settings_from_meta(read_meta(path)), args, need_data)
    if taken:
        print(f'from the checkpoint: {", ".join(taken)}')
    return path
