"""Decoding one image file (`jaxcifar.data.image_file.decode`), as the image-folder reader and
`jaxcifar predict` call it."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from jaxcifar.commands.predict import read_image
from jaxcifar.data.image_file import decode
from jaxcifar.errors import DataError


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def test_resizing_interpolates_between_pixels():
    # Bilinear, as documented: nearest-neighbour would only repeat the two source values.
    out = decode(png_bytes(np.array([[0, 200]], np.uint8)), "L", "x.png", size=(4, 1))
    assert out.shape == (1, 4, 1)
    values = out[0, :, 0]
    assert np.all(np.diff(values.astype(int)) >= 0) and len(set(values.tolist())) == 4


def test_predict_resizes_to_a_non_square_models_height_and_width(tmp_path):
    # A model of 2x5 (H x W) images: a 10x4 file must come out 2 rows of 5, not 5 rows of 2.
    path = tmp_path / "tall.png"
    Image.new("RGB", (4, 10), (9, 99, 199)).save(path)
    pixels = read_image(path, (2, 5, 3))
    assert pixels.shape == (2, 5, 3) and (pixels == [9, 99, 199]).all()
    assert read_image(path, (2, 5, 1)).shape == (2, 5, 1)


def test_a_png_broken_mid_pixels_is_named_not_a_syntax_error():
    # Pillow raises SyntaxError ("broken PNG file"), not an OSError, when the pixel data ends
    # in a chunk of no valid type.
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\0" + bytes(range(8)) for _ in range(8))  # 8x8 grey, filter 0
    pixels = zlib.compress(rows, 0)  # stored blocks: the same bytes with any zlib
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", pixels[: len(pixels) // 2]) + chunk(b"\tEND", b""))  # fmt: skip
    with pytest.raises(DataError, match=r"^train/cat/0\.png: not a readable image \(SyntaxError: "):
        decode(png, "L", "train/cat/0.png")
