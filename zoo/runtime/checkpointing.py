"""Checkpoints that survive a kill or a full disk, and a ``--resume`` that continues exactly.

mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(...)`` (``LocalBackend.put``)
and the ``last_checkpoint`` pointer with ``open(path, 'w').write(...)``. A run killed while
writing leaves a truncated ``epoch_N.pth`` under a checkpoint's name, or an empty pointer, and
``--resume`` then fails ("checkpoint  does not exist") or reads a broken file; a full disk raises a
bare ``OSError`` out of the training loop. And a resumed run re-seeds the random generators from
the config's seed, so its first epoch draws the random numbers of epoch 1 again (augmentation,
query noise, dropout) and trains differently from a run that was never stopped.

Here:

* :func:`atomic_write` writes every checkpoint and the pointer to a temporary file in the same
  directory (``.<name>.partial-<pid>``), flushes and fsyncs it, and renames it over the target with
  ``os.replace`` (atomic on POSIX), then fsyncs the directory: a file named ``epoch_N.pth`` or
  ``last_checkpoint`` is always complete, the old one or the new one. On a full disk the partial
  file is removed and :class:`DiskFullError` says how much was needed and how much is free.
* :class:`SafeCheckpointHook` (the configs' checkpoint hook; the Runner upgrades a plain
  ``CheckpointHook``) saves through :class:`AtomicLocalBackend`, writes the pointer atomically
  after the checkpoint it names is complete, deletes a checkpoint beyond ``max_keep_ckpts`` that
  is the current resume point only after the new one is in place, stops a full disk with a message
  naming the checkpoint that stays the one resumed, removes the partial files a killed run left,
  and keeps the random state in the checkpoint (:func:`capture_random_state`).
* :func:`find_resume_checkpoint` is what ``--resume`` continues from: the checkpoint the pointer
  names if it can be read, else the newest ``epoch_*.pth`` / ``iter_*.pth`` of the work dir that
  can, with a log line saying why.
* :class:`CrashSafeRunnerMixin` (part of ``zoo.runtime.engine.Runner``) resumes that way and restores
  the random generators (Python, NumPy, torch CPU and CUDA) and the train sampler's seed, so a
  run stopped after epoch N and resumed trains epoch N + 1 as an uninterrupted run does.
"""
import errno
import os
import os.path as osp
import random
import re

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

# Re-exported: reading needs no mmengine (zoo.create_model reads weights there).
from .checkpoint_reading import (CheckpointNotFoundError, CheckpointReadError,  # noqa: F401
                                 describe_read_error, read_checkpoint)
from .stop import DISK_FULL, StopWithMessage, format_size, free_space, tolerate_full_disk

POINTER = 'last_checkpoint'
PARTIAL = '.partial-'
_PARTIAL_NAME = re.compile(r'^\..+' + re.escape(PARTIAL) + r'\d+$')
_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


class CheckpointSaveError(StopWithMessage, RuntimeError):
    """A checkpoint could not be written (a full disk); the message names what stays resumable."""


class DiskFullError(OSError):
    """:func:`atomic_write` ran out of room. ``path`` is the file that was being written,
    ``needed`` its size in bytes, ``free`` the bytes free after the partial file was removed
    (None where the filesystem cannot say)."""

    def __init__(self, path: str, needed: int, free: int | None, strerror: str):
        super().__init__(errno.ENOSPC, strerror, path)
        self.path, self.needed, self.free = path, needed, free


# --- atomic writes ---------------------------------------------------------------------------------

def partial_path(path: str) -> str:
    """The temporary name :func:`atomic_write` writes ``path`` under: hidden, beside it, with the
    writer's PID (two writers never share one)."""
    directory, name = osp.split(path)
    return osp.join(directory, f'.{name}{PARTIAL}{os.getpid()}')


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable; filesystems that cannot fsync a directory skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that ``path`` is never a partial file, whatever happens
    meanwhile (a kill, a power loss, a full disk): a temporary file in the same directory (the
    rename must not cross filesystems), flushed and fsynced, renamed over ``path``
    (``os.replace``), the directory fsynced. On any error the temporary file is removed and
    ``path`` is as before; a full disk raises :class:`DiskFullError` (an ``OSError`` with ENOSPC).
    A process killed outright leaves its temporary file, which
    :func:`remove_partial_files` clears at the next start."""
    if isinstance(data, str):
        data = data.encode('utf-8')
    path = osp.abspath(path)
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    temporary = partial_path(path)
    try:
        with open(temporary, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.remove(temporary)
        except OSError:
            pass
        if isinstance(error, OSError) and error.errno in DISK_FULL:
            raise DiskFullError(path, len(data), free_space(directory), error.strerror) from error
        raise
    _fsync_directory(directory)


def remove_partial_files(directory: str, logger=None) -> list[str]:
    """Delete the temporary files that :func:`atomic_write` calls in ``directory`` left by a
    killed run (a work dir holds one run at a time: ``zoo.runtime.work_dir_lock``), with a log line;
    their names."""
    try:
        names = [n for n in os.listdir(directory) if _PARTIAL_NAME.match(n)]
    except OSError:
        return []
    for name in names:
        try:
            os.remove(osp.join(directory, name))
        except OSError:
            pass
    if names and logger is not None:
        logger.info(f'removed {len(names)} partial file(s) an interrupted run left in {directory}: '
                    f'{", ".join(sorted(names))}')
    return names


@register_backend('atomic_local', force=True)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose ``put`` / ``put_text`` write through
    :func:`atomic_write`. ``backend_args=dict(backend='atomic_local')`` selects it; the checkpoint
    hook does for a local ``out_dir`` without backend arguments of the user's."""

    def put(self, obj: bytes, filepath) -> None:
        atomic_write(str(filepath), obj)

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(str(filepath), obj.encode(encoding))


# --- reading checkpoints ---------------------------------------------------------------------------

def checkpoint_problem(path: str) -> str | None:
    """None where ``path`` is a checkpoint torch can read; else why not. Cheap for a good file:
    it is memory-mapped, so the tensors are not read (a truncated zip lacks its directory, which
    is what fails). Files of torch's legacy format cannot be mapped and are read in full."""
    if not osp.isfile(path):
        return 'no such file'
    if osp.getsize(path) == 0:
        return 'the file is empty'
    try:
        torch.load(path, map_location='cpu', weights_only=False, mmap=True)
        return None
    except Exception:
        pass
    try:
        torch.load(path, map_location='cpu', weights_only=False)
        return None
    except Exception as error:
        return describe_read_error(error)


def read_pointer(work_dir: str) -> str | None:
    """What ``<work_dir>/last_checkpoint`` names: None without the file, '' for an empty or
    unreadable one."""
    path = osp.join(work_dir, POINTER)
    if not osp.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return ''


def checkpoint_files(directory: str) -> list[str]:
    """The ``epoch_N.pth`` / ``iter_N.pth`` files of ``directory``, newest first (modification
    time, then N). Best-metric checkpoints (``best_*``) are not resume points: they carry no
    optimiser state."""
    found = []
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        match = _CHECKPOINT_NAME.match(name)
        path = osp.join(directory, name)
        if match and osp.isfile(path):
            found.append((os.stat(path).st_mtime_ns, int(match[2]), path))
    return [path for *_, path in sorted(found, reverse=True)]


def find_resume_checkpoint(work_dir: str, logger=None) -> str | None:
    """The checkpoint ``--resume`` (without a path) continues from.

    The one ``last_checkpoint`` names, where it can be read (a relative name that does not
    resolve from here is looked up in ``work_dir``). Otherwise (no pointer, an empty or broken
    pointer, a named file that is missing, truncated or unreadable) the newest ``epoch_*.pth`` /
    ``iter_*.pth`` in ``work_dir`` that can be read, with a warning that says why. The pointer
    wins over newer files while it is good: a run resumed from an earlier checkpoint leaves
    later ones of the abandoned run behind it.

    None where ``work_dir`` holds no checkpoint at all: training starts from the beginning, as
    mmengine does. Checkpoints that all fail to read raise :class:`CheckpointReadError` naming
    each: starting over silently would overwrite them."""
    info = logger.info if logger is not None else (lambda message: None)
    warn = logger.warning if logger is not None else (lambda message: None)
    named = read_pointer(work_dir)
    problem = None
    if named:
        if not osp.isfile(named) and osp.isfile(osp.join(work_dir, osp.basename(named))):
            named = osp.join(work_dir, osp.basename(named))
        reason = checkpoint_problem(named)
        if reason is None:
            info(f'--resume: continuing from {named} (named by {POINTER})')
            return named
        problem = f'{POINTER} names {named}, which cannot be read: {reason}'
    elif named == '':
        problem = f'{POINTER} is empty or unreadable (a run was stopped while writing it)'
    failed = []
    for path in checkpoint_files(work_dir):
        if named and osp.abspath(path) == osp.abspath(named):
            continue
        reason = checkpoint_problem(path)
        if reason is None:
            why = problem or f'no {POINTER} in {work_dir}'
            skipped = ''.join(f'; skipped {p}: {r}' for p, r in failed)
            warn(f'--resume: {why}; continuing from {path}, the newest checkpoint there that can be read{skipped}')
            return path
        failed.append((path, reason))
    if failed or (named and problem):
        listed = '; '.join([problem] * bool(named and problem) + [f'{p}: {r}' for p, r in failed])
        raise CheckpointReadError(
            f'--resume: no checkpoint in {work_dir} can be read ({listed}). Pass a good one with '
            '--resume PATH, or move these away to start from the beginning.')
    if problem:
        warn(f'--resume: {problem}, and {work_dir} holds no checkpoint: training starts from the beginning')
    else:
        info(f'--resume: {work_dir} holds no checkpoint yet: training starts from the beginning')
    return None


def resolve_checkpoint(path: str, what: str = 'checkpoint') -> str:
    """``path`` as a checkpoint file: a file as it is; a work dir -> the checkpoint a ``--resume``
    of it would continue from (:func:`find_resume_checkpoint`: the one ``last_checkpoint`` names,
    else its newest readable ``epoch_*.pth`` / ``iter_*.pth``), so that commands name the run,
    not an epoch. ``what`` names the argument in the errors: a path that is neither, or a work
    dir without a checkpoint, raises :class:`CheckpointNotFoundError` saying which."""
    path = osp.expanduser(str(path))
    if osp.isfile(path):
        return path
    if not osp.isdir(path):
        raise CheckpointNotFoundError(f'{what} {path} does not exist: give a checkpoint file (.pth) or the work dir '
                                      f'of a training run (its last checkpoint is used)')
    try:
        found = find_resume_checkpoint(path)
    except CheckpointReadError as error:
        raise CheckpointReadError(str(error).replace('--resume: ', f'{what} {path}: ', 1)) from error
    if found is None:
        raise CheckpointNotFoundError(f'{what} {path} is a folder without checkpoints ({POINTER}, epoch_*.pth or '
                                      f'iter_*.pth): give the work dir of a run that saved one, or a .pth file')
    return found


# --- random state --------------------------------------------------------------------------------

def capture_random_state() -> dict:
    """The state of every random generator training draws from in this process: Python's
    ``random``, NumPy's global generator, torch's CPU generator and, where CUDA is in use, each
    GPU's. (DataLoader workers are seeded from these at each epoch's start.)"""
    state = dict(python=random.getstate(), numpy=np.random.get_state(), torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict, logger=None) -> None:
    """Set the generators to a :func:`capture_random_state` result. Tensors may come back on a
    GPU (mmengine resumes with ``map_location`` the device); torch wants its states on the CPU.
    A checkpoint from another number of GPUs restores the GPUs both have, with a warning."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    cuda = state.get('cuda')
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        for index, gpu_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(gpu_state.cpu(), index)
        if len(cuda) != count and logger is not None:
            logger.warning(f'the checkpoint holds the random state of {len(cuda)} GPU(s), this run has {count}: '
                           f'{min(len(cuda), count)} restored')


# --- the checkpoint hook ---------------------------------------------------------------------------

@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) that loses nothing to a kill or a full disk.

    * Checkpoints are written through :class:`AtomicLocalBackend` (a local ``out_dir`` and no
      ``backend_args`` of the user's), the pointer with :func:`atomic_write`, in that order: the
      pointer only ever names a complete file. A kill between the two leaves the pointer at the
      previous checkpoint, which is still complete.
    * ``max_keep_ckpts``: checkpoints that fall out are deleted before the new one is written
      (room on a full disk), except the one the pointer names, which goes only once its
      successor is in place (``max_keep_ckpts=1`` otherwise leaves nothing during the write).
    * A full disk stops training with a :class:`CheckpointSaveError` that says how much the
      checkpoint needed, how much is free, and which checkpoint ``--resume`` continues from.
    * Partial files a killed run left in the checkpoint folder are removed when training starts.
    * Each checkpoint's ``meta`` holds ``random_state`` (:func:`capture_random_state`) and
      ``train_sampler`` (the sampler's seed and epoch), which ``CrashSafeRunnerMixin.resume``
      restores. Evaluation during training runs on a saved-and-restored random state, so that
      whether and when it ran does not change the training that follows: a checkpoint saved just
      before an evaluation then holds the state the next epoch starts from.
    """

    def before_train(self, runner) -> None:
        out_dir = self.out_dir if self.out_dir is not None else runner.work_dir
        if self.backend_args is None and self.file_client_args is None and '://' not in str(out_dir):
            self.backend_args = dict(backend='atomic_local')
        super().before_train(runner)
        self._state_before_val = None
        if is_main_process():
            remove_partial_files(self.out_dir, runner.logger)
            if osp.abspath(runner.work_dir) != osp.abspath(self.out_dir):
                remove_partial_files(runner.work_dir, runner.logger)

    # Random state ------------------------------------------------------------------------------

    def before_val(self, runner) -> None:
        self._state_before_val = capture_random_state()

    def after_val(self, runner) -> None:
        state, self._state_before_val = getattr(self, '_state_before_val', None), None
        if state is not None:
            restore_random_state(state)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.setdefault('meta', {})
        meta['random_state'] = getattr(self, '_state_before_val', None) or capture_random_state()
        sampler = getattr(runner.train_dataloader, 'sampler', None)
        if sampler is not None and hasattr(sampler, 'seed'):
            meta['train_sampler'] = dict(seed=sampler.seed, epoch=getattr(sampler, 'epoch', None))

    # Saving ------------------------------------------------------------------------------------

    def _remove_checkpoint(self, step) -> None:
        path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(step))
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # checkpoints saved by deepspeed are directories
            self.file_backend.rmtree(path)

    def _save_checkpoint_with_step(self, runner, step, meta):
        """mmengine 0.10.7's method, reordered for safety (see the class docstring); the message
        hub's ``keep_ckpt_ids`` and ``last_ckpt`` and the files kept are as mmengine's."""
        pointer = osp.join(runner.work_dir, POINTER)
        resumed = read_pointer(runner.work_dir) or None
        previous = resumed if resumed and osp.isfile(resumed) else None
        deferred = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                old = self.keep_ckpt_ids.popleft()
                old_path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
                if previous and osp.abspath(str(old_path)) == osp.abspath(previous):
                    deferred.append(old)
                elif is_main_process():
                    self._remove_checkpoint(old)
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        try:
            runner.save_checkpoint(self.out_dir, filename, self.file_client_args,
                                   save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        except DiskFullError as error:
            raise CheckpointSaveError(_disk_full_message(error, 'the checkpoint', previous)) from error
        if not is_main_process():
            return
        try:
            atomic_write(pointer, str(self.last_ckpt))
        except DiskFullError as error:
            raise CheckpointSaveError(_disk_full_message(
                error, f'{POINTER} (pointing to the new, complete {self.last_ckpt})', previous)) from error
        for old in deferred:
            self._remove_checkpoint(old)


def _disk_full_message(error: DiskFullError, what: str, previous: str | None) -> str:
    free = 'an unknown amount' if error.free is None else format_size(error.free)
    kept = (f'{previous} stays the checkpoint that --resume continues from' if previous
            else 'there is no earlier checkpoint, so a rerun starts from the beginning')
    return (f'disk full: {what} {error.path} needs {format_size(error.needed)}, and '
            f'{osp.dirname(error.path)} has {free} free. Training stops here; the partial file '
            f'was removed and {kept}. Free some space (or train in a --work-dir on a disk with '
            'room) and run the same command with --resume.')


# --- the Runner ------------------------------------------------------------------------------------

class CrashSafeRunnerMixin:
    """Resume and checkpoint behaviour for mmengine's Runner (``zoo.runtime.engine.Runner`` mixes it in):

    * ``--resume`` without a path continues from :func:`find_resume_checkpoint`'s choice; an
      unreadable ``--resume PATH`` stops with "could not read checkpoint PATH: <reason>"
      (``zoo.runtime.engine``'s loader, :func:`read_checkpoint`).
    * Resuming restores the checkpoint's random state and train-sampler seed (written by
      :class:`SafeCheckpointHook`) after mmengine's resume re-seeded everything from the config:
      the sampler's per-epoch order comes from that seed and the epoch (``DistSamplerSeedHook``
      sets the epoch at each start), augmentation and noise from the restored generators. Epoch
      checkpoints are written at an epoch's end, so no position within an epoch is needed.
      Not exact: an iteration-based loop (mmengine skips the batches already trained by loading
      them again, which draws from the restored generators), persistent DataLoader workers (they
      restart from their seeds), and distributed runs (every process gets rank 0's state).
    * A ``CheckpointHook`` in the config becomes :class:`SafeCheckpointHook`, same arguments.
    * Log files drop lines a full disk refuses, quietly (``zoo.runtime.stop.tolerate_full_disk``).
    """

    def register_default_hooks(self, hooks=None) -> None:
        hooks = dict(hooks or {})
        checkpoint = hooks.get('checkpoint', dict(type='CheckpointHook', interval=1))
        if isinstance(checkpoint, dict) and checkpoint.get('type') in ('CheckpointHook', CheckpointHook):
            hooks['checkpoint'] = dict(checkpoint, type='SafeCheckpointHook')
        super().register_default_hooks(hooks)

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        tolerate_full_disk(logger)
        return logger

    def load_or_resume(self) -> None:
        """mmengine's, with :func:`find_resume_checkpoint` choosing the checkpoint for
        ``resume=True`` without ``load_from``."""
        if self._has_loaded:
            return
        if self._resume:
            path = self._load_from if self._load_from is not None else find_resume_checkpoint(
                self.work_dir, self.logger)
            if path is not None:
                self.resume(path)
                self._has_loaded = True
        elif self._load_from is not None:
            self.load_checkpoint(self._load_from)
            self._has_loaded = True

    def load_checkpoint(self, filename, *args, **kwargs):
        checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        self._loaded_meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
        return checkpoint

    def resume(self, filename, *args, **kwargs) -> None:
        super().resume(filename, *args, **kwargs)
        meta = getattr(self, '_loaded_meta', None) or {}
        sampler_state = meta.get('train_sampler')
        sampler = getattr(self.train_dataloader, 'sampler', None)
        if sampler_state and sampler is not None and hasattr(sampler, 'seed'):
            if sampler.seed != sampler_state['seed']:
                self.logger.info(f'train sampler seed {sampler_state["seed"]} restored from the checkpoint '
                                 f'(this run had drawn {sampler.seed})')
            sampler.seed = sampler_state['seed']
        if meta.get('random_state') is not None:
            restore_random_state(meta['random_state'], self.logger)
            self.logger.info('random state restored from the checkpoint (Python, NumPy, torch'
                             + (', CUDA' if 'cuda' in meta['random_state'] else '') + ')')
        else:
            self.logger.warning(f'{filename} holds no random state (written before this version): the resumed '
                                'run draws other random numbers than an uninterrupted run would')
        self._say_if_finished(filename)

    def _say_if_finished(self, filename) -> None:
        """A ``--resume`` of a run that already reached its last epoch (or iteration) trains
        nothing, which mmengine reports only as "resumed epoch: N". Say so, and how to go on:
        ``--load-from`` starts a new run from these weights (other data or classes), a larger
        ``max_epochs`` trains this one longer. Not an error: ``make demo`` resumes a finished run
        and then evaluates it."""
        loop = self.train_loop
        by_epoch = not isinstance(loop, IterBasedTrainLoop)
        done, total, key = ((self.epoch, loop.max_epochs, 'max_epochs') if by_epoch
                            else (self.iter, loop.max_iters, 'max_iters'))
        if done < total:
            return
        unit = 'epoch' if by_epoch else 'iteration'
        self.logger.warning(
            f'{filename} is the end of a finished run ({unit} {done} of train_cfg.{key}={total}): --resume has '
            f'nothing left to train, so nothing is trained. To train from these weights on other data or classes, '
            f'start a new run: tools/train.py CONFIG --load-from {self.work_dir} --work-dir NEW_DIR [--data DIR]. '
            f'To train this run longer: --resume --cfg-options train_cfg.{key}=N with N > {total}.')
