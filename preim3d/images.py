"""Reading photos: anything a user may hand us -> an 8-bit RGB PIL image, upright as the camera saw it.

`load_image` accepts a path, raw bytes, a binary file object, a PIL image or an array, and

* applies the EXIF orientation tag, so a phone portrait is upright;
* converts every colour mode to RGB: grayscale and bilevel are replicated, CMYK / YCbCr / HSV go
  through PIL's converters, 16-bit data (PIL modes 'I;16*', uint16 arrays, and 'I' / wider
  integer arrays holding values above 255) is scaled by 255/65535, floats are read as [0, 1]
  (or [0, 255] when any value exceeds 1); channels-first [C,H,W] arrays are transposed;
* composites anything with transparency (RGBA, LA, palette with a transparent index) on white,
  because a transparent background would otherwise turn black and look like hair to the networks;
* refuses images of more than `max_pixels` pixels before decoding them (decompression bombs), and,
  when asked with `min_side` (face detection asks for `preim3d.validation.MIN_PHOTO_SIDE`), images
  too small to hold a face.

Every failure raises `InputImageError` saying what was wrong and what to do.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputImageError
from .validation import MAX_PIXELS, check_image_size

_WHITE = (255, 255, 255)


def load_image(image, *, max_pixels: int = MAX_PIXELS, min_side: int = 1) -> Image.Image:
    """Return `image` as a loaded, EXIF-upright, 8-bit RGB `PIL.Image`.

    image: a path (str or os.PathLike), bytes / bytearray / memoryview holding an encoded image,
    a binary file object, a `PIL.Image.Image`, or an array-like [H,W], [H,W,C] or [C,H,W] with
    C in 1, 3, 4 (bool, integer or floating dtype; see the module docstring for value ranges).
    A PIL image passed in is never modified. The size is checked before decoding: at most
    `max_pixels` pixels, at least `min_side` pixels on each side.
    """
    limits = dict(max_pixels=max_pixels, min_side=min_side)
    if isinstance(image, Image.Image):
        check_image_size(*image.size, "the image", **limits)
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise InputImageError(f"No image file at {path!r}: check the path.")
        return _decode(path, f"the file {path!r}", limits)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(image)), "the given bytes", limits)
    if hasattr(image, "read"):
        return _decode(image, "the given file object", limits)
    try:
        array = np.asarray(image)
    except Exception as exc:  # objects numpy cannot convert at all
        raise InputImageError(_unsupported(image)) from exc
    if array.dtype == object or array.ndim not in (2, 3):
        raise InputImageError(_unsupported(image))
    return _array_to_rgb(array, limits)


def _unsupported(image) -> str:
    return (
        f"Cannot read an image from a {type(image).__name__}: pass a file path, the file's bytes, "
        "a PIL image, or an array of shape [H,W], [H,W,C] or [C,H,W] with C in 1, 3, 4."
    )


def _decode(source, what: str, limits: dict) -> Image.Image:
    """Open (header only), check the size against `limits`, then decode, upright and convert to RGB."""
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; PIL's warning for >89 MP would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                check_image_size(*im.size, what, **limits)
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im))
    except InputImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputImageError(f"{what} is too large to decode safely ({exc}).") from exc
    except UnidentifiedImageError as exc:
        raise InputImageError(
            f"{what} is not an image format PIL can read: use a JPEG, PNG, WebP, BMP, GIF or TIFF file."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise InputImageError(f"{what} could not be decoded ({exc}): the file may be damaged.") from exc


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency composited on white; 16/32-bit and float via arrays."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        return _array_to_rgb(np.asarray(im), limits=None)
    if im.mode == "RGB":
        return im.copy()  # a fresh image the caller can modify freely
    if "A" in im.getbands() or "a" in im.getbands() or "transparency" in im.info:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _array_to_rgb(array: np.ndarray, limits: dict | None) -> Image.Image:
    """[H,W], [H,W,C] or [C,H,W] array (C in 1, 3, 4) -> RGB image; 4 channels = RGBA on white."""
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first, as torch tensors are
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        raise InputImageError(
            f"An image array of shape {array.shape} has {array.shape[-1]} channels: expected 1 "
            "(gray), 3 (RGB) or 4 (RGBA)."
        )
    if limits is not None:
        check_image_size(array.shape[1], array.shape[0], "the image array", **limits)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:  # the common case, no copy
        return Image.fromarray(np.ascontiguousarray(array), "RGB")
    values = _to_unit_range(array)
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    if values.shape[-1] == 4:  # composite on white: rgb * alpha + 1 * (1 - alpha)
        alpha = values[..., 3:]
        values = values[..., :3] * alpha + (1.0 - alpha)
    return Image.fromarray(np.round(values * 255.0).astype(np.uint8), "RGB")


def _to_unit_range(array: np.ndarray) -> np.ndarray:
    """Array values -> float32 in [0, 1], by dtype: bool, uint8, 16-bit, 32-bit int, float."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:  # uint16, any byte order ('I;16B')
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        # Wider integers (PIL 'I', int32/int64 arrays) carry either 16-bit data (16-bit PNGs open
        # as 'I') or 8-bit data in a wider type: values above 255 decide which.
        full_scale = 255.0 if array.size and array.max() <= 255 else 65535.0
        return np.clip(array.astype(np.float32) / full_scale, 0.0, 1.0)
    if np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if values.size and values.max() > 1.0:
            values = values / 255.0
        return np.clip(values, 0.0, 1.0)
    raise InputImageError(
        f"Image arrays of dtype {array.dtype} are not supported: use uint8, uint16 or float."
    )
