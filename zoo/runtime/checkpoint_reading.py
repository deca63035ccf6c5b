"""Reading a checkpoint file with errors a user can act on, without the training framework.

:func:`zoo.create_model` reads weights through here, so loading a checkpoint does not import
mmengine; :mod:`zoo.runtime.checkpointing` (resume, the Runner's loader) re-exports these names.
"""
import os.path as osp

import torch

from .stop import StopWithMessage


class CheckpointReadError(StopWithMessage, RuntimeError):
    """A checkpoint file that cannot be read: "could not read checkpoint PATH: <reason>"."""


class CheckpointNotFoundError(StopWithMessage, FileNotFoundError):
    """A checkpoint path that names no file."""


def describe_read_error(error: BaseException) -> str:
    """Why a checkpoint could not be read, in one line: the first sentence of torch's message
    (its zip reader's runs to a paragraph), prefixed with what it usually means."""
    text = ' '.join(str(error).split()) or type(error).__name__
    if len(text) > 160 and '. ' in text:
        text = text[:text.index('. ') + 1]
    if 'central directory' in text or isinstance(error, EOFError):
        return f'the file is truncated or corrupted ({text})'
    if 'load key' in text:
        return f'not a PyTorch checkpoint ({text})'
    return text


def read_checkpoint(filename: str, map_location=None):
    """``torch.load`` of a checkpoint file as mmengine's local loader (``zoo.runtime.engine``), with
    ``weights_only=False``: these are checkpoints this project wrote or the user chose. A missing
    file raises :class:`CheckpointNotFoundError` ("checkpoint PATH does not exist"), an unreadable
    one :class:`CheckpointReadError` ("could not read checkpoint PATH: <reason>")."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise CheckpointNotFoundError(f'checkpoint {filename} does not exist')
    if osp.getsize(filename) == 0:
        raise CheckpointReadError(f'could not read checkpoint {filename}: the file is empty')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointReadError(f'could not read checkpoint {filename}: {describe_read_error(error)}') from error
