"""Decoding image files (PNG, JPEG, or any format Pillow reads) with Pillow, one at a time or
many (`decode_all`), for the image-folder reader and `predict`.

Any size up to Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89
megapixels, e.g. 8000x8000) is decoded; a larger one is refused rather than decoded, since
one such file can take gigabytes.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from jaxcifar.errors import DataError, cannot_read
from jaxcifar.files import open_regular_file


def decode(
    source: bytes | Path, mode: str, where: str, size: tuple[int, int] | None = None
) -> np.ndarray:
    """One image file -> (H, W, C) uint8 pixels converted to Pillow `mode` ("RGB": C = 3,
    "L": C = 1), turned upright as its EXIF Orientation tag says.

    Args:
      source: the file's bytes, or its path.
      mode: "RGB" or "L"; grayscale, palette and RGBA images are converted, 16-bit grayscale
        scaled to 8 bits.
      where: names the file in messages.
      size: (width, height) to resize to, bilinearly; None keeps the file's own size.
    Raises:
      DataError naming `where` (never Pillow's name for the bytes it read): a missing or
        unreadable path, or one that is not a regular file (a folder, a FIFO); an empty or
        non-image file, one of more than Image.MAX_IMAGE_PIXELS pixels, or one of
        floating-point or 32-bit integer pixels.
    """
    (pixels,) = decode_all([(source, where)], mode, size)
    return pixels


def decode_all(
    sources: Iterable[tuple[bytes | Path, str]], mode: str, size: tuple[int, int] | None = None
) -> Iterator[np.ndarray]:
    """`decode(source, mode, where, size)` of each (source, where) pair, in order.

    The warning filters are set once around all of them, not once per image: setting them
    resets Python's record of warnings already shown, so a warning Pillow gives for every file
    of a folder would be printed once per file instead of once. They stay set until the
    iterator ends or is closed: close one left part-way (`contextlib.closing`).
    """
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and raises above.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        # A file's broken metadata (EXIF, read for its Orientation tag alone, or a TIFF's
        # other tags) costs nothing but that tag, and Pillow's warnings of it name no file.
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
        warnings.filterwarnings("ignore", "Possibly corrupt EXIF MakerNote", UserWarning)
        # A palette image with per-entry transparency converts as asked: Pillow's advice to
        # convert it to RGBA first names no file, and transparency is dropped either way.
        warnings.filterwarnings("ignore", "Palette images with Transparency", UserWarning)
        for source, where in sources:
            yield _decode(source, mode, where, size)


def _decode(
    source: bytes | Path, mode: str, where: str, size: tuple[int, int] | None
) -> np.ndarray:
    if isinstance(source, bytes):
        file = io.BytesIO(source)
    else:
        try:
            # Opened here, not by Pillow, which blocked for ever on a FIFO; read as Pillow
            # needs, so that a file too large to be an image is refused from its header.
            file = open_regular_file(source)
        except OSError as error:
            raise DataError(cannot_read(where, error)) from None
    try:
        with file, Image.open(file) as image:
            if size is not None:  # before the pixels are read, as a draft must be
                # JPEG: decode at 1/2 to 1/8 scale if still at least `size`, turned or not.
                image.draft(mode, (max(size),) * 2)
            # A photo taken sideways is stored so, with an EXIF tag telling viewers to turn
            # it; read as stored, it was classified lying on its side.
            ImageOps.exif_transpose(image, in_place=True)
            image = _eight_bit(image, where)
            if size is not None:
                image = image.convert(mode).resize(size, Image.BILINEAR)
            elif image.mode != mode:
                image = image.convert(mode)
            pixels = np.asarray(image, dtype=np.uint8)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DataError(f"{where}: refused, too large to decode safely ({error})") from None
    # Pillow's message names what it read: `<_io.BytesIO object at 0x...>` when given bytes,
    # as every image of a tree is; `where` names the file instead.
    except Image.UnidentifiedImageError:
        problem = "UnidentifiedImageError: not PNG, JPEG or another format Pillow reads"
        raise DataError(f"{where}: not a readable image ({problem})") from None
    # Pillow's decoders raise many types on malformed input (OSError, SyntaxError,
    # struct.error, ...); every one means "not a usable image".
    except Exception as error:
        problem = f"{type(error).__name__}: {error}"
        raise DataError(f"{where}: not a readable image ({problem})") from None
    return pixels.reshape(*pixels.shape[:2], -1)


def _eight_bit(image: Image.Image, where: str) -> Image.Image:
    """`image` with 8-bit pixels: 16-bit grayscale (Pillow's "I;16*", or "I" holding values in
    0..65535) scaled by 255/65535. Pillow's own conversion clips such pixels at 255, turning
    a 16-bit image white; float and wider integer pixels have no agreed range to scale from,
    so they are refused (DataError naming `where`)."""
    if image.mode == "F" or image.mode.startswith("I"):
        pixels = np.asarray(image)
        if image.mode == "F" or (pixels.size and (pixels.min() < 0 or pixels.max() > 65535)):
            raise DataError(
                f"{where}: {pixels.dtype} pixels (Pillow mode {image.mode}) in "
                f"{pixels.min()}..{pixels.max()}; expected an 8-bit or 16-bit image"
            )
        return Image.fromarray(np.round(pixels / 257).astype(np.uint8))  # mode "L"
    return image
