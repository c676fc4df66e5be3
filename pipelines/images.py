"""Image files checked from their headers, before anything decodes them.

A decoded image costs width x height x 3 bytes, whatever its file size: an 875 KB PNG of 30000 x 30000
decodes to 2.7 GB. PIL's `Image.open` reads only the header (about 35 us a JPEG), so the size is
known, and checked, before a byte of pixels is decoded: by conversion (a quarantine row) and by
prediction (one line).
"""

from __future__ import annotations

import os
import stat
import struct
import warnings

from pipelines.errors import InputError

# PIL's own decompression-bomb warning size: 256 MiB of RGB (about 9460 x 9460 pixels)
MAX_IMAGE_PIXELS = 89_478_485


class ImageProblem(InputError):
    """An image file that cannot be used; the message names the file and says why (one line)."""


class ImageTooLarge(ImageProblem):
    """More pixels than `MAX_IMAGE_PIXELS`, read from the header."""


class NotAFile(ImageProblem):
    """A FIFO, device or folder where an image file should be."""


def image_size(path, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the header of a regular file, without decoding its pixels.
    Raises ImageTooLarge over `max_pixels`, ImageProblem when it is no readable image."""
    from PIL import Image

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the open forever
            raise NotAFile(f"image is not a regular file: {path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below says it better
            with Image.open(path) as im:
                width, height = im.size
    except Image.DecompressionBombError:  # over twice PIL's limit: PIL refuses before showing the size
        width, height = _png_size(path) or (0, 0)
        if not width:
            raise ImageTooLarge(f"image has too many pixels to decode (more than twice the PIL bomb limit; the "
                                f"limit here is {max_pixels:,}): {path}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"image does not open: {path} ({str(exc).splitlines()[0][:100]})") from None
    if width * height > max_pixels:
        raise ImageTooLarge(f"image has too many pixels to decode ({width}x{height} = {width * height:,}; the limit "
                            f"is {max_pixels:,}, 256 MiB as RGB): {path}")
    return width, height


def _png_size(path) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR (the usual bomb: a tiny file of a huge size), else None."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def size_problem(path, width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS) -> str | None:
    """Why an image whose record declares `width` x `height` cannot be used (unreadable, too many
    pixels, or another size in the file: its boxes and masks would be in the wrong pixels), or None."""
    try:
        w, h = image_size(path, max_pixels)
    except ImageProblem as exc:
        return str(exc)
    if (w, h) != (width, height):
        return f"image size differs from the declared size ({w}x{h} in the file, {width}x{height} declared): {path}"
    return None


def check_pixels(path, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """Raise ImageTooLarge (one line) before an image over `max_pixels` is decoded; anything else
    (unreadable, not there) is left to the decoder that follows, which says so itself."""
    try:
        image_size(path, max_pixels)
    except (ImageTooLarge, NotAFile):
        raise
    except ImageProblem:
        pass
