"""Nothing lost: checkpoints and the ``last_checkpoint`` pointer survive a kill or a full disk,
``--resume`` finds a checkpoint that loads and continues exactly where an uninterrupted run
would be, one run at a time per work dir, and a checkpoint-hook typo is refused before training.

Kills and full disks are simulated in this process: ``open`` is wrapped so that one file write
stops half-way, with ``Killed`` (a stand-in for SIGKILL that no ``except Exception`` catches) or
with ``OSError(ENOSPC)``. One test kills a real training process.
"""
import builtins
import errno
import glob
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from mmengine.config import Config

from helpers import ROOT, load_tool, plain_pretty_text, tiny_detr_config

_names = itertools.count()


class Killed(BaseException):
    """The process dies here (as SIGKILL would): no ``except Exception`` handler runs."""


@pytest.fixture(scope='module')
def train_main():
    """tools/train.py's ``main``, run in this process (a subprocess costs seconds of imports on
    2 cores), with the config's yapf formatting made cheap."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(os.path.join(ROOT, 'tools'))
        mp.setattr(Config, 'pretty_text', property(plain_pretty_text))
        yield load_tool('train', 'vitzoo_tool_train_crash').main


def _tiny_config(directory) -> str:
    """The tiny DETR, 2 steps an epoch, every step's losses logged unsmoothed (window 1)."""
    return tiny_detr_config(directory, extra='log_processor = dict(window_size=1)')


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    return _tiny_config(tmp_path_factory.mktemp('tiny'))


def _train(train_main, base, work, *args, max_epochs=2, val_interval=1, extra=''):
    """train.py on a config that inherits ``base``: its own experiment name (two runs in one
    second would otherwise share a logger), ``max_epochs``, ``val_interval``, ``extra`` lines."""
    name = f'run{next(_names)}'
    path = os.path.join(os.path.dirname(base), f'{name}.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = ['{base}']\nexperiment_name = '{name}'\n"
                f"train_cfg = dict(max_epochs={max_epochs}, val_interval={val_interval})\n" + textwrap.dedent(extra))
    return train_main([path, '--work-dir', str(work), '--threads', '1', *args])


def _losses(work) -> dict:
    """{step: {loss key: value}} from every ``scalars.json`` of the work dir (each run writes its
    own timestamped folder)."""
    out = {}
    for path in sorted(glob.glob(os.path.join(str(work), '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'loss' in row and 'step' in row:
                    out[row['step']] = {k: v for k, v in row.items() if k.startswith('loss')}
    return out


def _log_text(work) -> str:
    return ''.join(open(p).read() for p in sorted(glob.glob(os.path.join(str(work), '*', '*.log'))))


def _bytes(size: str) -> float:
    """'10.9 MB' -> 10.9e6 (``zoo.runtime.stop.format_size``'s units)."""
    number, unit = size.split()
    return float(number) * 1000 ** ['B', 'kB', 'MB', 'GB', 'TB'].index(unit)


def _pointer(work) -> str:
    with open(os.path.join(str(work), 'last_checkpoint')) as f:
        return f.read().strip()


def _partial_files(work) -> list[str]:
    return [n for n in os.listdir(str(work)) if '.partial-' in n]


def _break_writes(monkeypatch, name: str, error: BaseException, nth: int = 1) -> list:
    """The ``nth`` opening for writing of a file whose name contains ``name`` (the file, or a
    temporary file beside it) writes half of what it is given, then raises ``error``. The list
    returned collects the paths broken."""
    real_open = builtins.open
    opened, broken = [0], []

    class HalfWritten:
        def __init__(self, f, path):
            self._f, self._path = f, path

        def write(self, data):
            self._f.write(data[:len(data) // 2])
            self._f.flush()
            broken.append(self._path)
            raise error

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

        def __getattr__(self, key):
            return getattr(self._f, key)

    def fake_open(file, mode='r', *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and name in os.path.basename(os.fspath(file)) \
                and any(c in mode for c in 'wax'):
            opened[0] += 1
            if opened[0] == nth:
                return HalfWritten(f, os.fspath(file))
        return f

    monkeypatch.setattr(builtins, 'open', fake_open)
    return broken


# --- exact resume --------------------------------------------------------------------------------

def test_resume_continues_exactly_as_an_uninterrupted_run(train_main, tiny, tmp_path, monkeypatch):
    """Same seed: 2 epochs straight against 1 epoch, stop, ``--resume`` to 2. Epoch 2's losses
    (every term, every step) are equal: the checkpoint carries the random generators' state
    and evaluation (after epoch 1, in the straight run) does not move them. Before, the resumed
    epoch re-drew epoch 1's random numbers (augmentation, query noise). On the CPU even where
    there is a GPU: CUDA kernels that add atomically are not bit-reproducible from run to run."""
    monkeypatch.setattr('mmengine.runner.runner.get_device', lambda: 'cpu')
    straight, stopped = tmp_path / 'straight', tmp_path / 'stopped'
    _train(train_main, tiny, straight)
    _train(train_main, tiny, stopped, max_epochs=1)
    runner = _train(train_main, tiny, stopped, '--resume')
    assert runner.epoch == 2
    one, two = _losses(straight), _losses(stopped)
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]  # 2 steps an epoch
    for step in (3, 4):
        assert one[step].keys() == two[step].keys()
        for key, value in one[step].items():
            assert two[step][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)
    meta = torch.load(stopped / 'epoch_1.pth', map_location='cpu', weights_only=False)['meta']
    assert {'python', 'numpy', 'torch'} <= set(meta['random_state'])
    assert 'random state restored' in _log_text(stopped)


def test_random_state_round_trip():
    """What a checkpoint keeps of the generators brings each back (also from tensors that a
    resume on a GPU maps there: torch wants its states on the CPU)."""
    import random

    import numpy as np

    from zoo.runtime.checkpointing import capture_random_state, restore_random_state

    def draw():
        out = [random.random(), float(np.random.rand()), torch.rand(1).item()]
        if torch.cuda.is_available():
            out.append(torch.rand(1, device='cuda').item())
        return out

    if torch.cuda.is_available():
        torch.rand(1, device='cuda')  # CUDA in use, as in training on a GPU
    state = capture_random_state()
    first = draw()
    if torch.cuda.is_available():
        state = dict(state, torch=state['torch'].cuda(), cuda=[s.cuda() for s in state['cuda']])
    restore_random_state(state)
    assert draw() == first


# --- kills ---------------------------------------------------------------------------------------

def test_killed_while_writing_the_pointer_keeps_the_previous_one(train_main, tiny, tmp_path, monkeypatch):
    """Killed while writing ``last_checkpoint`` after epoch 2: the pointer still names epoch 1's
    complete checkpoint (before: a truncated pointer, and ``--resume`` failed with "checkpoint
    ... does not exist"), and ``--resume`` continues from it."""
    work = tmp_path / 'work'
    broken = _break_writes(monkeypatch, 'last_checkpoint', Killed(), nth=2)
    with pytest.raises(Killed):
        _train(train_main, tiny, work)
    assert broken
    monkeypatch.undo()
    assert _pointer(work) == str(work / 'epoch_1.pth')
    assert not _partial_files(work)
    runner = _train(train_main, tiny, work, '--resume')
    assert runner.epoch == 2 and 'resumed epoch: 1' in _log_text(work)
    assert _pointer(work) == str(work / 'epoch_2.pth')


def test_killed_while_writing_a_checkpoint_leaves_no_truncated_file(train_main, tiny, tmp_path, monkeypatch):
    """Killed half-way through writing ``epoch_2.pth``: no file carries that name (before: a
    truncated one did), the pointer names epoch 1, and ``--resume`` redoes epoch 2. The temporary
    file a real kill leaves behind is removed when the next run starts."""
    work = tmp_path / 'work'
    broken = _break_writes(monkeypatch, 'epoch_2.pth', Killed())
    with pytest.raises(Killed):
        _train(train_main, tiny, work)
    assert broken
    monkeypatch.undo()
    assert not os.path.exists(work / 'epoch_2.pth')
    assert _pointer(work) == str(work / 'epoch_1.pth')
    leftover = work / '.epoch_2.pth.partial-4242'  # what SIGKILL would have left
    leftover.write_bytes(b'PK\x03\x04 half a checkpoint')
    runner = _train(train_main, tiny, work, '--resume')
    assert runner.epoch == 2 and 'resumed epoch: 1' in _log_text(work)
    assert not leftover.exists() and 'partial file(s)' in _log_text(work)
    torch.load(work / 'epoch_2.pth', map_location='cpu', weights_only=False)


# --- full disk -----------------------------------------------------------------------------------

def test_full_disk_stops_with_the_space_needed_and_the_checkpoint_kept(train_main, tiny, tmp_path, monkeypatch,
                                                                       capfd):
    """No room for ``epoch_2.pth``: the partial file is removed, training stops with one message
    (no traceback, no "--- Logging error ---") that says how much the checkpoint needed, how much
    is free, and that epoch 1's checkpoint stays the one resumed; the message is in the log."""
    work = tmp_path / 'work'
    broken = _break_writes(monkeypatch, 'epoch_2.pth', OSError(errno.ENOSPC, 'No space left on device'))
    with pytest.raises(SystemExit) as stop:
        _train(train_main, tiny, work)
    assert broken
    monkeypatch.undo()
    message = str(stop.value.code)
    size = os.path.getsize(work / 'epoch_1.pth')
    assert f'the checkpoint {work / "epoch_2.pth"} needs ' in message
    needed = float(message.split(' needs ')[1].split(' MB')[0]) * 1e6
    assert abs(needed - size) < 0.02 * size, (needed, size)  # epoch 2's checkpoint, as big as epoch 1's
    free = re.search(r' has ([\d.]+ [kMGT]?B) free', message)[1]
    assert _bytes(free) == pytest.approx(shutil.disk_usage(work).free, rel=0.02)
    assert f'{work / "epoch_1.pth"} stays the checkpoint that --resume continues from' in message
    assert not os.path.exists(work / 'epoch_2.pth') and not _partial_files(work)
    assert _pointer(work) == str(work / 'epoch_1.pth')
    err = capfd.readouterr().err
    assert 'Traceback' not in err and '--- Logging error ---' not in err
    assert 'disk full' in _log_text(work)


def test_full_disk_for_the_scalars_stops_naming_the_checkpoint_kept(train_main, tiny, tmp_path, monkeypatch,
                                                                   capfd):
    """A full disk met by another write (here ``vis_data/scalars.json`` in epoch 2, after epoch 1
    was saved) also stops with a message, naming the checkpoint that stays the one resumed."""
    work = tmp_path / 'work'
    # The 4th opening: steps 1 and 2, epoch 1's evaluation, then step 3.
    broken = _break_writes(monkeypatch, 'scalars.json', OSError(errno.ENOSPC, 'No space left on device'), nth=4)
    with pytest.raises(SystemExit) as stop:
        _train(train_main, tiny, work)
    assert broken
    message = str(stop.value.code)
    assert message.startswith(f'disk full: could not write to {work} (No space left on device); ')
    assert f'{work / "epoch_1.pth"}, the last complete checkpoint, is kept' in message
    assert 'Traceback' not in capfd.readouterr().err


def test_full_disk_for_the_log_file_prints_no_logging_errors(train_main, tiny, tmp_path, monkeypatch, capfd):
    """Every line the log file cannot take on a full disk is dropped with one note, not a
    "--- Logging error ---" and a traceback each; mmengine's own write to that file (the model's
    initialisation record) then stops training with the message."""
    work = tmp_path / 'work'
    broken = _break_writes(monkeypatch, '.log', OSError(errno.ENOSPC, 'No space left on device'))
    with pytest.raises(SystemExit, match=re.escape(f'disk full: could not write to {work} (No space left')):
        _train(train_main, tiny, work)
    assert broken
    err = capfd.readouterr().err
    assert '--- Logging error ---' not in err and 'Traceback' not in err
    assert err.count('disk full: log lines are no longer written to') == 1


# --- resuming from what is there -----------------------------------------------------------------

@pytest.fixture(scope='module')
def two_epochs(train_main, tiny, tmp_path_factory):
    """A work dir after 2 epochs: epoch_1.pth, epoch_2.pth, last_checkpoint -> epoch_2."""
    work = tmp_path_factory.mktemp('two_epochs') / 'work'
    _train(train_main, tiny, work)
    return work


def _copy(work, to):
    """A copy of a work dir whose pointer names the copy's file."""
    shutil.copytree(work, to, ignore=shutil.ignore_patterns('2*'))  # not the old runs' logs
    named = os.path.basename(_pointer(to))
    with open(os.path.join(to, 'last_checkpoint'), 'w') as f:
        f.write(str(to / named))
    return to


def _truncate(path):
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])


@pytest.mark.parametrize('damage, resumed, said', [
    ('empty pointer', 2, 'last_checkpoint is empty'),
    ('pointer to a missing file', 2, 'which cannot be read: no such file'),
    ('pointer to a truncated file', 1, 'the file is truncated or corrupted'),
])
def test_resume_falls_back_to_the_newest_checkpoint_that_loads(train_main, tiny, two_epochs, tmp_path,
                                                               damage, resumed, said):
    """``--resume`` with a broken pointer, or one naming a file that cannot be read, continues
    from the newest ``epoch_*.pth`` that loads, saying why in the log (before: "checkpoint  does
    not exist", or the zip reader's traceback)."""
    work = _copy(two_epochs, tmp_path / 'work')
    pointer = work / 'last_checkpoint'
    if damage == 'empty pointer':
        pointer.write_text('')
    elif damage == 'pointer to a missing file':
        pointer.write_text(str(work / 'epoch_7.pth'))
    else:
        _truncate(work / 'epoch_2.pth')
    runner = _train(train_main, tiny, work, '--resume', max_epochs=3)
    log = _log_text(work)
    assert runner.epoch == 3 and f'resumed epoch: {resumed}' in log
    assert said in log and f'continuing from {work / f"epoch_{resumed}.pth"}' in log


def test_resume_path_that_cannot_be_read_is_named(train_main, tiny, two_epochs, tmp_path, capfd):
    """``--resume PATH`` to a truncated file: "could not read checkpoint PATH: <reason>", not the
    zip reader's traceback."""
    path = tmp_path / 'broken.pth'
    shutil.copy(two_epochs / 'epoch_1.pth', path)
    _truncate(path)
    with pytest.raises(SystemExit, match=re.escape(f'could not read checkpoint {path}: the file is truncated or '
                                                   'corrupted (PytorchStreamReader failed reading zip archive')):
        _train(train_main, tiny, tmp_path / 'work', '--resume', str(path))
    assert 'Traceback' not in capfd.readouterr().err


# --- one run per work dir ------------------------------------------------------------------------

_HOLD_LOCK = """
import sys, types
zoo = types.ModuleType('zoo')  # the package without its __init__ (the model zoo): stdlib only
zoo.__path__ = [sys.argv[1] + '/zoo']
sys.modules['zoo'] = zoo
from zoo.runtime.work_dir_lock import WorkDirLock
lock = WorkDirLock(sys.argv[2]).acquire()
print('locked', flush=True)
sys.stdin.read()
lock.release()
"""


def test_a_second_run_on_the_same_work_dir_stops_naming_the_first(train_main, tiny, tmp_path):
    """While one run trains in a work dir, a second one there stops at once with a message that
    names the first run's PID and says to wait or use another --work-dir."""
    work = tmp_path / 'work'
    first = subprocess.Popen([sys.executable, '-c', _HOLD_LOCK, ROOT, str(work)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == 'locked'
        with pytest.raises(SystemExit) as stop:
            _train(train_main, tiny, work, max_epochs=1)
        message = str(stop.value.code)
        assert f'in use by the run with PID {first.pid} on {socket.gethostname()}' in message
        assert 'wait for that run to finish, or train in another --work-dir' in message
        assert not glob.glob(str(work / '*.pth')) and not glob.glob(str(work / '2*'))  # nothing started
    finally:
        first.stdin.close()
        first.wait(timeout=30)
    assert not os.path.exists(work / '.lock')  # the first run let go


def test_a_stale_lock_is_taken_over_with_a_log_line(train_main, tiny, tmp_path):
    """A lock file whose run is gone (killed: its file stays) is taken over, with a log line; a
    run that ends normally removes its lock."""
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    work = tmp_path / 'work'
    work.mkdir()
    (work / '.lock').write_text(json.dumps(dict(pid=gone.pid, host=socket.gethostname(), started='earlier')))
    runner = _train(train_main, tiny, work, max_epochs=1)
    assert runner.epoch == 1
    assert f'the run with PID {gone.pid} on {socket.gethostname()}, started earlier left' in _log_text(work)
    assert 'no longer running' in _log_text(work)
    assert not os.path.exists(work / '.lock')


@pytest.mark.slow
def test_real_kill_then_resume(train_main, tiny, tmp_path):
    """A real ``kill -9`` of tools/train.py during training (at whatever it was doing): every
    file named like a checkpoint loads, the pointer names one, and ``--resume`` takes the dead
    run's lock over and continues."""
    work = tmp_path / 'work'
    config = os.path.join(os.path.dirname(tiny), 'long.py')
    with open(config, 'w') as f:
        f.write(f"_base_ = ['{tiny}']\ntrain_cfg = dict(max_epochs=200, val_interval=1000)\n"
                "default_hooks = dict(checkpoint=dict(max_keep_ckpts=2))\n")
    run = subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir', str(work), '--threads', '1'],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not os.path.exists(work / 'epoch_3.pth') and run.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert run.poll() is None, 'training ended before it could be killed'
        time.sleep(0.3)  # into the next epochs, maybe in the middle of a save
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert os.path.exists(work / '.lock')
    for path in glob.glob(str(work / '*.pth')):
        torch.load(path, map_location='cpu', weights_only=False)
    named = _pointer(work)
    assert os.path.isfile(named)
    done = int(os.path.basename(named)[len('epoch_'):-len('.pth')])
    runner = _train(train_main, tiny, work, '--resume', max_epochs=done + 1, val_interval=1000)
    log = _log_text(work)
    assert runner.epoch == done + 1 and f'resumed epoch: {done}' in log
    assert f'the run with PID {run.pid}' in log and 'no longer running' in log
    assert not _partial_files(work)


# --- hook arguments ------------------------------------------------------------------------------

def test_checkpoint_hook_typo_is_refused_before_training(train_main, tiny, tmp_path):
    """``default_hooks.checkpoint.intervel``: refused when the config is loaded, with the hook's
    argument names (before: an epoch of training, then "save_checkpoint() got an unexpected
    keyword argument 'intervel'")."""
    work = tmp_path / 'work'
    with pytest.raises(SystemExit) as stop:
        _train(train_main, tiny, work, max_epochs=1, extra='default_hooks = dict(checkpoint=dict(intervel=1))\n')
    message = str(stop.value.code)
    assert "default_hooks.checkpoint.intervel: SafeCheckpointHook has no argument 'intervel' " \
           "(did you mean 'interval'?)" in message
    assert 'interval, less_keys, max_keep_ckpts, out_dir' in message
    assert not os.path.exists(work)  # nothing was built or trained


def test_hook_argument_check_knows_what_each_hook_takes():
    import zoo.runtime.engine  # noqa: F401  (registers the project's hooks)
    from zoo.runtime.hook_args import HookArgumentError, check_hook_arguments, hook_argument_problems

    good = Config(dict(
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, priority='LOW'), timer=None,
                           logger=dict(type='LoggerHook', interval=5)),
        custom_hooks=[dict(type='EMAHook', momentum=0.01),  # **kwargs go to the averaged model: not checked
                      dict(type='TimeBudgetHook', minutes=3), dict(type='NotRegisteredHook', x=1)]))
    check_hook_arguments(good)
    bad = Config(dict(default_hooks=dict(logger=dict(type='LoggerHook', intervl=5)),
                      custom_hooks=[dict(type='TimeBudgetHook', minuts=3)]))
    problems = hook_argument_problems(bad)
    assert len(problems) == 2
    assert problems[0].startswith("default_hooks.logger.intervl: LoggerHook has no argument 'intervl' "
                                  "(did you mean 'interval'?)")
    assert problems[1] == ("custom_hooks[0].minuts: TimeBudgetHook has no argument 'minuts' (did you mean "
                           "'minutes'?); it takes minutes (and priority)")
    with pytest.raises(HookArgumentError):
        check_hook_arguments(bad)


# --- the write itself ----------------------------------------------------------------------------

def test_atomic_write_fsyncs_then_renames_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    from zoo.runtime import checkpointing
    from zoo.runtime.checkpointing import DiskFullError, atomic_write

    target = tmp_path / 'epoch_1.pth'
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, 'fsync', lambda fd: (events.append('fsync'), real_fsync(fd))[1])
    monkeypatch.setattr(os, 'replace', lambda a, b: (events.append(('replace', os.path.basename(a),
                                                                    os.path.basename(b))), real_replace(a, b))[1])
    atomic_write(str(target), b'old')
    assert target.read_bytes() == b'old'
    partial = os.path.basename(checkpointing.partial_path(str(target)))
    assert events[:2] == ['fsync', ('replace', partial, 'epoch_1.pth')]  # the file, before its rename
    assert events[2:] == ['fsync']  # then the directory
    monkeypatch.undo()
    _break_writes(monkeypatch, 'epoch_1.pth', OSError(errno.ENOSPC, 'No space left on device'))
    with pytest.raises(DiskFullError) as full:
        atomic_write(str(target), b'new and longer')
    assert full.value.needed == len(b'new and longer')
    assert full.value.free == pytest.approx(shutil.disk_usage(tmp_path).free, rel=0.02)
    assert full.value.errno == errno.ENOSPC
    assert target.read_bytes() == b'old' and os.listdir(tmp_path) == ['epoch_1.pth']
