"""Hook arguments checked when the config is loaded, not after the first epoch.

mmengine builds hooks from their config dicts when training starts, and ``CheckpointHook`` takes
``**kwargs``, which it hands to ``Runner.save_checkpoint`` at the first save: a typo such as
``default_hooks.checkpoint.intervel=1`` trains a whole epoch, then fails with "save_checkpoint()
got an unexpected keyword argument 'intervel'" (and a typo in another hook fails later, in the
middle of building the Runner). :func:`check_hook_arguments` compares every hook config's keys
with what the hook's ``__init__`` accepts and refuses the config at once, listing the names
the hook takes.
"""
import difflib
import inspect

from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from .stop import StopWithMessage

# Keys the Runner itself reads from a hook config, besides the hook's own arguments.
RUNNER_KEYS = ('type', 'priority')


class HookArgumentError(StopWithMessage, ValueError):
    """A hook config with keys its hook does not take."""


def _hook_class(hook_type):
    if isinstance(hook_type, type):
        return hook_type
    if isinstance(hook_type, str):
        return HOOKS.get(hook_type)
    return None


def hook_argument_names(cls) -> set[str] | None:
    """The keyword arguments hook class ``cls`` accepts; None where it takes any (``**kwargs``
    passed on somewhere this cannot see, as ``EMAHook`` to its averaged model).

    ``CheckpointHook`` and its subclasses pass their ``**kwargs`` to ``Runner.save_checkpoint``,
    whose every argument the hook already sets: no other name is valid."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if any(p.kind == p.VAR_KEYWORD for p in parameters) and not issubclass(cls, CheckpointHook):
        return None
    return names


def _hook_configs(cfg):
    """(where, config dict) for every hook config of ``cfg``: ``default_hooks.<name>`` and
    ``custom_hooks[i]``. Disabled entries (None) and built hook objects are skipped."""
    for name, hook in (cfg.get('default_hooks') or {}).items():
        if isinstance(hook, dict):
            yield f'default_hooks.{name}', hook
    for index, hook in enumerate(cfg.get('custom_hooks') or []):
        if isinstance(hook, dict):
            yield f'custom_hooks[{index}]', hook


def hook_argument_problems(cfg) -> list[str]:
    """One line per hook config key of ``cfg`` that its hook does not take (empty: all fine).
    Hooks whose type is not registered are left to mmengine, which names them when it builds."""
    problems = []
    for where, hook in _hook_configs(cfg):
        cls = _hook_class(hook.get('type'))
        accepted = hook_argument_names(cls) if cls is not None else None
        if accepted is None:
            continue
        valid = accepted | set(RUNNER_KEYS)
        for key in sorted(set(hook) - valid):
            close = difflib.get_close_matches(key, sorted(valid), n=1)
            hint = f' (did you mean {close[0]!r}?)' if close else ''
            problems.append(f'{where}.{key}: {cls.__name__} has no argument {key!r}{hint}; it takes '
                            f'{", ".join(sorted(accepted))} (and priority)')
    return problems


def check_hook_arguments(cfg) -> None:
    """Raise :class:`HookArgumentError` for hook config keys their hooks do not take
    (:func:`hook_argument_problems`), before anything is built or trained."""
    problems = hook_argument_problems(cfg)
    if problems:
        raise HookArgumentError('the config has hook arguments that do not exist:\n  ' + '\n  '.join(problems))
