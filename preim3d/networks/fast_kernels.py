"""The fast mode's GPU kernels, in Triton: the renderer's hot loop and one-pass element-wise steps.

* `sample_and_decode`: for every sample point (origin + depth · direction) one kernel reads the three
  planes bilinearly (as `grid_sample` with zero padding and align_corners=False), averages them, runs
  the decoder (FC → softplus → FC) on tensor cores and writes the sample's colour features and raw
  density. Unfused, PyTorch writes and re-reads the 3 × 32 plane features and the 64 hidden values
  of every sample (about 0.3 KB for each of the ~1.6 M samples of a 512² frame); here they stay in
  registers. Plane coordinates, interpolation weights, the plane mean and the activations are
  float32; the planes, the decoder's matrix inputs and the colour output are float16; the density
  is float32.
* `weighted_sum`: the composited colour Σ v·c of every ray in one pass over the colours.
* `bias_lrelu`: bias + leaky ReLU + gain + clamp of the float16 networks in one pass.
* `upfilter_bias_lrelu`: the rest of a 2× up-convolution after its stride-2 transposed
  convolution: EG3D's FIR filter, noise, bias, leaky ReLU, gain and clamp in one pass.
* `bias_lrelu_to_rgb`: a block's last bias + activation and its ToRGB 1×1 convolution in one pass.
* `ray_weights`, `composite_weights`, `merged_composite_weights`: the compositing along each ray
  (the last one also orders the coarse and importance samples by depth).
* `inverse_cdf`: the importance samples of every ray from its coarse weights.

These are the raw launchers. The networks call them through `fused.FusedKernel` objects (defined
beside the PyTorch code each replaces), which choose between Triton and PyTorch, check each kernel
against PyTorch once per device and fall back to PyTorch on any failure. Triton ships with
PyTorch's CUDA builds and compiles the kernels on first use: nothing is built at install time.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds come without Triton
    triton = None

# Sample points per program. 64 is the fastest on an H100, and Triton 3.6 miscompiles the second
# matrix product for 128 and more there (wrong colours), which the self-check in fused.py catches.
BLOCK = 64
# Rays per program of the merged compositing (each sorts its samples, padded to a power of two),
# and its warps.
MERGED_RAYS, MERGED_WARPS = 8, 4
# Output rows, pixels and channels per program of the up-sampling filter, and its warps (with 8,
# half the registers per thread of 4 and so twice the programs per multiprocessor).
UPFILTER_ROWS, UPFILTER_PIXELS, UPFILTER_CHANNELS, UPFILTER_WARPS = 8, 32, 64, 8
# Pixels and warps per program of the fused activation + ToRGB pass (4 warps spill registers at
# 512 channels and 96 image channels, the backbone's last block).
TO_RGB_PIXELS, TO_RGB_WARPS = 64, 8
# Rays per program of the importance sampling.
INVERSE_CDF_RAYS = 8


def sample_and_decode(planes, decoder, origins, directions, depths, box_warp):
    """colors [N, F, M, S] float16 and densities [N, M, S] float32 of the points
    origins + depths · directions (origins, directions [N, M, 3]; depths [N, M, S, 1]).

    planes [N or 1, 3, C, H, W] float16; a batch of one serves every view. `decoder` is the
    OSGDecoder whose two layers the kernel runs (its widths must be powers of two, at least 16).
    """
    n, m, s, _ = depths.shape
    if planes.stride(0) == 0:  # planes of one latent expanded over the views
        planes = planes[:1]
    n_planes, _, c, h, w = planes.shape
    # Channels-last planes: the C features of one texel are one contiguous 2·C-byte read.
    texels = planes.permute(0, 1, 3, 4, 2).contiguous()
    first, last = decoder.net[0], decoder.net[2]
    w1 = (first.weight * first.weight_gain).t().to(torch.float16).contiguous()  # [C, hidden]
    b1 = (first.bias * first.bias_gain).float().contiguous()
    w2 = last.weight * last.weight_gain
    b2 = (last.bias * last.bias_gain).float()
    w_sigma, b_sigma = w2[0].float().contiguous(), b2[0:1].contiguous()
    w_rgb, b_rgb = w2[1:].t().to(torch.float16).contiguous(), b2[1:].contiguous()  # [hidden, F], [F]
    hidden, features = w1.shape[1], w_rgb.shape[1]
    colors = torch.empty((n, features, m, s), dtype=torch.float16, device=planes.device)
    densities = torch.empty((n, m, s), dtype=torch.float32, device=planes.device)
    count = m * s
    grid = ((count + BLOCK - 1) // BLOCK, n)
    _sample_decode[grid](
        texels,
        0 if n_planes == 1 else texels.stride(0),
        origins.float().contiguous(),
        directions.float().contiguous(),
        depths.float().contiguous(),
        w1,
        b1,
        w_rgb,
        b_rgb,
        w_sigma,
        b_sigma,
        colors,
        densities,
        count,
        s,
        h,
        w,
        2.0 / box_warp,
        C=c,
        HIDDEN=hidden,
        FEATURES=features,
        BLOCK=BLOCK,
    )
    return colors, densities


def weighted_sum(colors: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ_s v[n,m,s] colors[n,:,m,s] → [N,F,M] float32, for colors [N,F,M,S] float16 and v [N,M,S]:
    one pass over the colours, without the [N,F,M,S] product PyTorch would write first."""
    n, f, m, s = colors.shape
    colors, v = colors.contiguous(), v.float().contiguous()
    out = torch.empty((n, f, m), dtype=torch.float32, device=colors.device)
    rays = 32
    _weighted_sum[((m + rays - 1) // rays, n)](
        colors, v, out, m, s, F=f, RAYS=rays, SAMPLES=triton.next_power_of_2(s)
    )
    return out


def bias_lrelu(
    x: torch.Tensor, bias: torch.Tensor, gain: float, clamp: float | None, out: torch.Tensor
) -> torch.Tensor:
    """out ← clamp(lrelu(x + b, 0.2) · gain, ±clamp) in one pass, the bias over dim 1; x float16
    [N,C,H,W], contiguous or channels-last, and out of x's shape and layout (x itself: in place).
    PyTorch needs four passes (add, leaky_relu, mul, clamp) over what is, in the super-resolution,
    a gigabyte of activations per batch."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last)
    count = x.numel()
    _bias_lrelu[(triton.cdiv(count, 1024),)](
        x,
        out,
        bias.float().contiguous(),
        count,
        x.shape[1],
        x.shape[2] * x.shape[3],
        gain,
        float("inf") if clamp is None else clamp,
        CHANNELS_LAST=channels_last,
        BLOCK=1024,
    )
    return out


def upfilter_bias_lrelu(
    t: torch.Tensor, noise: torch.Tensor | None, bias: torch.Tensor, gain: float, clamp: float | None
) -> torch.Tensor:
    """[N,C,2H,2W] float16 channels-last: clamp(lrelu(filter(t) + noise + b, 0.2) · gain, ±clamp)
    for t [N,C,2H+1,2W+1] float16 channels-last, where filter is EG3D's 4×4 FIR filter
    outer(k, k), k = (1, 3, 3, 1)/4 (gain 4), with one pixel of zero padding; noise None or
    [2H, 2W] or [N or 1, 1, 2H, 2W]. PyTorch needs a depthwise convolution and five element-wise passes."""
    n, c, rows, cols = t.shape
    out = torch.empty(
        (n, c, rows - 1, cols - 1), dtype=torch.float16, device=t.device, memory_format=torch.channels_last
    )
    if noise is None:
        noise_arg, noise_batch_stride = out, 0  # unused
    else:
        noise = noise.float().reshape(-1, rows - 1, cols - 1).contiguous()
        noise_arg, noise_batch_stride = noise, 0 if noise.shape[0] == 1 else noise.stride(0)
    pixels, channels = UPFILTER_PIXELS, min(triton.next_power_of_2(c), UPFILTER_CHANNELS)
    grid = (
        n * triton.cdiv(rows - 1, UPFILTER_ROWS) * triton.cdiv(cols - 1, pixels),
        triton.cdiv(c, channels),
    )
    _upfilter_bias_lrelu[grid](
        t,
        out,
        bias.float().contiguous(),
        noise_arg,
        noise_batch_stride,
        rows,
        cols,
        c,
        gain,
        float("inf") if clamp is None else clamp,
        HAS_NOISE=noise is not None,
        ROWS=UPFILTER_ROWS,
        PIXELS=pixels,
        CHANNELS=channels,
        num_warps=UPFILTER_WARPS,
    )
    return out


def bias_lrelu_to_rgb(x, noise, bias, gain, clamp, rgb_weight, rgb_bias, rgb_clamp, keep):
    """ops.bias_lrelu_to_rgb in one pass: y = clamp(lrelu(x + noise + b, 0.2) · gain, ±clamp) of x
    float16 [N,C,H,W] channels-last (noise None, [H,W] or [N or 1,1,H,W]), written (float16,
    channels-last) only if `keep`, and rgb = clamp(Σ_c rgb_weight[n,o,c] y_c + rgb_bias_o,
    ±rgb_clamp) float32 [N,O,H,W] (rgb_weight [N or 1, O, C]) from the same registers: the
    1×1 convolution needs no second read of the activations."""
    n, c, h, w = x.shape
    out_channels = rgb_weight.shape[1]
    y = torch.empty_like(x) if keep else None
    rgb = torch.empty((n, out_channels, h, w), dtype=torch.float32, device=x.device)
    padded = max(16, triton.next_power_of_2(out_channels))  # the narrowest matrix product is 16 wide
    weight = torch.zeros((rgb_weight.shape[0], c, padded), dtype=torch.float16, device=x.device)
    weight[:, :, :out_channels] = rgb_weight.transpose(1, 2)
    if noise is None:
        noise_arg, noise_batch_stride = rgb, 0  # unused
    else:
        noise = noise.float().reshape(-1, h * w).contiguous()
        noise_arg, noise_batch_stride = noise, 0 if noise.shape[0] == 1 else noise.stride(0)
    pixels = TO_RGB_PIXELS
    _bias_lrelu_to_rgb[(n * triton.cdiv(h * w, pixels),)](
        x,
        y if keep else x,
        noise_arg,
        noise_batch_stride,
        bias.float().contiguous(),
        weight,
        0 if weight.shape[0] == 1 else weight.stride(0),
        rgb_bias.float().contiguous(),
        rgb,
        h * w,
        out_channels,
        gain,
        float("inf") if clamp is None else clamp,
        float("inf") if rgb_clamp is None else rgb_clamp,
        HAS_NOISE=noise is not None,
        KEEP=keep,
        C=c,
        PIXELS=pixels,
        CHANNELS=64,
        OUT=padded,
        num_warps=TO_RGB_WARPS,
    )
    return y, rgb


def inverse_cdf(depths: torch.Tensor, weights: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
    """renderer.inverse_cdf in one pass: depths [R, U] float32 at quantiles u [R, U] (rows may be
    one row expanded) of the smoothed coarse weights [R, S−1] over the bins between the coarse
    depths' midpoints (depths [R, S]); each quantile's bin is found by a binary search."""
    rows, samples = depths.shape
    count = u.shape[1]
    if u.stride(1) != 1:
        u = u.contiguous()
    out = torch.empty((rows, count), dtype=torch.float32, device=depths.device)
    _inverse_cdf[(triton.cdiv(rows, INVERSE_CDF_RAYS),)](
        depths.float().contiguous(),
        weights.float().contiguous(),
        u.float(),
        u.stride(0),
        out,
        rows,
        samples,
        count,
        eps,
        RAYS=INVERSE_CDF_RAYS,
        # at least 16: Triton 3.6 fails to compile the gathers over 4 bins for the H200 (sm_90)
        BINS=max(16, triton.next_power_of_2(samples)),
        QUANTILES=triton.next_power_of_2(count),
        STEPS=(samples - 1).bit_length(),  # halvings of the samples − 1 possible counts
    )
    return out


def ray_weights(densities: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """renderer.ray_weights in one pass: interval weights [N,M,S−1] float32 of samples sorted by
    depth (densities, depths [N,M,S]); the running sum of the log transmittances is a scan here."""
    weights = torch.empty(
        (*depths.shape[:-1], depths.shape[-1] - 1), dtype=torch.float32, device=depths.device
    )
    _composite(densities, depths, weights, weights, weights, weights, ONLY_WEIGHTS=True, **_ray_grid(depths))
    return weights


def composite_weights(densities: torch.Tensor, depths: torch.Tensor):
    """renderer.composite_weights in one pass: per-sample colour weights [N,M,S], opacity [N,M] and
    depth [N,M] (NaN where the opacity is 0) of samples sorted by depth (densities, depths [N,M,S])."""
    v = torch.empty(depths.shape, dtype=torch.float32, device=depths.device)
    opacity = torch.empty(depths.shape[:-1], dtype=torch.float32, device=depths.device)
    depth = torch.empty_like(opacity)
    _composite(densities, depths, v, v, opacity, depth, ONLY_WEIGHTS=False, **_ray_grid(depths))
    return v, opacity, depth


def merged_composite_weights(densities, depths, densities_f, depths_f):
    """renderer.merged_composite_weights in one pass: each ray's two sample sets (densities, depths
    [N,M,S1] and [N,M,S2], any order) ordered by depth inside the kernel (a bitonic sort of
    (depth, sample) keys, so equal depths keep the order of the concatenated sets, as a stable sort
    does), composited, and the colour weights written back to the samples' own places: [N,M,S1],
    [N,M,S2], opacity [N,M] and depth [N,M] (NaN where the opacity is 0), all float32."""
    shape, first, second = depths.shape[:-1], depths.shape[-1], depths_f.shape[-1]
    v = torch.empty((*shape, first), dtype=torch.float32, device=depths.device)
    v_f = torch.empty((*shape, second), dtype=torch.float32, device=depths.device)
    opacity = torch.empty(shape, dtype=torch.float32, device=depths.device)
    depth = torch.empty_like(opacity)
    rays = opacity.numel()
    _merged_composite[(triton.cdiv(rays, MERGED_RAYS),)](
        densities.float().contiguous(),
        depths.float().contiguous(),
        densities_f.float().contiguous(),
        depths_f.float().contiguous(),
        v,
        v_f,
        opacity,
        depth,
        rays,
        first,
        second,
        RAYS=MERGED_RAYS,
        SAMPLES=triton.next_power_of_2(first + second),
        num_warps=MERGED_WARPS,
    )
    return v, v_f, opacity, depth


def _ray_grid(depths: torch.Tensor) -> dict:
    samples = depths.shape[-1]
    return {"rays": depths.numel() // samples, "samples": samples}


def _composite(densities, depths, weights, v, opacity, depth, ONLY_WEIGHTS, rays, samples):
    rays_per_program = 8
    _composite_kernel[(triton.cdiv(rays, rays_per_program),)](
        densities.float().contiguous(),
        depths.float().contiguous(),
        weights,
        v,
        opacity,
        depth,
        rays,
        samples,
        ONLY_WEIGHTS=ONLY_WEIGHTS,
        RAYS=rays_per_program,
        SAMPLES=triton.next_power_of_2(samples),
    )


if triton is not None:

    @triton.jit
    def _filter_row(
        row_ptr, r, rows, offsets, j, cols, c_ok, channels, PIXELS: tl.constexpr, CHANNELS: tl.constexpr
    ):
        """[PIXELS, CHANNELS] float32: the horizontal pass (1, 3, 3, 1)/4 of input row r (zero outside)."""
        acc = tl.zeros((PIXELS, CHANNELS), dtype=tl.float32)
        if (r >= 0) & (r < rows):
            for b in tl.static_range(4):
                s = j + (b - 1)
                ok = (s >= 0) & (s < cols)
                v = tl.load(
                    row_ptr + offsets + (b - 1) * channels, mask=ok[:, None] & c_ok[None, :], other=0.0
                )
                acc += v.to(tl.float32) * (0.25 if b == 0 or b == 3 else 0.75)
        return acc

    @triton.jit
    def _filter_out(
        acc, out_ptr, noise_ptr, i, j, cols, c, c_ok, bias, gain, clamp, channels, HAS_NOISE: tl.constexpr
    ):
        """Noise, bias, leaky ReLU, gain and clamp of output row i, stored."""
        j_ok = j < cols - 1
        if HAS_NOISE:
            acc += tl.load(noise_ptr + i * (cols - 1) + j, mask=j_ok, other=0.0)[:, None]
        y = acc + bias[None, :]
        y = tl.where(y >= 0, y, y * 0.2) * gain
        y = tl.minimum(tl.maximum(y, -clamp), clamp)
        target = out_ptr + i * (cols - 1) * channels + j[:, None] * channels + c[None, :]
        tl.store(target, y.to(tl.float16), mask=j_ok[:, None] & c_ok[None, :])

    @triton.jit
    def _upfilter_bias_lrelu(
        t_ptr,
        out_ptr,
        bias_ptr,
        noise_ptr,
        noise_batch_stride,
        rows,
        cols,
        channels,
        gain,
        clamp,
        HAS_NOISE: tl.constexpr,
        ROWS: tl.constexpr,
        PIXELS: tl.constexpr,
        CHANNELS: tl.constexpr,
    ):
        """One program: output rows i … i+ROWS−1, PIXELS pixels × CHANNELS channels (channels-last).
        The filter is separable: each input row's horizontal pass is computed once and kept for the
        four output rows that use it, so a program reads ROWS + 3 input rows."""
        col_blocks = tl.cdiv(cols - 1, PIXELS)
        row_blocks = tl.cdiv(rows - 1, ROWS)
        pid = tl.program_id(0)
        n = pid // (col_blocks * row_blocks)
        i = (pid // col_blocks) % row_blocks * ROWS
        j = (pid % col_blocks) * PIXELS + tl.arange(0, PIXELS)
        c = tl.program_id(1) * CHANNELS + tl.arange(0, CHANNELS)
        c_ok = c < channels
        offsets = j[:, None] * channels + c[None, :]  # within a row, int32
        t_image = t_ptr + n.to(tl.int64) * rows * cols * channels
        row = cols * channels
        bias = tl.load(bias_ptr + c, mask=c_ok, other=0.0)
        out_image = out_ptr + n.to(tl.int64) * (rows - 1) * (cols - 1) * channels
        noise_image = noise_ptr + n.to(tl.int64) * noise_batch_stride
        # Output row r uses input rows r−1 … r+2.
        h0 = _filter_row(
            t_image + (i - 1) * row, i - 1, rows, offsets, j, cols, c_ok, channels, PIXELS, CHANNELS
        )
        h1 = _filter_row(t_image + i * row, i, rows, offsets, j, cols, c_ok, channels, PIXELS, CHANNELS)
        h2 = _filter_row(
            t_image + (i + 1) * row, i + 1, rows, offsets, j, cols, c_ok, channels, PIXELS, CHANNELS
        )
        for r in tl.static_range(ROWS):
            if i + r < rows - 1:
                h3 = _filter_row(
                    t_image + (i + r + 2) * row,
                    i + r + 2,
                    rows,
                    offsets,
                    j,
                    cols,
                    c_ok,
                    channels,
                    PIXELS,
                    CHANNELS,
                )
                acc = 0.25 * h0 + 0.75 * h1 + 0.75 * h2 + 0.25 * h3
                _filter_out(
                    acc,
                    out_image,
                    noise_image,
                    i + r,
                    j,
                    cols,
                    c,
                    c_ok,
                    bias,
                    gain,
                    clamp,
                    channels,
                    HAS_NOISE,
                )
                h0, h1, h2 = h1, h2, h3

    @triton.jit
    def _interval(densities_ptr, depths_ptr, at, ok):
        """alpha and log(1 − alpha + 1e-10) of the intervals starting at `at` (MipRayMarcher2)."""
        d0 = tl.load(depths_ptr + at, mask=ok, other=0.0)
        d1 = tl.load(depths_ptr + at + 1, mask=ok, other=0.0)
        x = (
            tl.load(densities_ptr + at, mask=ok, other=0.0)
            + tl.load(densities_ptr + at + 1, mask=ok, other=0.0)
        ) * 0.5 - 1
        sigma = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))  # softplus
        alpha = tl.where(ok, 1 - tl.exp(-sigma * (d1 - d0)), 0.0)
        return alpha, tl.where(ok, tl.log(1 - alpha + 1e-10), 0.0), d0, d1

    @triton.jit
    def _composite_kernel(
        densities_ptr,
        depths_ptr,
        weights_ptr,
        v_ptr,
        opacity_ptr,
        depth_ptr,
        rays,
        samples,
        ONLY_WEIGHTS: tl.constexpr,
        RAYS: tl.constexpr,
        SAMPLES: tl.constexpr,
    ):
        """Per ray: interval weights w_k = alpha_k Π_{j<k}(1 − alpha_j + 1e-10) (ONLY_WEIGHTS), or
        the sample weights v_k = (w_k + w_{k−1})/2, Σ w and Σ w·(d_k + d_{k+1})/2 / Σ w."""
        ray = tl.program_id(0) * RAYS + tl.arange(0, RAYS)
        k = tl.arange(0, SAMPLES)
        ray_ok = ray < rays
        row = ray[:, None].to(tl.int64) * samples
        interval_ok = ray_ok[:, None] & (k < samples - 1)[None, :]
        alpha, log_t, d0, d1 = _interval(densities_ptr, depths_ptr, row + k[None, :], interval_ok)
        w = alpha * tl.exp(tl.cumsum(log_t, axis=1) - log_t)
        if ONLY_WEIGHTS:
            tl.store(
                weights_ptr + ray[:, None].to(tl.int64) * (samples - 1) + k[None, :], w, mask=interval_ok
            )
        else:
            # w_{k−1}, from the interval before each sample (none before the first).
            prev_ok = ray_ok[:, None] & (k >= 1)[None, :] & (k < samples)[None, :]
            alpha_p, log_p, _, _ = _interval(densities_ptr, depths_ptr, row + k[None, :] - 1, prev_ok)
            w_prev = alpha_p * tl.exp(tl.cumsum(log_p, axis=1) - log_p)
            sample_ok = ray_ok[:, None] & (k < samples)[None, :]
            tl.store(v_ptr + row + k[None, :], (w + w_prev) * 0.5, mask=sample_ok)
            total = tl.sum(w, axis=1)
            tl.store(opacity_ptr + ray, total, mask=ray_ok)
            tl.store(depth_ptr + ray, tl.sum(w * (d0 + d1) * 0.5, axis=1) / total, mask=ray_ok)

    @triton.jit
    def _float_order(bits):
        """float32 bits (as int32) ↔ int32 in the same order as the floats (an involution)."""
        return bits ^ ((bits >> 31) & 0x7FFFFFFF)

    @triton.jit
    def _merged_composite(
        densities_ptr,
        depths_ptr,
        densities_f_ptr,
        depths_f_ptr,
        v_ptr,
        v_f_ptr,
        opacity_ptr,
        depth_ptr,
        rays,
        first,
        second,
        RAYS: tl.constexpr,
        SAMPLES: tl.constexpr,
    ):
        """Per ray: samples 0 … first−1 of the first set and first … first+second−1 of the second,
        sorted by (depth, sample) as int64 keys, then the compositing of `_composite_kernel` along
        the sorted places k, each sample's weight stored at its own place."""
        ray = tl.program_id(0) * RAYS + tl.arange(0, RAYS)
        ray_ok = ray < rays
        k = tl.arange(0, SAMPLES)[None, :]
        row, row_f = ray[:, None].to(tl.int64) * first, ray[:, None].to(tl.int64) * second
        in_first = ray_ok[:, None] & (k < first)
        in_second = ray_ok[:, None] & (k >= first) & (k < first + second)
        depths = tl.where(
            k < first,
            tl.load(depths_ptr + row + k, mask=in_first, other=0.0),
            # Padding sorts last, after every real sample.
            tl.load(depths_f_ptr + row_f + k - first, mask=in_second, other=float("inf")),
        )
        keys = (_float_order(depths.to(tl.int32, bitcast=True)).to(tl.int64) << 32) | k.to(tl.int64)
        keys = tl.sort(keys, dim=1)
        sample = (keys & 0xFFFF).to(tl.int32)  # the sample at sorted place k
        d0 = _float_order((keys >> 32).to(tl.int32)).to(tl.float32, bitcast=True)
        sample_first = ray_ok[:, None] & (sample < first)
        sample_second = ray_ok[:, None] & (sample >= first) & (sample < first + second)
        sigma0 = tl.where(
            sample < first,
            tl.load(densities_ptr + row + sample, mask=sample_first, other=0.0),
            tl.load(densities_f_ptr + row_f + sample - first, mask=sample_second, other=0.0),
        )
        # The next sorted place's depth and density (the last place's own: its interval is masked).
        after = tl.broadcast_to(tl.minimum(k + 1, SAMPLES - 1), (RAYS, SAMPLES))
        d1 = tl.gather(d0, after, axis=1)
        sigma1 = tl.gather(sigma0, after, axis=1)
        interval_ok = ray_ok[:, None] & (k < first + second - 1)
        x = (sigma0 + sigma1) * 0.5 - 1
        softplus = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
        alpha = tl.where(interval_ok, 1 - tl.exp(-softplus * (d1 - d0)), 0.0)
        log_t = tl.where(interval_ok, tl.log(1 - alpha + 1e-10), 0.0)
        w = alpha * tl.exp(tl.cumsum(log_t, axis=1) - log_t)
        # w_{k−1}, of the interval before each place (none before the first).
        w_prev = tl.where(
            k >= 1, tl.gather(w, tl.broadcast_to(tl.maximum(k - 1, 0), (RAYS, SAMPLES)), axis=1), 0.0
        )
        v = (w + w_prev) * 0.5
        tl.store(v_ptr + row + sample, v, mask=sample_first)
        tl.store(v_f_ptr + row_f + sample - first, v, mask=sample_second)
        total = tl.sum(w, axis=1)
        tl.store(opacity_ptr + ray, total, mask=ray_ok)
        # Padding's infinite depths are left out of the mean depth (w is 0 there, w·∞ is not).
        middle = tl.where(interval_ok, w * (d0 + d1) * 0.5, 0.0)
        tl.store(depth_ptr + ray, tl.sum(middle, axis=1) / total, mask=ray_ok)

    @triton.jit
    def _bias_lrelu(
        x_ptr,
        out_ptr,
        bias_ptr,
        count,
        channels,
        pixels,
        gain,
        clamp,
        CHANNELS_LAST: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        ok = i < count
        channel = i % channels if CHANNELS_LAST else (i // pixels) % channels
        y = tl.load(x_ptr + i, mask=ok, other=0.0).to(tl.float32) + tl.load(
            bias_ptr + channel, mask=ok, other=0.0
        )
        y = tl.where(y >= 0, y, y * 0.2) * gain
        tl.store(out_ptr + i, tl.minimum(tl.maximum(y, -clamp), clamp).to(tl.float16), mask=ok)

    @triton.jit
    def _bias_lrelu_to_rgb(
        x_ptr,
        y_ptr,
        noise_ptr,
        noise_batch_stride,
        bias_ptr,
        w_ptr,
        w_batch_stride,
        rgb_bias_ptr,
        rgb_ptr,
        pixels,
        out_channels,
        gain,
        clamp,
        rgb_clamp,
        HAS_NOISE: tl.constexpr,
        KEEP: tl.constexpr,
        C: tl.constexpr,
        PIXELS: tl.constexpr,
        CHANNELS: tl.constexpr,
        OUT: tl.constexpr,
    ):
        """One program: PIXELS pixels of one image, all C channels in blocks of CHANNELS (channels-last)."""
        blocks = tl.cdiv(pixels, PIXELS)
        n = (tl.program_id(0) // blocks).to(tl.int64)
        p = (tl.program_id(0) % blocks) * PIXELS + tl.arange(0, PIXELS)
        p_ok = p < pixels
        o = tl.arange(0, OUT)
        image = n * pixels * C
        noise = 0.0
        if HAS_NOISE:
            noise = tl.load(noise_ptr + n * noise_batch_stride + p, mask=p_ok, other=0.0)[:, None]
        acc = tl.zeros((PIXELS, OUT), dtype=tl.float32)
        for c0 in tl.static_range(0, C, CHANNELS):
            c = c0 + tl.arange(0, CHANNELS)
            c_ok = c < C
            ok = p_ok[:, None] & c_ok[None, :]
            at = image + p[:, None] * C + c[None, :]
            y = tl.load(x_ptr + at, mask=ok, other=0.0).to(tl.float32) + noise
            y += tl.load(bias_ptr + c, mask=c_ok, other=0.0)[None, :]
            y = tl.where(y >= 0, y, y * 0.2) * gain
            y = tl.minimum(tl.maximum(y, -clamp), clamp).to(tl.float16)
            if KEEP:
                tl.store(y_ptr + at, y, mask=ok)
            w = tl.load(
                w_ptr + n * w_batch_stride + c[:, None] * OUT + o[None, :], mask=c_ok[:, None], other=0.0
            )
            acc = tl.dot(y, w, acc)
        rgb = acc + tl.load(rgb_bias_ptr + o, mask=o < out_channels, other=0.0)[None, :]
        rgb = tl.minimum(tl.maximum(rgb, -rgb_clamp), rgb_clamp)
        target = rgb_ptr + (n * out_channels + o[None, :]) * pixels + p[:, None]
        tl.store(target, rgb, mask=p_ok[:, None] & (o < out_channels)[None, :])

    @triton.jit
    def _inverse_cdf(
        depths_ptr,
        weights_ptr,
        u_ptr,
        u_row_stride,
        out_ptr,
        rows,
        samples,
        count,
        eps,
        RAYS: tl.constexpr,
        BINS: tl.constexpr,
        QUANTILES: tl.constexpr,
        STEPS: tl.constexpr,
    ):
        """Per ray: pdf_j ∝ (max(w_j, w_{j+1}) + max(w_{j+1}, w_{j+2}))/2 + 0.01 + eps over bins
        j < S−3 (the max- and average-pooled interior weights), cdf_j = Σ_{i<j} pdf_i for j ≤ S−3,
        then torch.searchsorted(cdf, u, right=True) and the linear inverse within the bin."""
        ray = tl.program_id(0) * RAYS + tl.arange(0, RAYS)
        row = ray[:, None].to(tl.int64)
        j = tl.arange(0, BINS)[None, :]
        last = samples - 3  # bins of the pdf; cdf has last + 1 edges
        pdf_ok = (ray < rows)[:, None] & (j < last)
        w_at = weights_ptr + row * (samples - 1) + j
        w0 = tl.load(w_at, mask=pdf_ok, other=0.0)
        w1 = tl.load(w_at + 1, mask=pdf_ok, other=0.0)
        w2 = tl.load(w_at + 2, mask=pdf_ok, other=0.0)
        pdf = tl.where(pdf_ok, (tl.maximum(w0, w1) + tl.maximum(w1, w2)) * 0.5 + 0.01 + eps, 0.0)
        pdf = pdf / tl.sum(pdf, axis=1)[:, None]
        cdf = tl.cumsum(pdf, axis=1) - pdf
        bin_ok = (ray < rows)[:, None] & (j < samples - 1)
        z_at = depths_ptr + row * samples + j
        bins = (tl.load(z_at, mask=bin_ok, other=0.0) + tl.load(z_at + 1, mask=bin_ok, other=0.0)) * 0.5
        q = tl.arange(0, QUANTILES)[None, :]
        q_ok = (ray < rows)[:, None] & (q < count)
        u = tl.load(u_ptr + row * u_row_stride + q, mask=q_ok, other=0.0)
        # Binary search for the number of edges cdf_0 … cdf_last that are ≤ u, in [lo, hi].
        lo = tl.zeros((RAYS, QUANTILES), dtype=tl.int32)
        hi = tl.full((RAYS, QUANTILES), 0, tl.int32) + last + 1
        for _ in tl.static_range(STEPS):
            mid = (lo + hi) // 2
            at_or_below = tl.gather(cdf, tl.minimum(mid, last), axis=1) <= u
            searching = lo < hi
            lo, hi = (
                tl.where(searching & at_or_below, mid + 1, lo),
                tl.where(searching & ~at_or_below, mid, hi),
            )
        below, above = tl.maximum(lo - 1, 0), tl.minimum(lo, last)
        cdf0, cdf1 = tl.gather(cdf, below, axis=1), tl.gather(cdf, above, axis=1)
        bins0, bins1 = tl.gather(bins, below, axis=1), tl.gather(bins, above, axis=1)
        denom = cdf1 - cdf0
        denom = tl.where(denom < eps, 1.0, denom)
        tl.store(out_ptr + row * count + q, bins0 + (u - cdf0) / denom * (bins1 - bins0), mask=q_ok)

    @triton.jit
    def _weighted_sum(
        colors_ptr, v_ptr, out_ptr, m, s, F: tl.constexpr, RAYS: tl.constexpr, SAMPLES: tl.constexpr
    ):
        view = tl.program_id(1).to(tl.int64)
        ray = tl.program_id(0) * RAYS + tl.arange(0, RAYS)
        sample = tl.arange(0, SAMPLES)
        ok = (ray < m)[:, None] & (sample < s)[None, :]
        tile = ray[:, None] * s + sample[None, :]  # the same [RAYS, SAMPLES] tile of every channel
        v = tl.load(v_ptr + view * m * s + tile, mask=ok, other=0.0)
        for channel in tl.static_range(F):
            c = tl.load(colors_ptr + (view * F + channel) * m * s + tile, mask=ok, other=0.0)
            tl.store(
                out_ptr + (view * F + channel) * m + ray, tl.sum(c.to(tl.float32) * v, axis=1), mask=ray < m
            )

    @triton.jit
    def _bilinear(plane_ptr, u, v, h, w, inside, channels, C: tl.constexpr, BLOCK: tl.constexpr):
        """[BLOCK, C] float32: grid_sample(bilinear, zeros, align_corners=False) at (u, v) in [-1, 1]."""
        # Clamping keeps far-outside points outside (all four texels stay out of range) while
        # bounding the conversion to integers.
        ix = tl.minimum(tl.maximum(((u + 1) * w - 1) * 0.5, -2.0), w + 1.0)
        iy = tl.minimum(tl.maximum(((v + 1) * h - 1) * 0.5, -2.0), h + 1.0)
        x0f = tl.floor(ix)
        y0f = tl.floor(iy)
        wx1 = ix - x0f
        wy1 = iy - y0f
        x0 = x0f.to(tl.int32)
        y0 = y0f.to(tl.int32)
        acc = tl.zeros((BLOCK, C), dtype=tl.float32)
        for dy in tl.static_range(2):
            for dx in tl.static_range(2):
                xx = x0 + dx
                yy = y0 + dy
                weight = (wx1 * dx + (1 - wx1) * (1 - dx)) * (wy1 * dy + (1 - wy1) * (1 - dy))
                ok = inside & (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
                offset = (yy * w + xx).to(tl.int64) * C
                texel = tl.load(plane_ptr + offset[:, None] + channels[None, :], mask=ok[:, None], other=0.0)
                acc += texel.to(tl.float32) * weight[:, None]
        return acc

    @triton.jit
    def _sample_decode(
        planes_ptr,
        plane_batch_stride,
        origins_ptr,
        directions_ptr,
        depths_ptr,
        w1_ptr,
        b1_ptr,
        w_rgb_ptr,
        b_rgb_ptr,
        w_sigma_ptr,
        b_sigma_ptr,
        colors_ptr,
        densities_ptr,
        count,
        samples_per_ray,
        h,
        w,
        scale,
        C: tl.constexpr,
        HIDDEN: tl.constexpr,
        FEATURES: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        view = tl.program_id(1).to(tl.int64)
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = idx < count
        ray = view * (count // samples_per_ray) + idx // samples_per_ray
        t = tl.load(depths_ptr + view * count + idx, mask=inside, other=0.0)
        x = (
            tl.load(origins_ptr + ray * 3, mask=inside, other=0.0)
            + t * tl.load(directions_ptr + ray * 3, mask=inside, other=0.0)
        ) * scale
        y = (
            tl.load(origins_ptr + ray * 3 + 1, mask=inside, other=0.0)
            + t * tl.load(directions_ptr + ray * 3 + 1, mask=inside, other=0.0)
        ) * scale
        z = (
            tl.load(origins_ptr + ray * 3 + 2, mask=inside, other=0.0)
            + t * tl.load(directions_ptr + ray * 3 + 2, mask=inside, other=0.0)
        ) * scale

        channels = tl.arange(0, C)
        plane_size = h * w * C
        base = planes_ptr + view * plane_batch_stride
        # EG3D's planes are indexed by (x, y), (x, z) and (z, x).
        feat = _bilinear(base, x, y, h, w, inside, channels, C, BLOCK)
        feat += _bilinear(base + plane_size, x, z, h, w, inside, channels, C, BLOCK)
        feat += _bilinear(base + 2 * plane_size, z, x, h, w, inside, channels, C, BLOCK)
        feat = (feat * (1.0 / 3.0)).to(tl.float16)

        hid = tl.arange(0, HIDDEN)
        w1 = tl.load(w1_ptr + channels[:, None] * HIDDEN + hid[None, :])
        hidden = tl.dot(feat, w1) + tl.load(b1_ptr + hid)[None, :]
        hidden = tl.maximum(hidden, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(hidden)))  # softplus

        sigma = tl.sum(hidden * tl.load(w_sigma_ptr + hid)[None, :], axis=1) + tl.load(b_sigma_ptr)
        tl.store(densities_ptr + view * count + idx, sigma, mask=inside)

        out = tl.arange(0, FEATURES)
        w_rgb = tl.load(w_rgb_ptr + hid[:, None] * FEATURES + out[None, :])
        rgb = tl.dot(hidden.to(tl.float16), w_rgb) + tl.load(b_rgb_ptr + out)[None, :]
        rgb = tl.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        target = colors_ptr + view * FEATURES * count + out[None, :].to(tl.int64) * count + idx[:, None]
        tl.store(target, rgb.to(tl.float16), mask=inside[:, None])
