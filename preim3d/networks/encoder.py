"""The PREIM3D image encoder: an IR-SE residual network that maps a face crop to W+ offsets.

    x [N, 3, 256, 256] in [-1, 1]  ->  offsets [N, n_styles, w_dim]   (14 x 512 for EG3D-512)

The offsets are relative to the generator's latent average; `preim3d.inversion.invert` adds it.
With the defaults the network is the IR-SE50 "W+" encoder of PREIM3D, read top to bottom:

    input_layer     conv3x3(3 -> 64) -> BN -> PReLU                                  256 x 256
    body.0 .. 23    IR-SE units in 4 stages of (3, 4, 14, 3) units with (64, 128, 256, 512)
                    channels; the first unit of each stage halves the resolution  -> 16 x 16
    output_layer_2  BN -> adaptive average pool to 7 x 7 -> flatten -> linear(512*49 -> 512)
    linear          equalised linear 512 -> 14*512, viewed as [N, 14, 512]

Parameter names equal the official state dict's once its `encoder.` prefix is removed, so an
official checkpoint loads with `load_state_dict(strict=True)`. The size is configurable (units and
channels per stage, ...) so that tests can use a tiny encoder of the same structure.

`WPlusEncoder.fast()` gives an inference copy with the batch norms folded into the convolutions,
optionally in half precision and channels-last memory: same maths, a few times faster on a GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .graphs import CUDAGraphed


class EqualLinear(nn.Module):
    """y = x (weight * lr_mul / sqrt(in))^T + bias * lr_mul  (weights stored unscaled, StyleGAN style).

    Args: in_features, out_features; lr_mul (the learning-rate multiplier).
    """

    def __init__(self, in_features: int, out_features: int, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self):
        out_features, in_features = self.weight.shape
        return f"in_features={in_features}, out_features={out_features}, lr_mul={self.lr_mul:g}"


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean_hw(x)))))  with bias-free 1x1 convs C -> C/r -> C.

    Args: channels (C); reduction (r).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class IRSEUnit(nn.Module):
    """One IR-SE bottleneck: out = residual(x) + shortcut(x), no activation after the sum.

    residual = SE(BN(conv3x3_stride(PReLU(conv3x3(BN(x))))))   -- the stride sits on the SECOND conv
    shortcut = x[:, :, ::s, ::s] when the channel count is kept (the official MaxPool2d(1, s)),
               else BN(conv1x1_stride(x)).

    Args: in_channels; depth (output channels); stride (s); se_reduction (of the SqueezeExcite).
    """

    def __init__(self, in_channels: int, depth: int, stride: int, se_reduction: int = 16):
        super().__init__()
        self.stride = stride
        if in_channels == depth:
            self.shortcut_layer = None
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth, se_reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_layer is None:
            shortcut = x[:, :, :: self.stride, :: self.stride]
        else:
            shortcut = self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


class WPlusEncoder(nn.Module):
    """IR-SE encoder into W+: image [N,3,H,W] in [-1,1] -> offsets [N, n_styles, w_dim].

    Defaults are PREIM3D's IR-SE50 for EG3D-512 (14 x 512, 256 x 256 input). Every argument is
    part of `config` and is stored in bundles, so a saved encoder is rebuilt exactly (`from_config`).

    Args: n_styles and w_dim (the W+ shape); stage_units and stage_channels (IR-SE units and width
    of each stage; neighbouring widths differ); stem_channels (width of the input layer);
    pool_size (side of the head's average pooling); se_reduction (of every SqueezeExcite).
    """

    def __init__(
        self,
        n_styles: int = 14,
        w_dim: int = 512,
        stage_units: tuple[int, ...] = (3, 4, 14, 3),
        stage_channels: tuple[int, ...] = (64, 128, 256, 512),
        stem_channels: int = 64,
        pool_size: int = 7,
        se_reduction: int = 16,
    ):
        super().__init__()
        if len(stage_units) != len(stage_channels):
            raise ValueError(
                f"stage_units {stage_units} and stage_channels {stage_channels} differ in length."
            )
        if any(a == b for a, b in zip(stage_channels, stage_channels[1:])):
            # A stage is recognised in a state dict by its width, so neighbours must differ.
            raise ValueError(
                f"Neighbouring stages need different widths, got stage_channels {stage_channels}."
            )
        self.config = dict(
            n_styles=n_styles,
            w_dim=w_dim,
            stage_units=list(stage_units),
            stage_channels=list(stage_channels),
            stem_channels=stem_channels,
            pool_size=pool_size,
            se_reduction=se_reduction,
        )
        self.n_styles = n_styles
        self.w_dim = w_dim
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.PReLU(stem_channels),
        )
        units = []
        in_channels = stem_channels
        for count, depth in zip(stage_units, stage_channels):
            for i in range(count):
                units.append(IRSEUnit(in_channels, depth, 2 if i == 0 else 1, se_reduction))
                in_channels = depth
        self.body = nn.Sequential(*units)
        self.output_layer_2 = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.AdaptiveAvgPool2d((pool_size, pool_size)),
            nn.Flatten(),  # channel-major: index = c * pool^2 + y * pool + x
            nn.Linear(in_channels * pool_size * pool_size, w_dim),
        )
        self.linear = EqualLinear(w_dim, w_dim * n_styles)

    @classmethod
    def from_config(cls, config: dict) -> WPlusEncoder:
        """A new encoder (fresh weights) of the architecture `config`, another encoder's `.config`."""
        return cls(**config)

    def extra_repr(self):
        return f"n_styles={self.n_styles}, w_dim={self.w_dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        x = self.body(x)
        x = self.output_layer_2(x)
        return self.linear(x).view(-1, self.n_styles, self.w_dim)

    def fast(self, dtype: torch.dtype | None = None, channels_last: bool = True) -> FastWPlusEncoder:
        """An inference-only copy with batch norms folded (see `FastWPlusEncoder`); `self` is unchanged.

        dtype None means float16 when this encoder lives on a GPU, float32 otherwise.
        """
        if dtype is None:
            dtype = torch.float16 if self.linear.weight.device.type == "cuda" else torch.float32
        return FastWPlusEncoder(self, dtype=dtype, channels_last=channels_last)


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * a + b:  a = gamma / sqrt(var + eps),  b = beta - mean * a."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - bn.running_mean * a


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(conv(x)) as one conv: weight W * a (per output channel), bias b."""
    a, b = _bn_scale_shift(bn)
    return conv.weight * a[:, None, None, None], b


class _FastUnit(nn.Module):
    """IRSEUnit with its batch norms folded (`FastWPlusEncoder` states the maths)."""

    def __init__(self, unit: IRSEUnit):
        super().__init__()
        bn_in, conv1, prelu, conv2, bn_out, se = unit.res_layer
        self.stride = unit.stride
        pre_scale, pre_shift = _bn_scale_shift(bn_in)
        self.register_buffer("pre_scale", pre_scale[None, :, None, None])
        self.register_buffer("pre_shift", pre_shift[None, :, None, None])
        self.register_buffer("conv1", conv1.weight.clone())
        self.register_buffer("prelu", prelu.weight.clone())
        conv2_w, conv2_b = _fold_conv_bn(conv2, bn_out)
        self.register_buffer("conv2_w", conv2_w)
        self.register_buffer("conv2_b", conv2_b)
        self.register_buffer("se1", se.fc1.weight.flatten(1).clone())
        self.register_buffer("se2", se.fc2.weight.flatten(1).clone())
        self.has_shortcut_conv = unit.shortcut_layer is not None
        if self.has_shortcut_conv:
            sc_w, sc_b = _fold_conv_bn(*unit.shortcut_layer)
            self.register_buffer("shortcut_w", sc_w)
            self.register_buffer("shortcut_b", sc_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_shortcut_conv:
            shortcut = F.conv2d(x, self.shortcut_w, self.shortcut_b, self.stride)
        else:
            shortcut = x[:, :, :: self.stride, :: self.stride]
        r = torch.addcmul(self.pre_shift, x, self.pre_scale)
        r = F.prelu(F.conv2d(r, self.conv1, None, 1, 1), self.prelu)
        r = F.conv2d(r, self.conv2_w, self.conv2_b, self.stride, 1)
        s = torch.sigmoid(F.linear(F.relu(F.linear(r.mean(dim=(2, 3)), self.se1)), self.se2))
        return torch.addcmul(shortcut, r, s[:, :, None, None])

    def extra_repr(self):
        return f"in_channels={self.conv1.shape[1]}, depth={self.conv1.shape[0]}, stride={self.stride}"


class FastWPlusEncoder(nn.Module):
    """Inference-only copy of a WPlusEncoder: batch norms folded, optional half precision / channels-last.

    Eval-mode BN is y = x*a + b per channel. Folding is exact in real arithmetic:
      conv -> BN        : one conv with weight W*a (per output channel) and bias b;
      BN -> pool -> FC  : average pooling commutes with a per-channel affine map, so the head's
                          Linear absorbs it: W' = W diag(a repeated over the pool cells), b' = W b_rep + bias;
      FC -> EqualLinear : the equalised scale is applied once to the stored weight.
    A BN in front of a zero-padded conv is NOT folded (the padding would see b instead of 0); it stays
    a per-channel x*a + b. Only rounding differs from `WPlusEncoder`: about 1e-6 on W+ in float32, a
    few 1e-3 in float16 (bfloat16 is ~10x worse). The input is cast to the copy's dtype and layout;
    the output is float32. On a GPU, inference (no gradients) replays CUDA graphs captured per input
    shape (`CUDAGraphed`), which removes the launch overhead that dominates small batches.
    """

    def __init__(self, encoder: WPlusEncoder, dtype: torch.dtype = torch.float16, channels_last: bool = True):
        super().__init__()
        self.n_styles, self.w_dim = encoder.n_styles, encoder.w_dim
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        with torch.no_grad():
            conv, bn, prelu = encoder.input_layer
            stem_w, stem_b = _fold_conv_bn(conv, bn)
            self.register_buffer("stem_w", stem_w)
            self.register_buffer("stem_b", stem_b)
            self.register_buffer("stem_prelu", prelu.weight.clone())
            self.units = nn.ModuleList(_FastUnit(unit) for unit in encoder.body)
            head_bn, pool, _, head_fc = encoder.output_layer_2
            self.pool_size = pool.output_size
            a, b = _bn_scale_shift(head_bn)
            cells = (
                head_fc.in_features // a.numel()
            )  # flatten is channel-major: channel c owns `cells` inputs
            self.register_buffer("head_w", head_fc.weight * a.repeat_interleave(cells)[None, :])
            self.register_buffer("head_b", head_fc.bias + head_fc.weight @ b.repeat_interleave(cells))
            self.register_buffer("out_w", encoder.linear.weight * encoder.linear.scale)
            self.register_buffer("out_b", encoder.linear.bias * encoder.linear.lr_mul)
        self.to(dtype=dtype, memory_format=self.memory_format)
        self._graphed = CUDAGraphed(self._encode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On a GPU, inference replays captured CUDA graphs: small batches are bound by kernel launches.
        if x.is_cuda and not torch.is_grad_enabled():
            return self._graphed(x)
        return self._encode(x)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype=self.dtype, memory_format=self.memory_format)
        x = F.prelu(F.conv2d(x, self.stem_w, self.stem_b, 1, 1), self.stem_prelu)
        for unit in self.units:
            x = unit(x)
        x = F.adaptive_avg_pool2d(x, self.pool_size).flatten(1)
        x = F.linear(F.linear(x, self.head_w, self.head_b), self.out_w, self.out_b)
        return x.float().view(-1, self.n_styles, self.w_dim)

    def extra_repr(self):
        layout = "channels_last" if self.memory_format == torch.channels_last else "contiguous"
        return f"n_styles={self.n_styles}, w_dim={self.w_dim}, dtype={self.dtype}, layout={layout}"
