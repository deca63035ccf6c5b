"""Errors in a user's data: the tools print them as one message, without a traceback
(:func:`zoo.runtime.stop.stop_cleanly`), since the fix is in the data, not in the code. They stay a
ValueError / FileNotFoundError for callers that catch those."""
from zoo.runtime.stop import StopWithMessage


class DataError(StopWithMessage, ValueError):
    """A data set, annotation file or image that cannot be used as it is."""


class MissingDataError(StopWithMessage, FileNotFoundError):
    """A file or folder the data names that is not there."""
