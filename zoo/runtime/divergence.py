"""A diverged run stops, or skips its broken steps, and never saves broken weights.

mmengine lets non-finite numbers through silently in two places the models' own checks (a NaN
loss, NaN outputs) do not see:

* A step whose gradients are NaN or inf while its loss is finite (too high a learning rate):
  the optimiser applies them and every weight becomes NaN. The optimiser wrapper checks the
  gradient norm before each step (:class:`NonFiniteGradientGuard`, installed on every wrapper
  the Runner builds, ``optim_wrapper.nonfinite`` in the config):
  ``'stop'`` (the default) ends training before the step is applied; ``'skip'`` leaves the
  weights as they are and logs a warning that counts the skipped steps. mmengine's
  ``AmpOptimWrapper`` is left alone: its float16 loss scaler already skips such steps, and
  lowers the scale, by design.
* A checkpoint: :class:`FiniteCheckpointHook` refuses to save weights that are not all finite,
  so neither such a file nor a ``last_checkpoint`` pointer to it is written.

When training stops on a non-finite number, :func:`diverged_error` gives the message the name of
the checkpoint to resume from. The metrics refuse NaN predictions themselves (``detection``'s
``CocoMetric``).
"""
import functools
import os

import torch
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, MMLogger
from mmengine.model import is_model_wrapper
from mmengine.optim import AmpOptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS

from .checkpointing import checkpoint_files, read_pointer
from .stop import StopWithMessage

# The advice every divergence message ends with (the models' loss checks use it too).
DIVERGED = ('Training stops here and the last saved checkpoint is kept; resume from it with a '
            'lower learning rate, gradient clipping on (optim_wrapper.clip_grad), or without --amp.')
NONFINITE_MODES = ('stop', 'skip')


def check_finite_losses(losses: dict) -> None:
    """Raise where the summed training loss is NaN or inf, naming each term's value and what to
    do (the classifier's and the detectors' ``loss`` mode call this)."""
    if not torch.isfinite(sum(losses.values())):
        values = {k: round(v.item(), 4) for k, v in losses.items()}
        raise FloatingPointError(f'non-finite training loss {values}. ' + DIVERGED)


class Diverged(StopWithMessage, FloatingPointError):
    """Training or evaluation met non-finite numbers; the message says where and what to do."""


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """The 2-norm of every gradient the optimiser would apply (None without any): NaN or inf
    exactly when some gradient is, or when the gradients are too large for float32."""
    grads = [p.grad for group in optimizer.param_groups for p in group['params'] if p.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


class NonFiniteGradientGuard:
    """Mixin for an mmengine ``OptimWrapper``: ``step`` checks the gradient norm first and, where
    it is not finite, stops training (``nonfinite='stop'``) or skips the step (``'skip'``). The
    zeroing of gradients after a step is mmengine's and happens either way."""
    nonfinite = 'stop'
    skipped_steps = 0

    def step(self, **kwargs) -> None:
        norm = gradient_norm(self.optimizer)
        if norm is not None and not torch.isfinite(norm):
            self._refuse_step(float(norm))
            return
        super().step(**kwargs)

    def _refuse_step(self, norm: float) -> None:
        iteration = MessageHub.get_current_instance().get_info('iter', 0) + 1
        what = f'non-finite gradient (norm {norm}) at iteration {iteration}'
        if self.nonfinite == 'stop':
            raise Diverged(f'{what}; the step is not applied. {DIVERGED} '
                           "Or set optim_wrapper.nonfinite='skip' to skip such steps and go on.")
        self.skipped_steps += 1
        if self.clip_grad_kwargs:  # where mmengine logs the norm, log this one, not the last applied one
            self.message_hub.update_scalar(f'train/{self.grad_name}', norm)
        MMLogger.get_current_instance().warning(
            f"{what}: optimizer step skipped ({self.skipped_steps} skipped so far; optim_wrapper.nonfinite='skip')")


@functools.cache
def _guarded_class(cls: type) -> type:
    return type(f'Guarded{cls.__name__}', (NonFiniteGradientGuard, cls),
                {'__doc__': f'{cls.__name__} whose steps check their gradients first (NonFiniteGradientGuard).'})


def pop_nonfinite_mode(optim_wrapper_cfg):
    """(mode, the config without it): ``optim_wrapper.nonfinite`` ('stop' when absent) is this
    project's key, which mmengine's wrappers do not take. A built wrapper passes as it is."""
    if not isinstance(optim_wrapper_cfg, dict) or 'nonfinite' not in optim_wrapper_cfg:
        return 'stop', optim_wrapper_cfg
    cfg = optim_wrapper_cfg.copy()
    mode = cfg.pop('nonfinite')
    if mode not in NONFINITE_MODES:
        raise ValueError(f"optim_wrapper.nonfinite must be 'stop' or 'skip', got {mode!r}")
    return mode, cfg


def guard_optim_wrapper(wrapper, mode: str = 'stop'):
    """``wrapper`` (or each of an ``OptimWrapperDict``) with :class:`NonFiniteGradientGuard` in
    ``mode``; ``AmpOptimWrapper``, whose loss scaler skips non-finite steps, stays as it is."""
    for one in (wrapper.values() if isinstance(wrapper, OptimWrapperDict) else [wrapper]):
        if isinstance(one, AmpOptimWrapper):
            continue
        if not isinstance(one, NonFiniteGradientGuard):
            one.__class__ = _guarded_class(type(one))
        one.nonfinite = mode
    return wrapper


@HOOKS.register_module()
class FiniteCheckpointHook(Hook):
    """Refuses to save a checkpoint whose weights are not all finite: it would be resumed from,
    evaluated and shipped as if it were a model. The Runner registers it; it runs last before
    a save, on the checkpoint as it would be written (EMA weights swapped in, if any).

    It also notes whether an evaluation is running, for :func:`diverged_error`: a checkpoint
    saved just before it holds the weights that evaluation found broken."""
    priority = 'LOWEST'
    validating = False

    def before_val_epoch(self, runner) -> None:
        self.validating = True

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.validating = False

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        names = {name for name, _ in model.named_parameters()}
        bad = [k for k, v in checkpoint.get('state_dict', {}).items()
               if k in names and v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            epoch = checkpoint.get('meta', {}).get('epoch')
            raise Diverged(f'refusing to save the checkpoint of epoch {epoch}: {len(bad)} weight tensors hold '
                           f'non-finite values (NaN or inf), e.g. {", ".join(bad[:3])}. {DIVERGED}')


def diverged_error(error: FloatingPointError, work_dir: str, validating: bool = False) -> Diverged:
    """``error`` (a non-finite loss, output, gradient or checkpoint that ended training) as a
    :class:`Diverged` whose message ends with the checkpoint to resume from: the one the work
    dir's ``last_checkpoint`` names, which :class:`FiniteCheckpointHook` kept finite. During an
    evaluation (``validating``) that checkpoint holds the weights evaluated, so the newest one
    before it is named."""
    last = read_pointer(work_dir)
    if not last:
        where = f'No checkpoint was saved in {work_dir} before this point.'
    elif validating:
        earlier = [path for path in checkpoint_files(os.path.dirname(last))
                   if os.path.abspath(path) != os.path.abspath(last)]
        where = (f'The last checkpoint, {last}, was saved just before this evaluation and holds these weights; '
                 + (f'the last good checkpoint is {earlier[0]}.' if earlier else
                    'no earlier checkpoint is kept, so train again from the start.'))
    else:
        where = f'The last good checkpoint is {last}.'
    return Diverged(f'{error} {where}')


class DivergenceRunnerMixin:
    """What mmengine's Runner needs for the above (``zoo.runtime.engine.Runner`` mixes it in): every
    optimiser wrapper it builds is guarded (``optim_wrapper.nonfinite``), no checkpoint with
    non-finite weights is saved (:class:`FiniteCheckpointHook`), and a run that stops on a
    non-finite number names the checkpoint to resume from (:func:`diverged_error`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_hook(FiniteCheckpointHook(), priority='LOWEST')

    def build_optim_wrapper(self, optim_wrapper):
        mode, optim_wrapper = pop_nonfinite_mode(optim_wrapper)
        return guard_optim_wrapper(super().build_optim_wrapper(optim_wrapper), mode)

    def train(self):
        try:
            return super().train()
        except FloatingPointError as error:
            hook = next((h for h in self.hooks if isinstance(h, FiniteCheckpointHook)), None)
            raise diverged_error(error, self.work_dir, validating=bool(hook and hook.validating)) from error
