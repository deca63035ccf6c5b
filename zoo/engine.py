"""mmengine glue shared by classification and detection training.

Two fixes live here, so users need no environment variables:
* mmengine 0.10.7 loads checkpoints with ``torch.load``'s default, which is ``weights_only=True``
  from torch 2.6 and refuses mmengine's own checkpoints (they pickle message hubs and numpy
  scalars): resuming fails. The local-file scheme is re-registered with ``weights_only=False``;
  these are checkpoints this project wrote or the user chose.
* ``--launcher pytorch`` on a CPU-only machine: mmengine's ``init_dist`` calls
  ``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids``. Without CUDA the process
  group is started with gloo here first, and the model is wrapped without device ids.
"""
import logging
import os
import os.path as osp
import time

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import HOOKS, OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.runner import Runner as _Runner
from mmengine.runner.checkpoint import CheckpointLoader


def _load_local_checkpoint(filename, map_location):
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint {filename} does not exist')
    return torch.load(filename, map_location=map_location, weights_only=False)


CheckpointLoader.register_scheme(prefixes='', loader=_load_local_checkpoint, force=True)


def init_cpu_distributed(launcher: str) -> None:
    """Start a gloo process group for torchrun on a machine without CUDA (mmengine cannot)."""
    if launcher == 'pytorch' and not torch.cuda.is_available() and not dist.is_initialized():
        dist.init_process_group('gloo', rank=int(os.environ['RANK']),
                                world_size=int(os.environ['WORLD_SIZE']))


class Runner(_Runner):
    """mmengine's Runner, able to run distributed on CPU."""

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available() and not is_model_wrapper(model):
            return MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                             find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        return super().wrap_model(model_wrapper_cfg, model)

    @classmethod
    def from_cfg(cls, cfg):
        init_cpu_distributed(cfg.get('launcher', 'none'))
        return super().from_cfg(cfg)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class QuietOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor (paramwise_cfg, lr_mult, ...) without its log line for every
    parameter and setting, which buries the training log under thousands of lines."""

    def __call__(self, model):
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            return super().__call__(model)
        finally:
            logger.setLevel(level)


@HOOKS.register_module()
class TimeBudgetHook(Hook):
    """Ends training with the last epoch expected to finish within ``minutes`` of wall time since
    training started in this process (evaluations included, at the average epoch's cost). That
    epoch becomes the final one: it is evaluated and checkpointed as the last. ``--time-budget``."""
    priority = 'HIGH'  # before the checkpoint hook, which then sees the final epoch

    def __init__(self, minutes: float):
        self.seconds = minutes * 60

    def before_train(self, runner):
        self.start, self.first_epoch = time.perf_counter(), runner.epoch

    def after_train_epoch(self, runner):
        elapsed = time.perf_counter() - self.start
        per_epoch = elapsed / (runner.epoch + 1 - self.first_epoch)
        loop = runner.train_loop
        if elapsed + per_epoch > self.seconds and runner.epoch + 1 < loop.max_epochs:
            # mmengine's loop has no public setter: the epoch now ending becomes the last one,
            # so the loop evaluates it and stops.
            loop._max_epochs = runner.epoch + 1
            runner.logger.info(f'time budget: {elapsed / 60:.1f} of {self.seconds / 60:.1f} min used, another '
                               f'epoch takes about {per_epoch / 60:.1f}; epoch {runner.epoch + 1} is the last')


def load_config(path: str, cfg_options: dict | None = None, launcher: str = 'none',
                work_dir: str | None = None) -> Config:
    """A config file with command-line overrides, the launcher, and the work dir
    (default ``work_dirs/<config name>``), as train.py and test.py both need it."""
    if not osp.isfile(path):
        raise SystemExit(f'config {path} not found; the configs live in configs/')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg
