"""One training run per work dir.

Two runs in one work dir overwrite each other's ``epoch_N.pth`` and ``last_checkpoint`` and
delete each other's checkpoints (``max_keep_ckpts``): what ``--resume`` finds afterwards belongs
to neither. ``tools/train.py`` therefore holds ``<work_dir>/.lock`` while it trains, and a second
run on the same work dir stops at once, naming the first run's PID and host.

It stops rather than moving aside into a fresh timestamped subfolder: ``--resume``, ``make demo``
(``cat <work_dir>/last_checkpoint``), ``tools/test.py`` and ``tools/plot_curves.py`` all look for
checkpoints and logs in the work dir given, so a run silently diverted elsewhere would leave
them reading the other run's files, or none. Choosing another ``--work-dir`` is the user's call.

The lock is ``fcntl.flock`` on the file: the kernel releases it when the holding process ends,
however it ends, so a lock left by a killed run (the file is still there, with the dead run's
PID) is taken over with a log line; no PID guessing decides it. The file names the holder (PID,
host, start time, command) for the message. A run that ends normally deletes the file. With
torchrun only rank 0 takes the lock.
"""
import errno
import fcntl
import json
import os
import os.path as osp
import socket
import sys
import time

from .stop import StopWithMessage

LOCK_NAME = '.lock'


class WorkDirBusyError(StopWithMessage, RuntimeError):
    """Another run holds the work dir."""


def _describe(holder: dict) -> str:
    if not holder.get('pid'):
        return 'another run (it did not record its PID)'
    where = f' on {holder["host"]}' if holder.get('host') else ''
    since = f', started {holder["started"]}' if holder.get('started') else ''
    return f'the run with PID {holder["pid"]}{where}{since}'


def _read_holder(fd: int) -> dict:
    """The holder a lock file records (empty for an empty or garbled one)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 65536).decode('utf-8', 'replace').strip()
        holder = json.loads(text) if text else {}
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class WorkDirLock:
    """``<work_dir>/.lock`` held by this process between :meth:`acquire` and :meth:`release`
    (or as a context manager). ``took_over`` describes the holder of a stale lock this one
    replaced (None otherwise); :meth:`log_takeover` writes it to a run's log."""

    def __init__(self, work_dir: str):
        self.work_dir = work_dir
        self.path = osp.join(work_dir, LOCK_NAME)
        self.fd = None
        self.took_over = None

    def acquire(self) -> 'WorkDirLock':
        """Take the lock, or raise :class:`WorkDirBusyError` naming the run that holds it."""
        os.makedirs(self.work_dir, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = _read_holder(fd)
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise WorkDirBusyError(
                    f'{self.work_dir} is in use by {_describe(holder)} ({self.path}). Two runs in one '
                    'work dir would overwrite each other\'s checkpoints: wait for that run to finish, '
                    'or train in another --work-dir.') from None
            # The previous holder deletes the file when it ends; a file opened just before that
            # is no longer the lock file, so start again with the current one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            self.took_over = (f'{_describe(previous)} left {self.path} behind and is no longer running '
                              '(killed or crashed): this run takes the work dir over')
        record = dict(pid=os.getpid(), host=socket.gethostname(),
                      started=time.strftime('%Y-%m-%d %H:%M:%S'), command=' '.join(sys.argv))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)
        self.fd = fd
        return self

    def log_takeover(self, logger) -> None:
        """A warning in ``logger`` where this lock replaced a stale one."""
        if self.took_over and logger is not None:
            logger.warning(self.took_over)

    def release(self) -> None:
        """Delete the lock file and let go (the file first, while still held: see acquire)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> 'WorkDirLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class _NoLock:
    took_over = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def log_takeover(self, logger):
        pass


def hold_work_dir(work_dir: str):
    """The work-dir lock for a training run (a context manager): :class:`WorkDirLock` on rank 0,
    nothing on the other ranks of a torchrun launch (``RANK`` > 0)."""
    if int(os.environ.get('RANK', '0')) != 0:
        return _NoLock()
    return WorkDirLock(work_dir)
