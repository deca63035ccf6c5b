"""Image files read as the 8-bit RGB picture they show, whatever their PIL mode.

``PIL.Image.convert('RGB')`` clips every value above 255, so a 16-bit PNG (mode ``I;16``), a
32-bit integer image (``I``) or a float one (``F``) comes out nearly all white: the detector would
train on, or be shown, a blank picture without any error. ``read_image`` scales such images by
their real range instead; every 8-bit mode (1, L, P, RGB, RGBA, LA, CMYK, ...) converts exactly
as ``convert('RGB')`` does (alpha dropped, the palette applied). The dataset
(``detection.data.coco``) and ``tools/infer.py`` read pictures through this one function, so a
model sees the same pixels in training and when drawing.
"""
import numpy as np
from PIL import Image

from .errors import DataError, MissingDataError

# Modes whose values can exceed 255: 16-bit grayscale in its byte orders, 32-bit integer, float.
HIGH_DEPTH_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """One channel of a high-depth image -> uint8 by its real range.

    I;16*: the 16-bit range, value / 257 (0 -> 0, 65535 -> 255), whatever the values present.
    I and F, which hold any range: by the values present: within 0..255 they are 8-bit values
    and kept; within 0..65535 a 16-bit image (/ 257); a float image within 0..1 a normalised
    one (* 255); anything else (negative, above 65535) is stretched from its minimum to its
    maximum, the only range such an image tells."""
    a = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if mode.startswith('I;16'):
        a = a / 257
    elif a.size:
        lo, hi = float(a.min()), float(a.max())
        if mode == 'F' and lo >= 0 and hi <= 1:
            a = a * 255
        elif lo >= 0 and 255 < hi <= 65535:  # (within 0..255: 8-bit values, kept as they are)
            a = a / 257
        elif lo < 0 or hi > 65535:
            a = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """An opened PIL image of any mode -> mode RGB, 8 bits per channel, not saturated (see
    ``_to_8bit`` for the scaling of 16-bit, 32-bit and float images; 8-bit modes convert as
    ``img.convert('RGB')``)."""
    if img.mode in HIGH_DEPTH_MODES:
        return Image.fromarray(_to_8bit(np.asarray(img), img.mode), 'L').convert('RGB')
    if img.mode == 'La':  # premultiplied alpha: PIL converts it to RGB only by way of LA
        img = img.convert('LA')
    return img.convert('RGB')


def _unreadable(path: str, e: Exception) -> DataError:
    """The one-line error for a file PIL cannot decode, naming it and the fix."""
    if isinstance(e, Image.DecompressionBombError):
        return DataError(f'cannot read image {path}: {e}. Raise PIL.Image.MAX_IMAGE_PIXELS if the file '
                         f'is trusted, or downscale it')
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    return DataError(f'cannot read image {path}: {reason}. The file is corrupt or not a picture: replace it')


# What PIL raises for a file it cannot read: OSError (UnidentifiedImageError, truncated data, a
# folder), SyntaxError and ValueError from some plugins' parsers, DecompressionBombError.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of the image file at ``path`` from its header alone (no pixels decoded);
    errors as ``read_image``'s."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise MissingDataError(f'image {path} not found: check the path') from None
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from e


def read_image(path: str) -> Image.Image:
    """The image file at ``path`` as an 8-bit RGB PIL image (``to_rgb``).

    Raises FileNotFoundError for a missing file and ValueError for one PIL cannot decode
    (corrupt, truncated, not an image), each naming the file in one line."""
    try:
        with Image.open(path) as img:
            return to_rgb(img)
    except FileNotFoundError:
        raise MissingDataError(f'image {path} not found: check the path') from None
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from e
