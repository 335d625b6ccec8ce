"""Decoding one image file (`jaxcifar.data.image_file.decode`), as the image-folder reader and
`jaxcifar predict` call it."""

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxcifar.commands.predict import read_image
from jaxcifar.data.image_file import decode, decode_all
from jaxcifar.errors import DataError
from data_files import grey_png, image_bytes


def test_resizing_interpolates_between_pixels():
    # Bilinear, as documented: the 4 output pixels' centres fall at -0.25, 0.25, 0.75 and 1.25
    # source pixels (clamped to the edges), which weigh 0 and 200 as 0, 50, 150, 200.
    # Nearest-neighbour repeats the two values; bicubic and Lanczos overshoot between them.
    out = decode(image_bytes(np.array([[0, 200]], np.uint8)), "L", "x.png", size=(4, 1))
    np.testing.assert_array_equal(out, np.array([0, 50, 150, 200], np.uint8).reshape(1, 4, 1))


def test_predict_resizes_to_a_non_square_models_height_and_width(tmp_path):
    # A model of 2x5 (H x W) images: a 10x4 file must come out 2 rows of 5, not 5 rows of 2.
    path = tmp_path / "tall.png"
    Image.new("RGB", (4, 10), (9, 99, 199)).save(path)
    pixels = read_image(path, (2, 5, 3))
    assert pixels.shape == (2, 5, 3) and (pixels == [9, 99, 199]).all()
    assert read_image(path, (2, 5, 1)).shape == (2, 5, 1)


@pytest.mark.parametrize("orientation, turn", [
    (1, lambda p: p), (3, lambda p: np.rot90(p, 2)), (6, lambda p: np.rot90(p, -1)),
    (8, np.rot90), (2, np.fliplr),
])  # fmt: skip
def test_an_image_is_turned_upright_as_its_exif_orientation_says(tmp_path, orientation, turn):
    # A phone photo taken sideways is stored sideways, with an EXIF tag that viewers follow;
    # `predict` classified it lying on its side.
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 6 is "turn 90 degrees clockwise to view"
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path, exif=exif)
    np.testing.assert_array_equal(decode(path, "RGB", "photo.png"), turn(pixels))
    np.testing.assert_array_equal(read_image(path, turn(pixels).shape), turn(pixels))


def test_what_is_not_a_regular_file_is_refused_not_read(tmp_path, ends_within_a_minute):
    # A FIFO without a writer blocked `predict` for ever; a missing file and a folder were
    # "not a readable image (FileNotFoundError: [Errno 2] ...)".
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    open_files = len(os.listdir("/proc/self/fd"))
    for path, reason in [(fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                         (tmp_path, "Is a directory"),
                         (tmp_path / "gone.png", "No such file or directory")]:  # fmt: skip
        with pytest.raises(DataError) as refused:
            decode(path, "RGB", f"named {path.name}")
        assert str(refused.value) == f"named {path.name}: cannot read ({reason})"
    assert len(os.listdir("/proc/self/fd")) == open_files  # a folder's was left open


def test_a_large_file_is_refused_from_its_header_not_read_whole(tmp_path, monkeypatch):
    # Read whole before Pillow looked at it, a file larger than memory ended `predict`.
    from jaxcifar import files
    from jaxcifar.data import image_file

    closed_at = []

    class Tracked(io.BufferedReader):
        def close(self):
            if not self.closed:
                closed_at.append(self.tell())
            super().close()

    def open_tracked(path):
        files.open_regular_file(path).close()  # its checks, then a file that says where it is
        return Tracked(io.FileIO(path))

    monkeypatch.setattr(image_file, "open_regular_file", open_tracked)
    big = tmp_path / "big.png"
    with open(big, "wb") as file:
        file.write(b"not an image")
        file.truncate(1 << 30)  # sparse: a gigabyte that takes no disk
    with pytest.raises(DataError, match="^big.png: not a readable image"):
        decode(big, "RGB", "big.png")
    [position] = closed_at
    assert position < 1 << 20


def test_a_broken_exif_tag_is_read_past_without_a_warning_that_names_no_file():
    # Two values where the Orientation tag holds one: Pillow warns "Metadata Warning, tag 274
    # had too many entries: 2, expected 1", naming no file, once per such file, and takes
    # the first. Reading EXIF for the orientation brought these warnings to every command.
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    # A little-endian TIFF header, then one IFD of one entry: tag 0x0112, type SHORT, 2 values.
    exif = b"II*\0\x08\0\0\0" + struct.pack("<HHHIHHI", 1, 0x0112, 3, 2, 6, 6, 0)
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, "PNG", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        upright = decode(png.getvalue(), "RGB", "photo.png")
    np.testing.assert_array_equal(upright, np.rot90(pixels, -1))


def test_a_palette_image_with_transparency_converts_without_a_warning_that_names_no_file():
    # Pillow warned "Palette images with Transparency expressed in bytes should be converted
    # to RGBA images", naming no file, twice a command.
    image = Image.new("P", (3, 1))
    image.putpalette([0, 0, 0, 200, 0, 0, 0, 90, 0])
    image.putdata([0, 1, 2])
    png = io.BytesIO()
    image.save(png, "PNG", transparency=b"\x00\x80\xff")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = decode(png.getvalue(), "RGB", "palette.png")
    np.testing.assert_array_equal(pixels[0], [[0, 0, 0], [200, 0, 0], [0, 90, 0]])


def test_a_png_broken_mid_pixels_is_named_not_a_syntax_error():
    # Pillow raises SyntaxError ("broken PNG file"), not an OSError, when the pixel data ends
    # in a chunk of no valid type.
    rows = b"".join(b"\0" + bytes(range(8)) for _ in range(8))  # 8x8 grey, filter 0
    pixels = zlib.compress(rows, 0)  # stored blocks: the same bytes with any zlib
    png = grey_png(8, 8, (b"IDAT", pixels[: len(pixels) // 2]), (b"\tEND", b""))
    with pytest.raises(DataError, match=r"^train/cat/0\.png: not a readable image \(SyntaxError: "):
        decode(png, "L", "train/cat/0.png")


def test_a_16_bit_grayscale_image_is_scaled_to_8_bits_not_clipped_white():
    # Pillow's own conversion clips every value above 255 to 255.
    pixels = np.array([[0, 257, 32896, 65535]], np.uint16)
    expected = np.array([[0, 1, 128, 255]], np.uint8)
    for fmt in ("PNG", "TIFF"):
        out = decode(image_bytes(pixels, fmt), "L", f"deep.{fmt}")
        np.testing.assert_array_equal(out[..., 0], expected)
    rgb = decode(image_bytes(pixels, "PNG"), "RGB", "deep.png")
    np.testing.assert_array_equal(rgb, np.repeat(expected[..., None], 3, axis=-1))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_image_is_turned_upright_as_its_exif_orientation_says(fmt):
    pixels = np.arange(6, dtype=np.uint16).reshape(2, 3) * 257 * 40
    exif = Image.Exif()
    exif[0x0112] = 6
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, fmt, exif=exif)
    upright = decode(encoded.getvalue(), "L", f"deep.{fmt}")
    np.testing.assert_array_equal(upright[..., 0], np.rot90(pixels // 257, -1))


def test_16_bit_values_round_to_the_nearest_8_bit_level_not_down():
    # 255/65535 of each: 128 -> 0.498, 129 -> 0.502, 386 -> 1.502, 65534 -> 254.996.
    # Truncating would give 0, 0, 1, 254.
    pixels = np.array([[128, 129, 386, 65534]], np.uint16)
    out = decode(image_bytes(pixels, "PNG"), "L", "deep.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 2, 255]])


def test_a_32_bit_integer_image_in_16_bit_range_is_scaled_like_a_16_bit_one():
    # Some Pillow versions open 16-bit PNGs as mode "I" (int32).
    pixels = np.array([[0, 32896, 65535]], np.int32)
    out = decode(image_bytes(pixels, "TIFF"), "L", "deep.tif")
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255]])


@pytest.mark.parametrize(
    "pixels, found",
    [
        (np.array([[0.0, 0.5]], np.float32), "float32 pixels (Pillow mode F) in 0.0..0.5"),
        (np.array([[-1, 70000]], np.int32), "int32 pixels (Pillow mode I) in -1..70000"),
    ],
)
def test_float_or_wider_integer_pixels_are_refused_naming_the_file(pixels, found):
    with pytest.raises(DataError) as caught:
        decode(image_bytes(pixels, "TIFF"), "L", "data/odd.tif")
    assert str(caught.value) == f"data/odd.tif: {found}; expected an 8-bit or 16-bit image"


def test_a_warning_pillow_gives_for_every_file_of_a_folder_shows_once(monkeypatch):
    # Setting the warning filters per image would reset Python's record of warnings shown,
    # printing such a warning 60,000 times for a folder of images (Pillow's palette warning
    # did, before it was filtered out).
    from jaxcifar.data import image_file

    def decode_warning(source, mode, where, size):
        warnings.warn("a warning Pillow gives for every such file", UserWarning)
        return np.zeros((1, 1, 3), np.uint8)

    monkeypatch.setattr(image_file, "_decode", decode_warning)
    sources = [(b"", f"{i}.png") for i in range(5)]
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")  # Python's own: once per place in the code
        assert len(list(decode_all(sources, "RGB"))) == 5
    assert [str(w.message) for w in shown] == ["a warning Pillow gives for every such file"]
