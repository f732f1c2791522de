"""The StyleGAN2 generator that EG3D uses as its tri-plane backbone (and whose blocks build the
super-resolution module).

Parameter and buffer names follow the official state dict, so released weights load strictly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .ops import (
    SQRT2,
    FullyConnectedLayer,
    bias_linear,
    bias_lrelu,
    bias_lrelu_to_rgb,
    fir_filter_2d,
    modulated_conv2d,
    normalize_2nd_moment,
    upfilter_bias_lrelu,
    upsample_2x,
)

NOISE_MODES = ("const", "random", "none")


class MappingNetwork(nn.Module):
    """z [N,z_dim], c [N,c_dim] → w broadcast to [N,num_ws,w_dim], with optional truncation.

    x = concat(n2m(z), n2m(embed(c))) → `num_layers` lrelu FC layers (lr multiplier 0.01);
    truncation: rows [0, cutoff) ← w_avg + ψ · (w − w_avg).

    Args: z_dim, c_dim, w_dim; num_ws (rows of the output); num_layers; embed_features (width of the
    camera embedding, default w_dim); layer_features (hidden width, default w_dim); activation and
    lr_multiplier of the FC layers; w_avg_beta (the official training's w_avg decay, unused here).
    """

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        num_ws,
        num_layers=8,
        embed_features=None,
        layer_features=None,
        activation="lrelu",
        lr_multiplier=0.01,
        w_avg_beta=0.998,
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = (
            z_dim,
            c_dim,
            w_dim,
            num_ws,
            num_layers,
        )
        embed_features = 0 if c_dim == 0 else (w_dim if embed_features is None else embed_features)
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            layer = FullyConnectedLayer(
                features[idx], features[idx + 1], activation=activation, lr_multiplier=lr_multiplier
            )
            setattr(self, f"fc{idx}", layer)
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1.0, truncation_cutoff=None):
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))
        if self.c_dim > 0:
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))
        x = torch.cat(parts, dim=1)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x[:, :cutoff] = self.w_avg.lerp(x[:, :cutoff], truncation_psi)
        return x

    def extra_repr(self):
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}, "
            f"num_layers={self.num_layers}"
        )


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally 2× up) + noise + bias + lrelu·√2 (+ clamp).

    Noise is added after demodulation and before the bias: 'const' uses the stored `noise_const`
    [res,res], 'random' draws N(0,1) [N,1,res,res], each times the learned `noise_strength`.

    Args: in_channels, out_channels, w_dim; resolution (of the output); up (upsample 2× first);
    use_noise; conv_clamp (clamp of the output, None for none).
    """

    def __init__(
        self, in_channels, out_channels, w_dim, resolution, up=False, use_noise=True, conv_clamp=None
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.up, self.use_noise, self.conv_clamp = up, use_noise, conv_clamp
        self.register_buffer("resample_filter", fir_filter_2d())
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="const"):
        x, noise = self.convolve(x, w, noise_mode)
        if self.up and x.dtype == torch.float16:
            return upfilter_bias_lrelu(x, noise, self.bias, clamp=self.conv_clamp)
        if noise is not None:
            x = x + noise.to(x.dtype)
        return bias_lrelu(x, self.bias, clamp=self.conv_clamp, inplace=True)

    def convolve(self, x, w, noise_mode="const"):
        """The modulated convolution and the noise still to add (None for none); in float16 an
        up-convolution leaves its filter to the pass that adds the noise, bias and activation."""
        x = modulated_conv2d(
            x,
            self.weight,
            self.affine(w),
            up=self.up,
            resample_filter=self.resample_filter,
            up_filter=not (self.up and x.dtype == torch.float16),
        )
        noise = None
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        elif self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device)
            noise = noise * self.noise_strength
        return x, noise

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"resolution={self.resolution}, up={self.up}, use_noise={self.use_noise}, "
            f"conv_clamp={self.conv_clamp}"
        )


class ToRGBLayer(nn.Module):
    """1x1 modulated convolution without demodulation (styles scaled by 1/√in) + bias (+ clamp).

    Args: in_channels, out_channels (image channels), w_dim; conv_clamp (None for none).
    """

    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_linear(x, self.bias, clamp=self.conv_clamp, inplace=True)

    def after(self, layer: SynthesisLayer, x, w_layer, w, noise_mode="const", keep=True):
        """(layer(x, w_layer), self(that, w).float()) in float16 inference, with the layer's bias +
        activation and this 1×1 convolution in one pass (`bias_lrelu_to_rgb`); the layer's output
        is None unless `keep`. The layer must not up-sample."""
        x, noise = layer.convolve(x, w_layer, noise_mode)
        weight = self.weight[None, :, :, 0, 0] * (self.affine(w) * self.weight_gain)[:, None, :]
        return bias_lrelu_to_rgb(
            x, noise, layer.bias, SQRT2, layer.conv_clamp, weight, self.bias, self.conv_clamp, keep
        )

    def extra_repr(self):
        out_channels, in_channels = self.weight.shape[:2]
        return f"in_channels={in_channels}, out_channels={out_channels}, conv_clamp={self.conv_clamp}"


class SynthesisBlock(nn.Module):
    """One resolution of the "skip" generator: [const |] conv0 (2× up unless `up=False`), conv1, ToRGB.

    img_out = upsample2x(img_in) + toRGB(x) (without the upsampling when `up=False`). A block takes
    num_conv + 1 consecutive ws. Activations are channels-last on a CPU (oneDNN's convolutions, the
    transposed one above all, run 1.3–2.5x faster so) and in the fast mode, which runs the block in
    float16; the skip image is always accumulated in float32.

    Args: in_channels (0 for the first block, which starts from a learned constant), out_channels,
    w_dim; resolution (of the output); img_channels (of the skip image); conv_clamp; up.
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, conv_clamp=None, up=True):
        super().__init__()
        self.in_channels, self.up = in_channels, up
        self.register_buffer(
            "resample_filter", fir_filter_2d()
        )  # of the official state dict; upsample_2x has it built in
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=up, conv_clamp=conv_clamp
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x, img, ws, noise_mode="const", fast=False, features=True):
        """x, img → (x, img) of this resolution; with features=False the returned x is None when
        `fast` (the last block's features are not used, and the fast mode then never writes them)."""
        w_iter = iter(ws.unbind(dim=1))
        dtype = torch.float16 if fast else torch.float32
        layout = torch.channels_last if fast or ws.device.type == "cpu" else torch.contiguous_format
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1]).to(memory_format=layout)
        else:
            x = self.conv0(x.to(dtype, memory_format=layout), next(w_iter), noise_mode)
        w_conv, w_rgb = next(w_iter), next(w_iter)
        if fast:
            x, y = self.torgb.after(self.conv1, x, w_conv, w_rgb, noise_mode, keep=features)
        else:
            x = self.conv1(x, w_conv, noise_mode)
            y = self.torgb(x, w_rgb).to(torch.float32)
        if img is not None and self.up:
            img = upsample_2x(img)
        img = y if img is None else img + y
        return x, img

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, out_channels={self.conv1.out_channels}, "
            f"resolution={self.conv1.resolution}, up={self.up}, num_conv={self.num_conv}"
        )


class SynthesisNetwork(nn.Module):
    """ws [N,num_ws,w_dim] → image [N,img_channels,R,R]: blocks 4, 8, …, R, each min(base/res, max) wide.

    Args: w_dim; img_resolution (R, a power of two); img_channels; channel_base and channel_max (the
    widths above); conv_clamp.
    """

    def __init__(
        self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, conv_clamp=None
    ):
        super().__init__()
        log2 = int(math.log2(img_resolution))
        if img_resolution < 4 or 2**log2 != img_resolution:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(
                channels[res // 2] if res > 4 else 0,
                channels[res],
                w_dim,
                res,
                img_channels,
                conv_clamp=conv_clamp,
            )
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last ToRGB

    def forward(self, ws, noise_mode="const", fast=False):
        """`fast`: run the blocks in float16, channels-last (see SynthesisBlock)."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # Block k's ToRGB shares its w with block k+1's first conv.
            block_ws = ws.narrow(1, w_idx, block.num_conv + 1)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, noise_mode, fast, features=res != self.img_resolution)
        return img

    def extra_repr(self):
        return (
            f"w_dim={self.w_dim}, img_resolution={self.img_resolution}, "
            f"img_channels={self.img_channels}, num_ws={self.num_ws}"
        )


class StyleGAN2Backbone(nn.Module):
    """The StyleGAN2 generator: `mapping` (z, c → ws) and `synthesis` (ws → image).

    Args: z_dim, c_dim, w_dim, img_resolution, img_channels; mapping_kwargs (for MappingNetwork);
    the other keywords go to SynthesisNetwork.
    """

    def __init__(
        self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs=None, **synthesis_kwargs
    ):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, **(mapping_kwargs or {}))
