"""mmengine glue shared by classification and detection training.

Two fixes live here, so users need no environment variables:
* mmengine 0.10.7 loads checkpoints with ``torch.load``'s default, which is ``weights_only=True``
  from torch 2.6 and refuses mmengine's own checkpoints (they pickle message hubs and numpy
  scalars): resuming fails. The local-file scheme is re-registered with ``weights_only=False``;
  these are checkpoints this project wrote or the user chose.
* ``--launcher pytorch`` (or ``slurm``) on a CPU-only machine: mmengine's ``init_dist`` calls
  ``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids``. Without CUDA the process
  group is started with gloo here first, and the model is wrapped without device ids.

And mixed precision that also works on a CPU (``--amp`` of train.py and test.py): mmengine's
``AmpOptimWrapper`` refuses to start without CUDA/NPU/MLU/MUSA (its loss scaler is
``torch.cuda.amp.GradScaler``). ``AutocastOptimWrapper`` runs the training forward and loss under
``torch.autocast`` on the model's device, without loss scaling (bfloat16 has float32's exponent
range, so gradients do not underflow); ``AutocastValLoop`` / ``AutocastTestLoop`` evaluate under
autocast. On a CPU autocast means bfloat16.
"""
import contextlib
import logging
import os
import os.path as osp
import subprocess
import time
import warnings

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper, OptimWrapperDict
from mmengine.registry import HOOKS, LOOPS, OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from mmengine.runner import Runner as _Runner
from mmengine.runner import TestLoop, ValLoop
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.checkpoint import CheckpointLoader

from .allocator import reuse_freed_memory
from .checkpointing import CrashSafeRunnerMixin, read_checkpoint, resolve_checkpoint
from .cli import config_not_found, resolve_config
from .config_check import check_model_arguments, merge_options
from .console import quiet_console
from .divergence import DivergenceRunnerMixin
from ..pretrained import trained_classifier, wrong_checkpoint
from ..registry import MODELS as MODEL_REGISTRY
from ..registry import get_model_info


def load_from_local(filename, map_location):
    """A local checkpoint with ``weights_only=False``; a missing or unreadable file raises an
    error that names it and says why (``zoo.runtime.checkpointing.read_checkpoint``)."""
    return read_checkpoint(filename, map_location)


CheckpointLoader.register_scheme(prefixes='', loader=load_from_local, force=True)


def init_cpu_distributed(launcher: str) -> None:
    """Start a gloo process group for torchrun (``pytorch``) or ``srun`` (``slurm``) on a machine
    without CUDA (mmengine cannot: it calls ``torch.cuda.set_device``). With CUDA, mmengine's own
    ``init_dist`` starts the group as the Runner is set up."""
    if launcher not in ('pytorch', 'slurm') or torch.cuda.is_available() or dist.is_initialized():
        return
    if launcher == 'slurm':
        slurm_environment()
    dist.init_process_group('gloo', rank=int(os.environ['RANK']), world_size=int(os.environ['WORLD_SIZE']))


def slurm_environment() -> None:
    """The variables torch.distributed reads (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
    from those of an ``srun`` task, as mmengine's slurm launcher sets them: the first node of the
    job's node list is the master (unless MASTER_ADDR is set), port 29500 unless MASTER_PORT is set."""
    env = os.environ
    env['RANK'], env['WORLD_SIZE'] = env['SLURM_PROCID'], env['SLURM_NTASKS']
    env['LOCAL_RANK'] = env.get('SLURM_LOCALID', '0')
    env.setdefault('MASTER_PORT', '29500')
    if 'MASTER_ADDR' not in env:
        try:
            hosts = subprocess.run(['scontrol', 'show', 'hostnames', env['SLURM_NODELIST']], capture_output=True,
                                   text=True).stdout.split()
        except OSError:  # no scontrol: a single node
            hosts = []
        env['MASTER_ADDR'] = hosts[0] if hosts else '127.0.0.1'


def close_distributed() -> None:
    """Wait for every process, then end the process group (a no-op without one).

    A gloo process that leaves the interpreter with its group still open can abort in the C++
    teardown ("terminate called without an active exception", SIGABRT) while a peer is still
    talking to it: torchrun then reports a failed run whose work was done. The tools call this
    last."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def lr_scale_ratio(auto_scale_lr: dict | None, batch_size: int, world_size: int, accumulation: int = 1) -> float:
    """The factor the configured lr is multiplied by: total batch (``world_size`` processes x
    ``batch_size`` each x ``accumulation`` iterations per optimiser step, ``--accum``) /
    ``auto_scale_lr['base_batch_size']``, the linear rule DeiT applies as ``lr * total_batch /
    512``; 1 where ``auto_scale_lr`` is None or has ``enable=False``.

    Unlike mmengine, a ``base_batch_size`` without ``enable`` scales: mmengine's default
    (``enable=False``) silently trains a run with another batch size or process count at the
    rate written for the base batch."""
    if auto_scale_lr is None or not auto_scale_lr.get('enable', True):
        return 1.0
    base = auto_scale_lr.get('base_batch_size')
    if not isinstance(base, int) or base <= 0:
        raise ValueError(f'auto_scale_lr.base_batch_size must be a positive int (the total batch '
                         f'the configured lr is written for), got {base!r}; or set '
                         f'auto_scale_lr.enable=False to train at the configured lr')
    return world_size * batch_size * accumulation / base


class Runner(DivergenceRunnerMixin, CrashSafeRunnerMixin, _Runner):
    """mmengine's Runner, able to run distributed on CPU, that scales the lr with the total batch
    (:func:`lr_scale_ratio`) and logs the lr it trains at, with a terminal log a user reads
    (``zoo.runtime.console``; ``cfg.verbose_console = True`` or ``--verbose`` prints everything), and whose
    checkpoints survive kills and full disks and resume exactly (``zoo.runtime.checkpointing``). A run
    that diverges stops or skips the broken steps and saves no broken weights (``zoo.runtime.divergence``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logger.info(f'full log (environment, config, every loss term): {self.logger.log_file}; '
                         f'scalars: {osp.join(self.log_dir, "vis_data", "scalars.json")}')

    def build_logger(self, log_level='INFO', log_file=None, **kwargs):
        logger = super().build_logger(log_level=log_level, log_file=log_file, **kwargs)
        if not self.cfg.get('verbose_console', False):
            quiet_console(logger)
        return logger

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available() and not is_model_wrapper(model):
            return MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                             find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        return super().wrap_model(model_wrapper_cfg, model)

    def load_checkpoint(self, filename, map_location='cpu', strict=False, revise_keys=[(r'^module.', '')]):
        """mmengine's; with ``cfg.strict_load`` (tools/test.py) the weights must fit the model
        exactly, or the run stops with the error tools/infer.py and export.py give
        (:func:`zoo.pretrained.wrong_checkpoint`), where mmengine would warn and evaluate a
        half-random model. An unreadable file is named by the loader (``zoo.runtime.checkpointing``)."""
        if not self.cfg.get('strict_load', False):
            return super().load_checkpoint(filename, map_location, strict, revise_keys)
        try:
            return super().load_checkpoint(filename, map_location, True, revise_keys)
        except RuntimeError as e:
            if type(e) is not RuntimeError:  # not mmengine's strict-loading error: already says what
                raise
            raise wrong_checkpoint(filename, self.model.module if is_model_wrapper(self.model) else self.model,
                                   e) from e

    def load_or_resume(self) -> None:
        """``load_from`` / ``--resume PATH`` may name a work dir (its last checkpoint:
        :func:`zoo.runtime.checkpointing.resolve_checkpoint`). In training, a model with
        ``load_for_finetuning`` (a ``Detector``) loads ``load_from`` through it: any detector
        checkpoint, class heads re-initialised for another class count, anything else that does
        not fit refused (``detection.finetune``). mmengine's own load would take what fits,
        print "size mismatch" lines and leave the rest at random."""
        if self._load_from is not None and not self._has_loaded and '://' not in str(self._load_from):
            self._load_from = resolve_checkpoint(self._load_from, '--resume' if self._resume else 'load_from')
        model = self.model.module if is_model_wrapper(self.model) else self.model
        fine_tune = getattr(model, 'load_for_finetuning', None)
        if (self._has_loaded or self._resume or self._load_from is None or fine_tune is None
                or self.cfg.get('strict_load', False) or not isinstance(self._train_loop, BaseLoop)):
            return super().load_or_resume()
        checkpoint = fine_tune(self._load_from, self)
        self._loaded_meta = checkpoint.get('meta') or {}
        self._has_loaded = True

    def scale_lr(self, optim_wrapper, auto_scale_lr=None) -> None:
        """Every parameter group's lr times :func:`lr_scale_ratio`, before the schedulers read
        them; the effective rates go to the log."""
        loader = self._train_dataloader
        batch = loader.batch_size if hasattr(loader, 'batch_size') else loader['batch_size']
        wrappers = (list(optim_wrapper.values()) if isinstance(optim_wrapper, OptimWrapperDict)
                    else [optim_wrapper])
        # gradient accumulation (--accum, optim_wrapper.accumulative_counts): mmengine 0.10 keeps it here
        accum = max(getattr(w, '_accumulative_counts', 1) for w in wrappers)
        ratio = lr_scale_ratio(auto_scale_lr, batch, self.world_size, accum)
        for wrapper in wrappers:
            for group in wrapper.optimizer.param_groups:
                group['lr'] = group['lr'] * ratio
        lrs = sorted({g['lr'] for w in wrappers for g in w.optimizer.param_groups}, reverse=True)
        on = auto_scale_lr is not None and auto_scale_lr.get('enable', True)
        accumulated = f' x {accum} accumulated iterations' if accum > 1 else ''
        how = (f'configured lr x {ratio:g} = {self.world_size} process(es) x batch {batch}{accumulated} / '
               f'base_batch_size {auto_scale_lr["base_batch_size"]}' if on
               else 'configured lr, not scaled: auto_scale_lr is off')
        self.logger.info(f'effective lr {lrs[0]:.4g} ({how}); parameter groups at '
                         f'{", ".join(f"{lr:.4g}" for lr in lrs)} before warm-up and decay')

    @classmethod
    def from_cfg(cls, cfg):
        init_cpu_distributed(cfg.get('launcher', 'none'))
        return super().from_cfg(cfg)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class QuietOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """mmengine's default constructor (paramwise_cfg, lr_mult, ...) without its log line for every
    parameter and setting, which buries the training log under thousands of lines, and with one
    line for the frozen parameters where mmengine warns once per tensor."""

    def __call__(self, model):
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            wrapper = super().__call__(model)
        finally:
            logger.setLevel(level)
        frozen = [p for p in model.parameters() if not p.requires_grad]
        if frozen:
            logger.info(f'{len(frozen)} frozen tensors ({sum(p.numel() for p in frozen):,} parameters, '
                        'requires_grad=False) are not optimised')
        return wrapper


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


def busy_cores(samples: int = 5, interval: float = 0.05) -> int:
    """How many other threads are running on the CPU right now (Linux: the running count of
    ``/proc/loadavg``, less this process, median of a few samples; 0 where it cannot be read).
    The load averages would also count a job that ended a minute ago, such as the training run
    that ``make demo`` evaluates next."""
    counts = []
    for _ in range(samples):
        try:
            with open('/proc/loadavg') as f:
                counts.append(int(f.read().split()[3].split('/')[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
        time.sleep(interval)
    return max(sorted(counts)[len(counts) // 2], 0)


def set_threads(requested: int | None = None) -> int:
    """PyTorch's CPU thread count for this run, with a line saying why. ``requested`` (``--threads``)
    wins; otherwise PyTorch's default (one per core), lowered to the cores that other running jobs
    leave free: two jobs that each use every core slow each other down far more than their share
    (oversubscribed threads wait on each other; docs/reliability.md)."""
    logger = MMLogger.get_current_instance()
    cores = os.cpu_count() or 1
    if requested:
        torch.set_num_threads(requested)
        return requested
    busy = busy_cores() if torch.get_num_threads() > 1 else 0
    if busy:
        threads = max(1, min(torch.get_num_threads(), cores - busy))
        torch.set_num_threads(threads)
        logger.warning(f'{busy} other thread(s) are running on this machine\'s {cores} cores: this run uses '
                       f'{threads} thread(s), and its steps will be slower than on an idle machine '
                       '(--threads N sets the count).')
    return torch.get_num_threads()


def add_runtime_arguments(parser) -> None:
    """``--threads`` and ``--verbose``, the same on train.py and test.py."""
    parser.add_argument('--threads', type=int, metavar='N',
                        help='CPU threads for PyTorch (default: one per core, fewer when other jobs are running)')
    parser.add_argument('--verbose', action='store_true',
                        help='print the environment, config, hooks and every loss term on the terminal too '
                             '(they always go to the log file in the work dir)')


def apply_runtime_arguments(cfg: Config, args) -> Config:
    """Threads, the allocator (freed memory kept for reuse: :mod:`zoo.runtime.allocator`) and the
    console's verbosity for this run."""
    reuse_freed_memory()
    set_threads(args.threads)
    if args.verbose:
        cfg.verbose_console = True
    return cfg


def without_pretrained(model_cfg):
    """``model_cfg`` with every ``pretrained`` (backbone) switched off, for a model whose weights a
    checkpoint is about to replace: the ImageNet weights would be fetched (or, offline, refused)
    only to be overwritten. The model is still built as it is with weights: the variant's
    ``weights_arch`` (T2T-ViT's attention scale) goes into the same dict, as ``create_model``
    would have added it; except for a classifier checkpoint trained here, which ``create_model``
    builds with the config's own settings (``zoo.pretrained.trained_classifier``)."""
    if isinstance(model_cfg, dict):
        out = type(model_cfg)({k: without_pretrained(v) for k, v in model_cfg.items()})
        if out.get('pretrained') and isinstance(out.get('name'), str):
            pretrained, out['pretrained'] = out['pretrained'], False
            if out['name'] in MODEL_REGISTRY and not _own_classifier(pretrained, out['name']):
                for key, value in get_model_info(out['name']).weights_arch.items():
                    out.setdefault(key, value)
        return out
    if isinstance(model_cfg, (list, tuple)):
        return type(model_cfg)(without_pretrained(v) for v in model_cfg)
    return model_cfg


def _own_classifier(pretrained, name: str) -> bool:
    """Whether the ``pretrained`` path is a classifier checkpoint this project wrote (its network
    built without ``weights_arch``). A path no longer there is taken for released weights, with a
    warning where that decides a setting."""
    if pretrained is True or not isinstance(pretrained, (str, os.PathLike)):
        return False
    if osp.isdir(pretrained):  # a work dir: its last checkpoint
        try:
            pretrained = resolve_checkpoint(pretrained, 'pretrained')
        except (OSError, RuntimeError):
            return False
    if not osp.isfile(pretrained):
        arch = get_model_info(name).weights_arch
        if arch:
            warnings.warn(f'backbone pretrained={pretrained} is not there to read: {name} is built with the released '
                          f'weights\' settings {arch}. If it was a classifier trained here without them, set them as '
                          'its config had them (e.g. qk_scale=None)', stacklevel=3)
        return False
    try:
        checkpoint = torch.load(pretrained, map_location='cpu', weights_only=False, mmap=True)
    except Exception:
        return False
    return trained_classifier(checkpoint) is not None


def load_config(path: str, cfg_options: dict | None = None, launcher: str = 'none',
                work_dir: str | None = None) -> Config:
    """A config file with command-line overrides, the launcher, and the work dir
    (default ``work_dirs/<config name>``), as train.py and test.py both need it. Misspelt
    override keys and model arguments stop here, before anything is built (``zoo.runtime.config_check``)."""
    path = resolve_config(path)  # a file, or the name of a config shipped with vitzoo (zoo.runtime.cli)
    if not osp.isfile(path):
        raise SystemExit(config_not_found(path))
    cfg = Config.fromfile(path)
    merge_options(cfg, cfg_options)  # a key that names nothing is an error with the nearest names
    check_model_arguments(cfg)
    cfg.launcher = launcher
    if not torch.cuda.is_available() and cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend') == 'nccl':
        cfg.env_cfg.dist_cfg.backend = 'gloo'  # nccl needs CUDA; torchrun on a CPU runs gloo
    cfg.work_dir = work_dir or cfg.get('work_dir') or osp.join(
        'work_dirs', osp.splitext(osp.basename(path))[0])
    return cfg


# --- mixed precision -----------------------------------------------------------------------------

def model_device_type(model: torch.nn.Module) -> str:
    """'cpu', 'cuda', ... where the model's first parameter lives (cpu for a model without any)."""
    param = next(model.parameters(), None)
    return param.device.type if param is not None else 'cpu'


def resolve_amp_dtype(dtype: str | torch.dtype | None, device_type: str) -> torch.dtype:
    """The autocast dtype: as given, or the device's usual one (CPU: bfloat16, the only one CPU
    autocast speeds up; CUDA: float16). A string names a torch dtype ('bfloat16', 'float16')."""
    if dtype is None or dtype == 'auto':
        return torch.bfloat16 if device_type == 'cpu' else torch.float16
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f'autocast dtype must be bfloat16 or float16, got {dtype}')
    return dtype


def autocast_for(model: torch.nn.Module, dtype: str | torch.dtype | None = None, enabled: bool = True):
    """``torch.autocast`` on the model's device with :func:`resolve_amp_dtype`'s dtype."""
    device_type = model_device_type(model)
    return torch.autocast(device_type=device_type, dtype=resolve_amp_dtype(dtype, device_type),
                          enabled=enabled)


@OPTIM_WRAPPERS.register_module()
class AutocastOptimWrapper(OptimWrapper):
    """Mixed-precision training on any device torch can autocast on, the CPU included
    (``train.py --amp`` without CUDA): the forward and the loss run under ``torch.autocast`` on
    the model's device (``dtype``: 'bfloat16' | 'float16' | None = the device's usual, bfloat16
    on a CPU). No loss scaling: meant for bfloat16, whose exponent range is float32's. With
    float16 (gradients may underflow) use mmengine's ``AmpOptimWrapper`` on a GPU instead.

    Weights, gradients and optimiser state stay float32; autocast casts weights to bfloat16 for
    each matmul / convolution, and ops that autocast keeps in float32 (losses such as
    cross-entropy, L1, GIoU parts built of float32 ops) see float32 inputs."""

    def __init__(self, dtype: str | torch.dtype | None = None, **kwargs):
        super().__init__(**kwargs)
        self.cast_dtype = dtype

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast_for(model, self.cast_dtype):
            yield


class _AutocastLoopMixin:
    """Runs each evaluation iteration under autocast on the model's device."""

    def __init__(self, runner, dataloader, evaluator, dtype: str | None = None, **kwargs):
        super().__init__(runner, dataloader, evaluator, **kwargs)
        self.amp_dtype = dtype

    def run_iter(self, idx, data_batch):
        with autocast_for(self.runner.model, self.amp_dtype):
            super().run_iter(idx, data_batch)


@LOOPS.register_module()
class AutocastValLoop(_AutocastLoopMixin, ValLoop):
    """mmengine's ValLoop under autocast (``dtype`` as :class:`AutocastOptimWrapper`: None is
    bfloat16 on a CPU, float16 on a GPU). mmengine's own ``fp16=True`` uses float16 on CUDA and
    cannot choose bfloat16 there."""


@LOOPS.register_module()
class AutocastTestLoop(_AutocastLoopMixin, TestLoop):
    """mmengine's TestLoop under autocast (``test.py --amp``); ``dtype`` as AutocastValLoop."""


def use_amp(cfg: Config, dtype: str | None = None, device_type: str | None = None) -> Config:
    """Turn on mixed-precision training in ``cfg`` (``train.py --amp``): on CUDA (and no dtype
    or float16) mmengine's ``AmpOptimWrapper`` with dynamic loss scaling as before; anywhere
    else (CPU) or with bfloat16, :class:`AutocastOptimWrapper` (no loss scaling needed)."""
    device_type = device_type or ('cuda' if torch.cuda.is_available() else 'cpu')
    resolved = resolve_amp_dtype(dtype, device_type)
    wrapper = cfg.optim_wrapper
    if device_type == 'cuda' and resolved == torch.float16:
        wrapper.type = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')
    else:
        wrapper.type = 'AutocastOptimWrapper'
        wrapper.pop('loss_scale', None)
    wrapper.dtype = str(resolved).replace('torch.', '')
    return cfg


def use_amp_evaluation(cfg: Config, dtype: str | None = None, which: str = 'test_cfg') -> Config:
    """Evaluate under autocast (``test.py --amp``): ``cfg.<which>`` becomes the autocast loop."""
    loop = dict(cfg.get(which) or {})
    loop_type = loop.get('type', 'TestLoop' if which == 'test_cfg' else 'ValLoop')
    if loop_type not in ('TestLoop', 'ValLoop', 'AutocastTestLoop', 'AutocastValLoop'):
        raise SystemExit(f'--amp: {which} uses the loop {loop_type}, which has no autocast variant')
    loop.pop('fp16', None)
    loop.update(type='AutocastTestLoop' if which == 'test_cfg' else 'AutocastValLoop', dtype=dtype)
    cfg[which] = loop
    return cfg
