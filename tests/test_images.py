"""load_image: every input kind and colour mode a user may pass comes back as upright 8-bit RGB."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from preim3d.errors import InputImageError
from preim3d.images import load_image


def _pixels(im):
    assert im.mode == "RGB"
    return np.asarray(im).astype(int)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")


def test_path_bytes_file_object_pil_and_array_agree(tmp_path, rgb):
    path = tmp_path / "photo.png"
    rgb.save(path)
    data = path.read_bytes()
    expected = np.asarray(rgb)
    for source in (path, str(path), data, bytearray(data), io.BytesIO(data), rgb, expected):
        np.testing.assert_array_equal(np.asarray(load_image(source)), expected)


def test_pil_input_is_not_modified():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    out = load_image(rgba)
    assert rgba.mode == "RGBA" and out is not rgba
    out.paste((1, 2, 3), (0, 0, 4, 4))
    assert load_image(Image.new("RGB", (2, 2), (5, 6, 7))).getpixel((0, 0)) == (5, 6, 7)


def test_exif_orientation_is_applied(tmp_path):
    # Left half red, right half blue, stored with orientation 6 ("rotate 90 degrees clockwise to view").
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    stored.save(path, exif=exif, quality=95)
    upright = _pixels(load_image(path))
    assert upright.shape == (40, 20, 3)  # width and height swapped
    assert upright[5, 10, 0] > 200 and upright[5, 10, 2] < 60  # top is red: the left half went up
    assert upright[35, 10, 2] > 200 and upright[35, 10, 0] < 60


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[0, :, 3] = (0, 255, 128)
    out = _pixels(load_image(Image.fromarray(rgba, "RGBA")))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 1]) == (200, 0, 0)
    assert abs(out[0, 2, 0] - (200 * 128 + 255 * 127) / 255) <= 1 and abs(out[0, 2, 1] - 127) <= 1
    # the same from a float RGBA array
    out_f = _pixels(load_image(rgba.astype(np.float32) / 255.0))
    assert np.abs(out_f - out).max() <= 1


def test_palette_with_transparent_index():
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.info["transparency"] = 0
    out = _pixels(load_image(im))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[0, 1]) == (0, 255, 0)


def test_grayscale_bilevel_and_la():
    gray = _pixels(load_image(Image.new("L", (3, 2), 77)))
    assert (gray == 77).all()
    assert (_pixels(load_image(Image.new("1", (3, 2), 1))) == 255).all()
    la = _pixels(load_image(Image.new("LA", (3, 2), (0, 0))))
    assert (la == 255).all()  # fully transparent black -> white


def test_cmyk():
    out = _pixels(load_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0))))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(_pixels(load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 255))))[0, 0]) == (0, 0, 0)


def test_sixteen_bit_images(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)  # 32896 = 128 * 257
    expected = [0, 128, 255]
    im16 = Image.fromarray(values)
    assert im16.mode.startswith("I;16")
    assert _pixels(load_image(im16))[0, :, 0].tolist() == expected
    path = tmp_path / "deep.png"
    im16.save(path)  # a 16-bit grayscale PNG, which PIL reopens as 'I;16' or 'I'
    assert _pixels(load_image(path))[0, :, 1].tolist() == expected
    as_i = Image.fromarray(values.astype(np.int32), "I")
    assert _pixels(load_image(as_i))[0, :, 2].tolist() == expected
    # an 'I' image that only holds 8-bit values stays 8-bit
    assert _pixels(load_image(Image.fromarray(np.array([[0, 200]], np.int32), "I")))[0, :, 0].tolist() == [
        0,
        200,
    ]
    big_endian = values.astype(">u2")
    assert _pixels(load_image(big_endian))[0, :, 0].tolist() == expected


def test_float_bool_and_channels_first_arrays():
    unit = np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)
    assert _pixels(load_image(unit))[0, :, 0].tolist() == [0, 128, 255, 0]
    scale255 = np.array([[0.0, 128.0, 255.0, 300.0]])
    assert _pixels(load_image(scale255))[0, :, 0].tolist() == [0, 128, 255, 255]
    assert _pixels(load_image(np.array([[True, False]])))[0, :, 0].tolist() == [255, 0]
    chw = np.zeros((3, 5, 7), np.uint8)
    chw[0] = 255
    out = _pixels(load_image(chw))
    assert out.shape == (5, 7, 3) and (out[..., 0] == 255).all() and (out[..., 1] == 0).all()


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((6, 6, 5), np.uint8), "5 channels"),
        (np.zeros(10, np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.array([["a"]], dtype=object), "shape"),
        (np.zeros((2, 2), np.complex64), "dtype"),
        (12345, "int"),
        (b"definitely not an image", "not an image format"),
    ],
)
def test_bad_inputs_say_what_is_wrong(bad, words):
    with pytest.raises(InputImageError, match=words):
        load_image(bad)


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(InputImageError, match="No image file"):
        load_image(tmp_path / "nope.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    truncated = buf.getvalue()[:-40]
    with pytest.raises(InputImageError, match="could not be decoded"):
        load_image(truncated)


def _chunk(kind, payload):
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def _png_header_only(width, height):
    """A PNG whose header claims width x height pixels, with (almost) no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding():
    # 12000 x 9000 = 108 MP claimed: refused from the header alone (there is no data to decode).
    with pytest.raises(InputImageError, match="more than the limit"):
        load_image(_png_header_only(12000, 9000))
    # beyond PIL's own bomb limit too
    with pytest.raises(InputImageError, match="too large|more than the limit"):
        load_image(_png_header_only(100000, 100000))
    with pytest.raises(InputImageError, match="limit of 100"):
        load_image(np.zeros((20, 20, 3), np.uint8), max_pixels=100)
    with pytest.raises(InputImageError, match="limit"):
        load_image(Image.new("RGB", (20, 20)), max_pixels=100)
