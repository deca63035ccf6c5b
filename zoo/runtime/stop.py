"""Stopping a run with a message a user can act on, instead of a traceback.

Some failures are the user's to fix, not the code's: a full disk, a work dir another run is
using, a typo in a hook's arguments, a checkpoint that cannot be read. For those a traceback
through mmengine's loops hides the one line that matters. Such errors are raised as
:class:`StopWithMessage` (subclasses name what happened), and :func:`stop_cleanly`, wrapped
around a tool's ``main``, turns them into ``SystemExit(message)``: the message alone on the
terminal, exit status 1, and the same message in the run's log file.

A full disk is also caught where it is not a checkpoint being written (the log file, the
scalars of ``vis_data``): :func:`stop_cleanly` stops with a message naming the file, what is free
and what ``--resume`` continues from, and :func:`tolerate_full_disk` keeps the logging module
from printing "--- Logging error ---" and a traceback for every line it cannot append to a log
file on that full disk.
"""
import contextlib
import errno
import logging
import os.path as osp
import shutil
import sys

# errno values that mean "no room": no space left on the device, or the user's quota used up.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class StopWithMessage(Exception):
    """An error whose message says what happened and what to do; the tools print it without a
    traceback (:func:`stop_cleanly`)."""


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError for a full disk (or a used-up quota)."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


def format_size(num_bytes: float) -> str:
    """``num_bytes`` for a person: '512 B', '3.4 kB', '10.9 MB', '1.2 GB' (powers of 1000, as
    ``df -H`` and file managers show them)."""
    for unit in ('B', 'kB', 'MB', 'GB', 'TB'):
        if abs(num_bytes) < 1000 or unit == 'TB':
            return f'{num_bytes:.0f} {unit}' if unit == 'B' else f'{num_bytes:.1f} {unit}'
        num_bytes /= 1000
    raise AssertionError('unreachable')


def free_space(path: str) -> int | None:
    """Bytes free for an unprivileged user on the filesystem holding ``path`` (its nearest
    existing parent); None where that cannot be asked."""
    path = osp.abspath(path)
    while path and not osp.exists(path):
        parent = osp.dirname(path)
        if parent == path:
            break
        path = parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def log_to_files(logger: logging.Logger | None, message: str, level: int = logging.ERROR) -> None:
    """``message`` into ``logger``'s log files only (not its terminal handlers): the terminal gets
    it once, from ``SystemExit``. Nothing happens without a logger; a file that cannot be
    written (a full disk) is skipped (:func:`tolerate_full_disk`)."""
    if logger is None:
        return
    record = logger.makeRecord(logger.name, level, __file__, 0, message, (), None, func='stop_cleanly')
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _logger_names() -> set[str]:
    """The names of mmengine's loggers made so far in this process."""
    try:
        from mmengine.logging import MMLogger
    except ImportError:  # pragma: no cover - mmengine is a dependency
        return set()
    return set(MMLogger._instance_dict)


def _new_logger(before: set[str]) -> logging.Logger | None:
    """mmengine's current logger if it was made after ``before`` was taken (the Runner of the
    run that failed); None otherwise: an older run's log file is not this run's."""
    if not (_logger_names() - before):
        return None
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    return logger if logger.instance_name not in before else None


def _run_dir(logger: logging.Logger | None) -> str | None:
    """The work dir of the run whose logger this is (its log file is ``<work_dir>/<time>/x.log``)."""
    log_file = getattr(logger, 'log_file', None)
    return osp.dirname(osp.dirname(log_file)) if log_file else None


def disk_full_message(error: OSError, work_dir: str | None = None) -> str:
    """The stop message for a full disk met outside a checkpoint write (a log file, scalars, the
    config dump): the file (where the error names it), the room left there, and the checkpoint
    that ``--resume`` continues from (where ``work_dir`` is known)."""
    where = error.filename or (f'to {work_dir}' if work_dir else 'a file')
    free = free_space(osp.dirname(osp.abspath(error.filename)) if error.filename else work_dir or '.')
    room = f'; {format_size(free)} free there' if free is not None and (error.filename or work_dir) else ''
    space = 'free some space (or train in a --work-dir on another disk) and run'
    then = f'the last complete checkpoint is kept: {space} the same command with --resume'
    if work_dir:
        from .checkpointing import read_pointer  # torch: only once a training run has failed
        last = read_pointer(work_dir)
        then = (f'{last}, the last complete checkpoint, is kept: {space} the same command with --resume'
                if last and osp.isfile(last) else f'no checkpoint had been saved in {work_dir} yet: {space} again')
    return f'disk full: could not write {where} ({error.strerror or error}){room}. Training stops; {then}.'


@contextlib.contextmanager
def stop_cleanly(logger: logging.Logger | None = None):
    """Run the body; a :class:`StopWithMessage` or a full disk ends the program with its message
    (``SystemExit``: the message on stderr, exit status 1), written to the log file of the run
    started in the body too (``logger``, or the mmengine logger made there). Every other error
    keeps its traceback: it is a bug to report, not a situation to explain."""
    before = _logger_names()
    try:
        yield
    except StopWithMessage as error:
        log_to_files(logger or _new_logger(before), str(error))
        raise SystemExit(str(error)) from None
    except OSError as error:
        if not is_disk_full(error):
            raise
        logger = logger or _new_logger(before)
        message = disk_full_message(error, _run_dir(logger))
        log_to_files(logger, message)
        raise SystemExit(message) from None


def tolerate_full_disk(logger: logging.Logger) -> None:
    """Make ``logger``'s file handlers drop a line they cannot write to a full disk, with one note
    on stderr, instead of the logging module's "--- Logging error ---" and traceback for every
    line. Other write errors are reported as before. Idempotent."""
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, '_tolerates_full_disk', False):
            handler.handleError = _full_disk_tolerant(handler, handler.handleError)
            handler._tolerates_full_disk = True


def _full_disk_tolerant(handler: logging.FileHandler, handle_error):
    noted = []

    def handleError(record):  # noqa: N802  (logging's name)
        error = sys.exc_info()[1]
        if not is_disk_full(error):
            return handle_error(record)
        if not noted:
            noted.append(True)
            sys.stderr.write(f'disk full: log lines are no longer written to {handler.baseFilename}\n')
    return handleError
