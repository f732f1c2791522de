"""Pixel metrics of a reconstruction against its target: MSE, PSNR, SSIM and, when installed, LPIPS.

Images are anything `to_float` reads (PIL, HxWx3 uint8 array, or float array in [0, 1]) and are
compared as float64 RGB in [0, 1]. When the sizes differ the larger image is resized to the
smaller one with PIL's antialiasing LANCZOS filter first (a 512 aligned crop against a 128 render),
so the metrics never reward or punish upsampling.

    MSE  = mean (x - y)^2                         over pixels and channels, in [0, 1] units
    PSNR = 10 log10(1 / MSE)                      dB (peak 1); +inf for identical images
    SSIM = mean over pixels of l * c * s          skimage.metrics.structural_similarity with a 7x7
                                                  uniform window per channel, data_range 1
    LPIPS                                         Zhang et al.'s learned distance (AlexNet, v0.1) from the
                                                  `lpips` package on images in [-1, 1]; None when the
                                                  package is not installed (not a dependency)

Lower is better for MSE and LPIPS, higher for PSNR and SSIM.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity


def to_float(image) -> np.ndarray:
    """An RGB image as float64 [H, W, 3] in [0, 1]: PIL, uint8 array, or float array already in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Expected an RGB image [H, W, 3]; got an array of shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64)


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float [H, W, 3] image resized to (width, height), channel by channel in float32
    (no 8-bit rounding)."""
    channels = [
        np.asarray(Image.fromarray(x[..., k].astype(np.float32)).resize(size, Image.Resampling.LANCZOS))
        for k in range(3)
    ]
    return np.stack(channels, -1).astype(np.float64)


def same_size(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float [0, 1] arrays of the smaller one's size (module docstring)."""
    x, y = to_float(a), to_float(b)
    if x.shape != y.shape:
        if x.shape[0] * x.shape[1] > y.shape[0] * y.shape[1]:
            x = _resize(x, (y.shape[1], y.shape[0]))
        else:
            y = _resize(y, (x.shape[1], x.shape[0]))
    return x, y


def mse(a, b) -> float:
    """Mean squared error in [0, 1] units."""
    x, y = same_size(a, b)
    return float(np.mean((x - y) ** 2))


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio in dB with peak 1: 10 log10(1 / MSE)."""
    error = mse(a, b)
    return math.inf if error == 0 else 10 * math.log10(1.0 / error)


def ssim(a, b) -> float:
    """Mean structural similarity (skimage, 7x7 window per channel, data_range 1), in [-1, 1]."""
    x, y = same_size(a, b)
    return float(structural_similarity(x, y, channel_axis=-1, data_range=1.0))


@functools.cache
def _lpips_model():
    """The LPIPS AlexNet model, or why it is unavailable (a string) when `lpips` is not installed.

    Any other failure (lpips installed but broken, its AlexNet weights unreachable) raises: a metric
    silently left out would read as a result.
    """
    try:
        import lpips
    except ModuleNotFoundError as exc:
        if exc.name != "lpips":
            raise
        return "the `lpips` package is not installed (pip install lpips)"
    with warnings.catch_warnings():  # torchvision's deprecation chatter about `pretrained`
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net="alex", verbose=False).eval()


def lpips_status() -> str | None:
    """None when LPIPS is available, else why it is not."""
    model = _lpips_model()
    return model if isinstance(model, str) else None


def lpips_distance(a, b) -> float | None:
    """LPIPS (AlexNet, v0.1) between two images, or None when LPIPS is unavailable (`lpips_status`)."""
    model = _lpips_model()
    if isinstance(model, str):
        return None
    import torch

    x, y = same_size(a, b)
    tensors = [torch.from_numpy(v).permute(2, 0, 1)[None].float() * 2 - 1 for v in (x, y)]
    with torch.no_grad():
        return float(model(*tensors).reshape(()))


def image_metrics(target, reconstruction) -> dict[str, float | None]:
    """{'mse', 'psnr', 'ssim', 'lpips'} of a reconstruction against its target (lpips None if unavailable)."""
    return {
        "mse": mse(target, reconstruction),
        "psnr": psnr(target, reconstruction),
        "ssim": ssim(target, reconstruction),
        "lpips": lpips_distance(target, reconstruction),
    }
