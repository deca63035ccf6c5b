"""Config typos caught when the config is loaded, with the nearest existing names.

mmengine's ``Config.merge_from_dict`` (``--cfg-options``) sets whatever key it is given: a
misspelt ``train_cfgs.max_epochs=1`` adds an entry nothing reads, and the run trains for the
configured epochs without a word; a misspelt model argument surfaces as a bare ``TypeError``
once the Runner builds the model, after the work dir and the logs are set up.

* :func:`merge_options`: an override key must name an entry of the config, or an argument of
  what its dict is handed to: the Runner for top-level keys (``experiment_name``, ``load_from``),
  the class a dict's ``type`` names in an mmengine registry, torch's DataLoader for the
  ``*_dataloader`` dicts, the parts a model class lists in ``config_callees`` (the detector, its
  backbone, ...): ``model.detector.backbone.drop_path_rate=0.1`` needs no entry in the file.
  Any other key is an error listing the nearest names (``difflib.get_close_matches``);
  ``+key=value`` marks a key new on purpose and sets ``key`` (without the ``+``).
* :func:`check_model_arguments`: the model's keyword arguments, and those of the parts it
  lists, against the constructors' signatures: file and overrides alike.

``zoo.runtime.engine.load_config`` (tools/train.py, tools/test.py) applies both.
"""
import difflib
import inspect

from mmengine import registry as mm_registry
from mmengine.runner import Runner
from torch.utils.data import DataLoader

from .stop import StopWithMessage

NEW_KEY = '+'
# Keys read besides the arguments of the dict's reader: this project's top-level switches, and
# what mmengine's build_optim_wrapper (and zoo.runtime.divergence) take out of ``optim_wrapper``.
EXTRA_KEYS = {(): {'verbose_console', 'find_unused_parameters', 'strict_load'},
              ('optim_wrapper',): {'constructor', 'paramwise_cfg', 'nonfinite'}}
PATH_CALLEES = {(name,): DataLoader for name in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
# The mmengine registries a config ``type`` is looked up in, in this order.
REGISTRIES = ('MODELS', 'DATASETS', 'HOOKS', 'METRICS', 'LOOPS', 'OPTIM_WRAPPERS', 'OPTIMIZERS',
              'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'DATA_SAMPLERS', 'FUNCTIONS', 'EVALUATOR',
              'TRANSFORMS', 'VISUALIZERS', 'VISBACKENDS', 'LOG_PROCESSORS')


class ConfigError(StopWithMessage, ValueError):
    """A config key or model argument that names nothing; the message lists the nearest names."""


class Accepts(frozenset):
    """The argument names a reader takes where no one signature lists them (a zoo backbone's
    overrides reach its family's constructor through ``**kwargs``); ``__name__`` names the
    reader in messages."""

    def __new__(cls, names, name: str):
        accepts = super().__new__(cls, names)
        accepts.__name__ = name
        return accepts


def argument_names(fn) -> set[str] | None:
    """The keyword arguments ``fn`` (a class: its constructor; an :class:`Accepts`: its names)
    takes; None where it takes any (``**kwargs``) or its signature cannot be read."""
    if isinstance(fn, Accepts):
        return set(fn)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def registered(type_name):
    """What a config ``type`` names: itself where it is a class or function, else the first of
    mmengine's registries (``REGISTRIES``) that has it; None where none does."""
    if callable(type_name):
        return type_name
    if not isinstance(type_name, str) or '.' in type_name:  # a scoped name would import its package
        return None
    for name in REGISTRIES:
        found = getattr(mm_registry, name).get(type_name)
        if found is not None:
            return found
    return None


def unknown_name(where: str, name: str, known, owner: str | None = None) -> str:
    """The one description of a name that does not exist, for both checks:
    '<where>.<name> does not exist (<owner> takes no such argument); nearest: <where>.<close>'."""
    full = lambda key: f'{where}.{key}' if where else key  # noqa: E731
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = (f'nearest: {", ".join(full(k) for k in close)}' if close else
            f'the names there: {", ".join(known[:15])}{" ..." if len(known) > 15 else ""}')
    return f'{full(name)} does not exist{f" ({owner} takes no such argument)" if owner else ""}; {hint}'


def _model_callees(cfg: dict) -> dict:
    """The model class's ``config_callees(model_cfg)``: what each nested dict of its config is
    handed to, by dotted path under ``model`` (empty for a model class without it)."""
    model = cfg.get('model')
    model_cls = registered(model.get('type')) if isinstance(model, dict) else None
    return model_cls.config_callees(model) if hasattr(model_cls, 'config_callees') else {}


def callee(cfg: dict, path: tuple):
    """What the dict at ``path`` (keys from the root) is handed to; None where unknown."""
    if not path:
        return Runner
    if path in PATH_CALLEES:
        return PATH_CALLEES[path]
    if path[0] == 'model' and len(path) > 1:
        found = _model_callees(cfg).get('.'.join(path[1:]))
        if found is not None:
            return found
    node = _at(cfg, path)
    return registered(node.get('type')) if isinstance(node, dict) else None


def _at(cfg: dict, path):
    node = cfg
    for key in path:
        node = node[int(key)] if isinstance(node, (list, tuple)) else node[key]
    return node


def _accepted(cfg: dict, path: tuple) -> set[str] | None:
    """The names valid in the dict at ``path``: its entries, its reader's arguments and
    ``EXTRA_KEYS``; None where any name is (the reader takes ``**kwargs``)."""
    node = _at(cfg, path)
    keys = set(node) | EXTRA_KEYS.get(path, set())
    reader = callee(cfg, path)
    if reader is None:
        return keys
    names = argument_names(reader)
    return None if names is None else keys | names


def option_problem(cfg: dict, key: str) -> str | None:
    """Why the override ``key`` (dotted; list items by index) names nothing; None where it does."""
    parts = key.split('.')
    node = cfg
    for i, part in enumerate(parts):
        if part == '_delete_':
            return None
        if isinstance(node, (list, tuple)):
            if not part.isdigit() or int(part) >= len(node):
                return f'{".".join(parts[:i]) or "the config"} is a list of {len(node)}: no item {part!r}'
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            if node is None or isinstance(node, bool):  # a switch given settings: they replace it
                return None
            return f'{".".join(parts[:i])} is {node!r}, which has no entry {part!r}'
        if part in node:
            node = node[part]
            continue
        accepted = _accepted(cfg, tuple(parts[:i]))
        if accepted is None or part in accepted:
            return None  # an argument of what reads this dict: the reader checks its value
        return unknown_name('.'.join(parts[:i]), part, accepted)
    return None


def merge_options(cfg, options: dict | None):
    """``cfg`` with the ``--cfg-options`` merged, after every key is checked
    (:func:`option_problem`); keys marked ``+`` are set as they are, without the ``+``."""
    if not options:
        return cfg
    plain = cfg.to_dict()
    problems = {key: option_problem(plain, key) for key in options if not key.startswith(NEW_KEY)}
    problems = {key: problem for key, problem in problems.items() if problem}
    if problems:
        raise ConfigError('--cfg-options names keys that do not exist:\n  '
                          + '\n  '.join(problem if problem.startswith(f'{key} ') else f'{key}: {problem}'
                                         for key, problem in problems.items())
                          + f'\nFix the spelling, or mark a key that is new on purpose with {NEW_KEY}: '
                          + ' '.join(f'{NEW_KEY}{key}=...' for key in problems))
    cfg.merge_from_dict({k[len(NEW_KEY):] if k.startswith(NEW_KEY) else k: v for k, v in options.items()})
    return cfg


def _argument_problems(where: str, node: dict, fn) -> list[str]:
    names = argument_names(fn)
    if names is None:
        return []
    owner = getattr(fn, '__name__', str(fn))
    return [unknown_name(where, key, names, owner) for key in sorted(set(node) - names - {'type', '_scope_'})]


def check_model_arguments(cfg) -> None:
    """Every keyword argument of ``cfg.model`` (its registered class's constructor) and of the
    nested dicts the class lists in ``config_callees`` exists in the signature it is passed to;
    else a :class:`ConfigError` naming each with the nearest arguments, before anything is
    built. Readers that take ``**kwargs`` (a zoo backbone's overrides) are left to themselves."""
    model = cfg.get('model')
    if not isinstance(model, dict):
        return
    model = model.to_dict() if hasattr(model, 'to_dict') else dict(model)
    model_cls = registered(model.get('type'))
    if model_cls is None:
        return  # mmengine names an unknown type when it builds
    problems = _argument_problems('model', model, model_cls)
    for sub, fn in _model_callees({'model': model}).items():
        node = model
        for key in sub.split('.'):
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            problems += _argument_problems(f'model.{sub}', node, fn)
    if problems:
        raise ConfigError("the config's model has arguments that do not exist:\n  " + '\n  '.join(problems)
                          + '\nFix their spelling in the config (or its --cfg-options).')
