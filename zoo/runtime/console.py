"""What a training or test run prints to the terminal, and what only goes to its log file.

mmengine prints, for every Runner (so twice for ``make demo``'s train and test), the system
environment with PyTorch's several-thousand-character build string, the whole config, the table
of hooks, an ``Exp name`` line every epoch, one warning per frozen parameter and deprecation
warnings of its own file client; and every training line carries every auxiliary loss term
(about 20 for the demo). A user reads the progress, the main losses, the ETA and the metrics.

``quiet_console(logger, log_file)`` keeps the terminal to those: the records listed in
``CONSOLE_DROPPED`` are not printed, and training / validation lines are shortened to the keys
that ``short_metrics_line`` keeps. Nothing is lost: the log file in the work dir receives every
record in full, the config is dumped beside it, and every scalar is in ``vis_data/scalars.json``.
``--verbose`` of ``tools/train.py`` / ``tools/test.py`` prints everything as mmengine does.
"""
import logging
import re

from mmengine.logging.logger import MMFormatter

# Record messages that go to the log file only (prefix match on the message).
CONSOLE_DROPPED = (
    '\n' + '-' * 60 + '\nSystem environment:',  # the environment block, build string included
    'Config:\n',  # the whole config (it is also dumped into the work dir)
    'Hooks will be executed in the following order',
    'Exp name:',  # repeated at the end of every epoch
    'Distributed training is not used, all SyncBatchNorm',
    '"FileClient" will be deprecated',  # mmengine's own checkpoint hook uses its deprecated API
    '"HardDiskBackend" is the alias of "LocalBackend"',
)
# Frozen parameters are summarised in one line by the optimiser constructor instead.
_FROZEN = re.compile(r'.* is skipped since its requires_grad=False$')

# The head: the mode and its counters, ``[2][ 1/16]`` or ``[  50/1000]`` (mmengine pads the iteration
# to the width of the total with spaces, inside the brackets).
_LINE = re.compile(r'^(?P<head>(?:Epoch|Iter)\((?P<mode>train|val|test)\)(?:\s*\[[^\]]*\])+\s*)(?P<items>.*)$',
                   re.DOTALL)
_ITEM = re.compile(r'(\S+): (\S+)')


def _shown(key: str, mode: str) -> bool:
    """Whether the terminal shows ``key`` of a ``mode`` line. Training: the learning rate, ETA,
    step time, gradient norm, memory, the total loss and the main terms (``loss_*``); the
    auxiliary decoder layers (``d0.``, ``d1.``, ...), denoising (``dn.``) and dense-head
    (``dense.``) terms and ``base_lr`` / ``data_time`` go to the file only. Evaluation: every
    metric except average recalls (``coco/AR*``) and the timings."""
    if mode == 'train':
        return key in ('lr', 'eta', 'time', 'grad_norm', 'memory') or (key.startswith('loss') and '.' not in key)
    return key not in ('time', 'data_time') and not re.search(r'/AR', key)


def short_metrics_line(message: str) -> str:
    """The terminal form of an mmengine training / evaluation line (the keys ``_shown`` keeps,
    in their order); any other message unchanged."""
    match = _LINE.match(message)
    if not match:
        return message
    kept = [f'{k}: {v}' for k, v in _ITEM.findall(match['items']) if _shown(k, match['mode'])]
    return match['head'] + '  '.join(kept) if kept else message


class ConsoleFilter(logging.Filter):
    """Drops the records that only belong in the log file (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(CONSOLE_DROPPED) or _FROZEN.match(message))


class ShortLineFormatter(MMFormatter):
    """mmengine's console formatter, printing metrics lines in their short form. The record is
    copied, not edited: the file handler formats the same record after this one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        short = short_metrics_line(message)
        if short != message:
            record = logging.makeLogRecord(dict(record.__dict__, msg=short, args=()))
        return super().format(record)


def console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    """The handlers of ``logger`` that write to the terminal (not to a file)."""
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def quiet_console(logger: logging.Logger) -> None:
    """Keep ``logger``'s terminal output to progress, main losses, ETA and metrics. Idempotent:
    mmengine hands the same logger instance back to a second Runner of the same name."""
    for handler in console_handlers(logger):
        if not any(isinstance(f, ConsoleFilter) for f in handler.filters):
            handler.addFilter(ConsoleFilter())
        if not isinstance(handler.formatter, ShortLineFormatter):
            handler.setFormatter(ShortLineFormatter(color=True, datefmt='%m/%d %H:%M:%S'))
