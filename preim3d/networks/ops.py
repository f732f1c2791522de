"""Small named ops of the StyleGAN2 / EG3D networks, in plain PyTorch.

Every op states what it computes. The official implementation has CUDA kernels for several of
these; the maths here is the same (their reference paths agree with ours to rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .fused import FusedKernel

SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x · rsqrt(mean(x², dim) + eps)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_lrelu(
    x: torch.Tensor,
    bias: torch.Tensor,
    gain: float = SQRT2,
    clamp: float | None = None,
    inplace: bool = False,
) -> torch.Tensor:
    """clamp(lrelu(x + b, 0.2) · gain, ±clamp), the bias broadcast over dim 1 (channels).

    inplace=True lets it overwrite x (for callers that own x, e.g. a fresh convolution output: on a
    CPU, allocating a new image-sized tensor for each step costs as much as the arithmetic); it is
    ignored where autograd records x. Float16 images on a GPU take one fused pass (`BIAS_LRELU`).
    """
    if _records_grad(x, bias):
        return _bias_lrelu_out_of_place(x, bias, gain, clamp)
    return BIAS_LRELU(x, bias, gain, clamp, x if inplace else torch.empty_like(x))


def _bias_lrelu_out_of_place(x, bias, gain, clamp):
    """`bias_lrelu` in PyTorch without writing into any tensor (what autograd needs)."""
    x = F.leaky_relu(x + bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2))), 0.2) * gain
    return x.clamp(-clamp, clamp) if clamp is not None else x


def _records_grad(*tensors) -> bool:
    """Whether autograd records an op on these tensors (then nothing may be overwritten)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _bias_lrelu_torch(x, bias, gain, clamp, out):
    """`bias_lrelu` into out (x itself, or a tensor of x's shape), in PyTorch."""
    out = torch.add(x, bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2))), out=out)
    out = F.leaky_relu_(out, 0.2).mul_(gain)
    return out.clamp_(-clamp, clamp) if clamp is not None else out


def _bias_lrelu_examples(device):
    gen = torch.Generator().manual_seed(0)  # the same examples every time, whatever torch was seeded with
    for layout in (torch.contiguous_format, torch.channels_last):
        for clamp in (None, 1.0):
            x = torch.randn(2, 6, 5, 7, generator=gen).to(device, torch.float16).to(memory_format=layout)
            yield x, torch.randn(6, generator=gen).to(device), SQRT2, clamp, x


BIAS_LRELU = FusedKernel(
    "bias + leaky ReLU",
    "bias_lrelu",
    _bias_lrelu_torch,
    applies=lambda x, bias, gain, clamp, out: (
        x.dtype == torch.float16
        and x.ndim == 4
        and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
        and out.stride() == x.stride()
    ),
    examples=_bias_lrelu_examples,
)


def bias_linear(
    x: torch.Tensor, bias: torch.Tensor, clamp: float | None = None, inplace: bool = False
) -> torch.Tensor:
    """clamp(x + b, ±clamp), the bias broadcast over dim 1 (channels); inplace as in `bias_lrelu`."""
    b = bias.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if not inplace or _records_grad(x, bias):
        x = x + b
        return x.clamp(-clamp, clamp) if clamp is not None else x
    x = x.add_(b)
    return x.clamp_(-clamp, clamp) if clamp is not None else x


def bias_lrelu_to_rgb(
    x: torch.Tensor,
    noise: torch.Tensor | None,
    bias: torch.Tensor,
    gain: float,
    clamp: float | None,
    rgb_weight: torch.Tensor,
    rgb_bias: torch.Tensor,
    rgb_clamp: float | None,
    keep: bool = True,
):
    """A synthesis block's last layer and ToRGB in float16 inference: y = `bias_lrelu`(x + noise)
    (noise None, [H,W] or [N or 1,1,H,W]) and rgb = clamp(Σ_c rgb_weight[n,o,c] y_c + rgb_bias_o,
    ±rgb_clamp) float32 [N,O,H,W] (rgb_weight [N or 1, O, C], the modulated 1×1 weight). Returns
    (y, rgb); y is None unless `keep` (the last block's features are not used). One pass over the
    activations on a GPU (`BIAS_LRELU_TO_RGB`)."""
    return BIAS_LRELU_TO_RGB(x, noise, bias, gain, clamp, rgb_weight, rgb_bias, rgb_clamp, keep)


def _bias_lrelu_to_rgb_torch(x, noise, bias, gain, clamp, rgb_weight, rgb_bias, rgb_clamp, keep):
    if noise is not None:
        x = x + noise.to(x.dtype)
    y = _bias_lrelu_out_of_place(x, bias, gain, clamp)
    weight = rgb_weight.to(y.dtype).expand(len(y), -1, -1)
    rgb = torch.einsum("nchw,noc->nohw", y, weight).float() + rgb_bias.float().reshape(1, -1, 1, 1)
    if rgb_clamp is not None:
        rgb = rgb.clamp(-rgb_clamp, rgb_clamp)
    return (y if keep else None), rgb


def _bias_lrelu_to_rgb_examples(device):
    gen = torch.Generator().manual_seed(0)
    for noise, styles in ((None, 1), (torch.randn(1, 1, 5, 7, generator=gen), 2)):
        x = torch.randn(2, 70, 5, 7, generator=gen).to(device, torch.float16)  # two blocks of channels
        yield (
            x.to(memory_format=torch.channels_last),
            noise if noise is None else noise.to(device),
            torch.randn(70, generator=gen).to(device),
            SQRT2,
            1.0,
            (torch.randn(styles, 3, 70, generator=gen) * 0.1).to(device),
            torch.randn(3, generator=gen).to(device),
            2.0,
            noise is None,  # and without the features
        )


BIAS_LRELU_TO_RGB = FusedKernel(
    "bias + leaky ReLU + ToRGB",
    "bias_lrelu_to_rgb",
    _bias_lrelu_to_rgb_torch,
    applies=lambda x, *args: (
        x.dtype == torch.float16
        and x.ndim == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not _records_grad(x, *(a for a in args if isinstance(a, torch.Tensor)))
    ),
    examples=_bias_lrelu_to_rgb_examples,
)


def upfilter_bias_lrelu(
    t: torch.Tensor,
    noise: torch.Tensor | None,
    bias: torch.Tensor,
    gain: float = SQRT2,
    clamp: float | None = None,
) -> torch.Tensor:
    """The end of a 2× up-convolution in float16: t [N,C,2H+1,2W+1] (its stride-2 transposed
    convolution, `modulated_conv2d(..., up=True, up_filter=False)`) → EG3D's FIR filter (pad 1,
    gain 4) → [N,C,2H,2W], + noise ([2H, 2W], [N or 1, 1, 2H, 2W] or None), then `bias_lrelu`;
    one fused pass on a GPU (`UPFILTER_BIAS_LRELU`)."""
    if _records_grad(t, bias):
        x = upfilter(t)
        return bias_lrelu(x if noise is None else x + noise.to(x.dtype), bias, gain, clamp)
    return UPFILTER_BIAS_LRELU(t, noise, bias, gain, clamp)


def upfilter(t: torch.Tensor) -> torch.Tensor:
    """fir_blur(t, EG3D's filter, pad=1, gain=4): [N,C,R,S] → [N,C,R−1,S−1].

    The filter is separable, (1, 3, 3, 1)/4 along each axis: four shifted sums per axis, which GPUs
    run faster in float16 than a depthwise convolution.
    """
    t = F.pad(t, (1, 1, 1, 1))
    t = (t[..., :-3, :] + t[..., 3:, :]).mul_(0.25).add_(t[..., 1:-2, :] + t[..., 2:-1, :], alpha=0.75)
    return (t[..., :-3] + t[..., 3:]).mul_(0.25).add_(t[..., 1:-2] + t[..., 2:-1], alpha=0.75)


def _upfilter_bias_lrelu_torch(t, noise, bias, gain, clamp):
    x = upfilter(t)
    if noise is not None:
        x = x.add_(noise.to(x.dtype))
    return _bias_lrelu_torch(x, bias, gain, clamp, x)


def _upfilter_examples(device):
    gen = torch.Generator().manual_seed(0)
    for noise in (None, torch.randn(1, 1, 4, 6, generator=gen)):
        t = torch.randn(2, 6, 5, 7, generator=gen).to(device, torch.float16)
        noise = noise if noise is None else noise.to(device)
        bias = torch.randn(6, generator=gen).to(device)
        yield t.to(memory_format=torch.channels_last), noise, bias, SQRT2, 256.0


UPFILTER_BIAS_LRELU = FusedKernel(
    "up-sampling filter + bias + leaky ReLU",
    "upfilter_bias_lrelu",
    _upfilter_bias_lrelu_torch,
    applies=lambda t, noise, bias, gain, clamp: (
        t.dtype == torch.float16 and t.ndim == 4 and t.is_contiguous(memory_format=torch.channels_last)
    ),
    examples=_upfilter_examples,
)


def fir_filter_2d(taps=(1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    """The 2-D low-pass filter outer(taps, taps) normalised to sum 1 ([4,4] for the default taps)."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(t, t)
    return f / f.sum()


def _depthwise(f: torch.Tensor, channels: int, gain: float, dtype) -> torch.Tensor:
    """The filter repeated per channel for a grouped convolution, flipped (upfirdn2d convolves)."""
    return (f * gain).flip([0, 1]).to(dtype)[None, None].expand(channels, 1, *f.shape)


def fir_blur(x: torch.Tensor, f: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
    """Depthwise convolution with f·gain after zero-padding `pad` on every side (upfirdn2d, up=down=1)."""
    return F.conv2d(x, _depthwise(f, x.shape[1], gain, x.dtype), padding=pad, groups=x.shape[1])


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """upfirdn2d(x, f, up=2, pad=(2,1,2,1), gain=4) with EG3D's filter f = outer(t, t) / 64,
    t = (1, 3, 3, 1) (the only resample filter the released models use).

    The filter is separable, and after zero insertion each output phase meets two taps: along each
    axis out[2i] = x[i−1]/4 + 3·x[i]/4 and out[2i+1] = 3·x[i]/4 + x[i+1]/4, zero outside. A few
    element-wise steps instead of a depthwise transposed convolution, which GPU libraries run slowly.
    """
    before, after = F.pad(x[..., :-1], (1, 0)), F.pad(x[..., 1:], (0, 1))
    x = torch.stack((torch.lerp(before, x, 0.75), torch.lerp(after, x, 0.75)), -1).flatten(-2)  # columns
    before, after = F.pad(x[..., :-1, :], (0, 0, 1, 0)), F.pad(x[..., 1:, :], (0, 0, 0, 1))
    return torch.stack((torch.lerp(before, x, 0.75), torch.lerp(after, x, 0.75)), -2).flatten(-3, -2)  # rows


class FullyConnectedLayer(nn.Module):
    """y = act(x · (W · lr_mul / √in)ᵀ + b · lr_mul), weights stored raw ("equalised learning rate").

    Args: in_features, out_features; bias (whether there is one); activation 'linear' or 'lrelu'
    (the latter is lrelu(·, 0.2) · √2); lr_multiplier (lr_mul); bias_init (the bias's initial value).
    """

    def __init__(
        self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0
    ):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unsupported activation {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        if self.bias is None:
            x = x.matmul(w.t())
            return F.leaky_relu(x, 0.2) * SQRT2 if self.activation == "lrelu" else x
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if self.activation == "linear":
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_lrelu(x.matmul(w.t()), b, inplace=True)

    def extra_repr(self):
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activation={self.activation}, lr_multiplier={self.bias_gain:g}"
        )


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
    resample_filter: torch.Tensor | None = None,
    up_filter: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution (without noise, bias and activation).

    With w'[n,o,i] = W[o,i] · s[n,i], the output is conv(x, w'[n]) scaled by
    d[n,o] = rsqrt(Σ_{i,k,k} w'² + 1e-8) when demodulating. With one row of styles (one sample, or
    one w shared by a batch of views) the batch convolves with the modulated weight w'·d directly;
    otherwise it runs as conv(x · s, W) · d, the same function, so that one ordinary convolution
    serves the whole batch instead of one per sample.

    `up`: a 3x3 "up" convolution = stride-2 transposed convolution with the unflipped weight, then
    the FIR low-pass `resample_filter` with padding 1 and gain 4 (output 2H×2W). up_filter=False
    leaves the filter to the caller (output [N,C,2H+1,2W+1]; see `upfilter_bias_lrelu`).

    In half precision (x fp16) the weight and styles are first rescaled by their maxima, as the
    official mixed-precision path does, so that fp16 cannot overflow; demodulation cancels the scale.
    """
    n, in_ch = styles.shape
    _, _, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    dcoefs = None
    if demodulate:
        wmod = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)
        dcoefs = (wmod.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()
    if n == 1:  # also when x holds several views of one latent
        w = weight * styles.reshape(1, -1, 1, 1)
        if dcoefs is not None:
            w = w * dcoefs.reshape(-1, 1, 1, 1)
        return _conv(x, w.to(x.dtype), up, resample_filter, up_filter)
    x = _conv(x * styles.to(x.dtype).reshape(n, -1, 1, 1), weight.to(x.dtype), up, resample_filter, up_filter)
    if dcoefs is not None:
        x = x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    return x


def _conv(x, w, up, resample_filter, up_filter=True):
    """Same-size convolution, or the 2× up-convolution described in modulated_conv2d."""
    if not up:
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
    if not up_filter:
        return F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
    if x.dtype == torch.float16:
        # One transposed convolution with the combined kernel: GPUs run this far faster in half
        # precision than a separate depthwise blur, at four times the multiply-adds.
        return F.conv_transpose2d(x, up_conv_kernel(w, resample_filter).transpose(0, 1), stride=2, padding=2)
    x = F.conv_transpose2d(x, w.transpose(0, 1), stride=2)
    return fir_blur(x, resample_filter, pad=1, gain=4.0)


def up_conv_kernel(w: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The 6×6 kernel K = w ∗ 4f (full 2-D convolution per [out, in] pair) of a 3×3 up-convolution.

    A stride-2 transposed convolution with w followed by the FIR blur (pad 1, gain 4) equals one
    stride-2 transposed convolution with K and padding 2.
    """
    o, i, kh, kw = w.shape
    padded = F.pad(w.reshape(o * i, 1, kh, kw), [3, 3, 3, 3])
    return F.conv2d(padded, (f * 4).flip([0, 1]).to(w.dtype)[None, None]).reshape(o, i, kh + 3, kw + 3)
