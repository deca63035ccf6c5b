"""Training options for tools/train.py's command line, each applied to the config before the
Runner is built (so ``--cfg-options`` and the config file can set the same things):

* ``--accum N``: gradient accumulation, one optimiser step every N iterations (mmengine's
  ``optim_wrapper.accumulative_counts``: each loss is divided by N, and DDP synchronises only on
  the stepping iteration). The learning-rate rule counts it: the effective batch is
  batch x processes x N (``zoo.runtime.engine.lr_scale_ratio``). Schedules (warm-up included) and
  ``train_cfg`` still count iterations and epochs, as mmengine does.
* ``--ema``: an exponential moving average of the weights (mmengine's ``EMAHook`` with
  ``MomentumAnnealingEMA``). After each step ``ema = (1 - m) * ema + m * weights`` with
  ``m = max(momentum, 100 / (100 + step))``: early in training the average follows the recent
  steps (about the last 1%), later it settles at ``momentum`` (``--ema-momentum``, default
  0.0002, mmengine's and mmdetection's: an average over about 1 / 0.0002 = 5000 steps).
  Evaluation during training, the best checkpoint and each checkpoint's ``state_dict`` hold the
  averaged weights (tools/test.py, infer.py and export.py use them as they are); the trained
  weights are kept as ``ema_state_dict`` and ``--resume`` restores both.
* ``--logger tensorboard|wandb|mlflow``: where scalars go besides ``vis_data/scalars.json`` (the
  local copy every run keeps). TensorBoard is the default and a dependency; Weights & Biases and
  MLflow run only where their package is installed, and ask for it otherwise.
* ``--launcher none|pytorch|slurm``: the process launcher (:data:`LAUNCHERS`; tools/test.py takes
  the same choices).
"""
import argparse
import importlib.util
import os
import os.path as osp

from mmengine.config import Config

LAUNCHERS = ('none', 'pytorch', 'slurm')
EMA_MOMENTUM = 0.0002
EMA_GAMMA = 100
# --logger choice: (mmengine vis backend, the package it imports, its pip name)
LOGGERS = {
    'tensorboard': ('TensorboardVisBackend', 'tensorboard', 'tensorboard'),
    'wandb': ('WandbVisBackend', 'wandb', 'wandb'),
    'mlflow': ('MLflowVisBackend', 'mlflow', 'mlflow'),
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a whole number of at least 1, got {text!r}')
    return value


def _momentum(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f'expected a number between 0 and 1 (0.0002: an average over about '
                                         f'5000 steps), got {text!r}')
    return value


def add_training_arguments(parser) -> None:
    """``--accum``, ``--ema``, ``--ema-momentum`` and ``--logger`` (tools/train.py)."""
    parser.add_argument('--accum', type=_positive_int, default=None, metavar='N',
                        help='gradient accumulation: one optimiser step every N iterations, an effective batch of '
                             'batch x processes x N (the learning-rate scaling counts N)')
    parser.add_argument('--ema', action='store_true',
                        help='keep an exponential moving average of the weights (mmengine EMAHook, '
                             'MomentumAnnealingEMA); evaluation and checkpoints use the averaged weights')
    parser.add_argument('--ema-momentum', type=_momentum, default=None, metavar='M',
                        help=f'implies --ema: ema = (1 - m) ema + m weights after each step, m annealed from '
                             f'{EMA_GAMMA} / ({EMA_GAMMA} + step) down to M (default {EMA_MOMENTUM}: about the last '
                             f'{round(1 / EMA_MOMENTUM)} steps)')
    parser.add_argument('--logger', choices=list(LOGGERS), default=None,
                        help='where scalars go besides vis_data/scalars.json: tensorboard (default), wandb or '
                             'mlflow (each only where its package is installed)')


def use_accumulation(cfg: Config, counts: int) -> Config:
    """One optimiser step every ``counts`` iterations (``optim_wrapper.accumulative_counts``)."""
    wrapper = cfg.get('optim_wrapper')
    if not isinstance(wrapper, dict) or 'optimizer' not in wrapper:
        raise SystemExit('--accum: this config\'s optim_wrapper is not one optimizer wrapper; set '
                         'accumulative_counts on each of its wrappers with --cfg-options instead')
    wrapper['accumulative_counts'] = counts
    return cfg


def use_ema(cfg: Config, momentum: float = EMA_MOMENTUM) -> Config:
    """An ``EMAHook`` (``MomentumAnnealingEMA``) in ``custom_hooks``, replacing one already there."""
    hooks = [h for h in cfg.get('custom_hooks', []) if not (isinstance(h, dict) and h.get('type') == 'EMAHook')]
    cfg.custom_hooks = hooks + [dict(type='EMAHook', ema_type='MomentumAnnealingEMA', momentum=momentum,
                                     gamma=EMA_GAMMA)]
    return cfg


def logger_backend(name: str, run_name: str) -> dict:
    """The vis backend config of ``--logger name``; SystemExit naming the package to install
    where it is missing."""
    backend, module, package = LOGGERS[name]
    if importlib.util.find_spec(module) is None:
        raise SystemExit(f'--logger {name}: the {package} package is not installed in this Python; '
                         f'pip install {package}' + (' (then wandb login, or WANDB_MODE=offline)' if name == 'wandb'
                                                     else '') + ', or use --logger tensorboard')
    if name == 'wandb':
        return dict(type=backend, init_kwargs=dict(project=os.environ.get('WANDB_PROJECT', 'vitzoo'), name=run_name))
    if name == 'mlflow':  # its runs go under the work dir's vis_data unless MLFLOW_TRACKING_URI says otherwise
        return dict(type=backend, exp_name='vitzoo', run_name=run_name,
                    tracking_uri=os.environ.get('MLFLOW_TRACKING_URI'))
    return dict(type=backend)


def use_logger(cfg: Config, name: str) -> Config:
    """The visualizer's backends: the local one (scalars.json) and ``name``'s, in place of the
    config's TensorBoard / W&B / MLflow ones."""
    run_name = osp.basename(osp.normpath(cfg.get('work_dir') or 'vitzoo'))
    visualizer = cfg.get('visualizer') or dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')])
    remote = {backend for backend, _, _ in LOGGERS.values()}
    backends = [b for b in visualizer.get('vis_backends') or [] if b.get('type') not in remote]
    if not any(b.get('type') == 'LocalVisBackend' for b in backends):
        backends.insert(0, dict(type='LocalVisBackend'))
    visualizer['vis_backends'] = backends + [logger_backend(name, run_name)]
    cfg.visualizer = visualizer
    return cfg


def apply_training_arguments(cfg: Config, args) -> Config:
    """The options of :func:`add_training_arguments` in ``cfg``."""
    if args.accum is not None:
        use_accumulation(cfg, args.accum)
    if args.ema or args.ema_momentum is not None:
        use_ema(cfg, args.ema_momentum or EMA_MOMENTUM)
    if args.logger is not None:
        use_logger(cfg, args.logger)
    return cfg
