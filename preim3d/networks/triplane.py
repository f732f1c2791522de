"""EG3D's TriPlaneGenerator: camera-conditioned mapping, StyleGAN2 tri-plane backbone, volume
rendering at the neural resolution, and 2-D super-resolution.

Constructor arguments, call signatures and state-dict names match the official class, so official
weights load strictly and code written for the official generator runs unchanged:

    ws = G.mapping(z, c, truncation_psi=1, truncation_cutoff=None)         # [N, 14, 512]
    out = G.synthesis(ws, c, noise_mode='const')                            # dict of images

One documented difference: `synthesis` defaults to noise_mode='const' (the official default is
'random'); PREIM3D always renders with 'const'.

The generator's passes run with cuDNN's deterministic algorithms (`deterministic_convolutions`), so
that the same inputs give the same bits. Left to choose, cuDNN may run a transposed convolution (the
2x up-convolutions of the backbone and the super-resolution) with an algorithm that adds partial
sums atomically, in whatever order the GPU schedules them: a render may then differ in its last bits
from the same render made before, and a few pixels of its uint8 image by one.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings

import torch
from torch import nn

from .decoder import OSGDecoder
from .renderer import ImportanceRenderer, camera_rays
from .stylegan2 import StyleGAN2Backbone
from .superresolution import SuperResolution

PRECISIONS = ("fp32", "fast")

# Official keyword arguments that concern only training, the official CUDA kernels or the runtime
# precision (ours is chosen with set_precision): the value we support (None = any value).
_IGNORED_KWARGS = {
    "fused_modconv_default": None,
    "num_fp16_res": None,
    "architecture": "skip",
    "resample_filter": [1, 3, 3, 1],
}
# The official super-resolution modules accept and ignore these.
_SR_SWALLOWED = ("channel_base", "channel_max", "num_fp16_res", "conv_clamp")


_deterministic_lock = threading.Lock()
_deterministic_users = 0  # threads inside deterministic_convolutions()
_flag_before = False  # torch.backends.cudnn.deterministic before the first of them entered


@contextlib.contextmanager
def deterministic_convolutions():
    """Inside, cuDNN runs only deterministic algorithms (torch.backends.cudnn.deterministic).

    The flag is process-wide: it stays set while any thread is inside (other threads' convolutions
    then run deterministically too, which only costs them speed) and is restored when the last
    leaves. Convolutions that run outside, e.g. backward passes run later by autograd, are not
    affected.
    """
    global _deterministic_users, _flag_before
    with _deterministic_lock:
        if _deterministic_users == 0:
            _flag_before = torch.backends.cudnn.deterministic
            torch.backends.cudnn.deterministic = True
        _deterministic_users += 1
    try:
        yield
    finally:
        with _deterministic_lock:
            _deterministic_users -= 1
            if _deterministic_users == 0:
                torch.backends.cudnn.deterministic = _flag_before


def _without_ignored(kwargs: dict) -> dict:
    """kwargs less the ignorable ones; an error if one asks for something we do not implement."""
    kwargs = dict(kwargs)
    for key, supported in _IGNORED_KWARGS.items():
        value = kwargs.pop(key, supported)
        if isinstance(value, tuple):  # pickles may hold tuples where we write lists
            value = list(value)
        if supported is not None and value != supported:
            raise ValueError(f"{key}={value!r} is not supported (only {supported!r})")
    return kwargs


class TriPlaneGenerator(nn.Module):
    """z, c → 3-D-aware face images (EG3D). See the module docstring for the API.

    `precision`: 'fp32' (default, the reference) or 'fast': on CUDA the convolutional networks
    (tri-plane backbone and super-resolution) run in float16, channels-last, with the official
    mixed-precision safeguards, and the plane sampler and decoder run in float16 (ray weights and
    depths stay float32). Should a float16 network pass overflow, it is recomputed in float32
    (with a warning). Set it with `G.set_precision(...)`. The fused steps run as Triton kernels
    where each passed a check against PyTorch on that device, and as PyTorch otherwise or after
    any failure: `preim3d.set_kernels("auto" | "triton" | "torch")`, or PREIM3D_KERNELS=torch in
    the environment to never use Triton (see `preim3d.networks.fused`).

    Args (the official ones): z_dim, c_dim, w_dim; img_resolution and img_channels of the final
    image; sr_num_fp16_res (the official half-precision setting of the super-resolution, which
    decides its clamping); mapping_kwargs (MappingNetwork); rendering_kwargs (ray range, depth
    samples, box size, super-resolution module, camera defaults, …); sr_kwargs (SuperResolution);
    the other keywords go to the backbone's SynthesisNetwork (channel_base, channel_max, …).
    `config` holds them all; the neural rendering resolution is an attribute set after construction.
    """

    def __init__(
        self,
        z_dim,
        c_dim,
        w_dim,
        img_resolution,
        img_channels,
        sr_num_fp16_res=0,
        mapping_kwargs=None,
        rendering_kwargs=None,
        sr_kwargs=None,
        **synthesis_kwargs,
    ):
        super().__init__()
        rendering_kwargs = dict(rendering_kwargs or {})
        # The constructor arguments, as `from_config` and bundles take them.
        self.config = copy.deepcopy(
            dict(
                z_dim=z_dim,
                c_dim=c_dim,
                w_dim=w_dim,
                img_resolution=img_resolution,
                img_channels=img_channels,
                sr_num_fp16_res=sr_num_fp16_res,
                mapping_kwargs=dict(mapping_kwargs or {}),
                rendering_kwargs=rendering_kwargs,
                sr_kwargs=dict(sr_kwargs or {}),
                **synthesis_kwargs,
            )
        )
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.backbone = StyleGAN2Backbone(
            z_dim,
            c_dim,
            w_dim,
            img_resolution=256,
            img_channels=32 * 3,
            mapping_kwargs=mapping_kwargs,
            **_without_ignored(synthesis_kwargs),
        )
        sr_name = rendering_kwargs["superresolution_module"].rsplit(".", 1)[-1]
        unknown_sr = set(_without_ignored(sr_kwargs or {})) - set(_SR_SWALLOWED)
        if unknown_sr:
            raise ValueError(f"unsupported sr_kwargs: {sorted(unknown_sr)}")
        self.superresolution = SuperResolution(
            sr_name,
            channels=32,
            img_resolution=img_resolution,
            sr_num_fp16_res=sr_num_fp16_res,
            sr_antialias=rendering_kwargs["sr_antialias"],
        )
        self.decoder = OSGDecoder(
            32, decoder_lr_mul=rendering_kwargs.get("decoder_lr_mul", 1), decoder_output_dim=32
        )
        self.renderer = ImportanceRenderer()
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rendering_kwargs
        self.precision = "fp32"

    @classmethod
    def from_config(cls, config: dict) -> TriPlaneGenerator:
        """A new generator (fresh weights) of the architecture `config`, another generator's `.config`."""
        return cls(**copy.deepcopy(config))

    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def extra_repr(self):
        return (
            f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, "
            f"img_resolution={self.img_resolution}, "
            f"neural_rendering_resolution={self.neural_rendering_resolution}, precision={self.precision}"
        )

    def set_precision(self, precision: str) -> TriPlaneGenerator:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        return self

    def compile(self, **kwargs) -> TriPlaneGenerator:
        """torch.compile the backbone, renderer and super-resolution in place (state-dict names are
        kept). Worth it for many renders at one batch size; each new shape compiles again.
        Compiled code draws other random numbers for the depth samples than eager PyTorch, so a
        seeded render matches the official one only uncompiled (or with deterministic=True)."""
        for module in (self.backbone.synthesis, self.renderer, self.superresolution):
            module.compile(**kwargs)
        return self

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        """z [N,z_dim], c [N,25] → ws [N,num_ws,w_dim]. c is zeroed or scaled as the checkpoint says."""
        if self.rendering_kwargs.get("c_gen_conditioning_zero", False):
            c = torch.zeros_like(c)
        # The official code scales by c_scale with a default of 0 when the key is missing.
        c = c * self.rendering_kwargs.get("c_scale", 0)
        return self.backbone.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)

    def synthesize_planes(self, ws, noise_mode="const") -> torch.Tensor:
        """ws → tri-planes [N, 3, 32, 256, 256]
        (channels 32p … 32p+31 form plane p; float16 in the fast mode)."""
        with deterministic_convolutions():
            planes = self._run(lambda fast: self.backbone.synthesis(ws, noise_mode=noise_mode, fast=fast), ws)
        if self._fast(ws):
            planes = planes.half()  # what the fast renderer samples; half the memory in a cache
        return planes.view(len(planes), 3, 32, planes.shape[-2], planes.shape[-1])

    def render_planes(self, planes, ws, c, neural_rendering_resolution=None, deterministic=False):
        """Render tri-planes from cameras c [N,25]; ws supplies the super-resolution's w.

        planes and ws may have batch N, or batch 1 to render N views of one latent (cheaper than
        expanding them: the super-resolution then modulates its weights once for all views).
        Returns the same dict as `synthesis`. `deterministic=True` replaces the random depth
        samples by fixed ones (not the official behaviour, but repeatable without seeding).
        """
        with deterministic_convolutions():
            return self._render_planes(planes, ws, c, neural_rendering_resolution, deterministic)

    def _render_planes(self, planes, ws, c, neural_rendering_resolution, deterministic):
        resolution = neural_rendering_resolution or self.neural_rendering_resolution
        cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
        origins, directions = camera_rays(cam2world, intrinsics, resolution)
        n = origins.shape[0]
        planes = planes.expand(n, -1, -1, -1, -1)
        if self._fast(ws):
            planes = planes.half()  # the sampler and decoder then run in float16 too
        features, depth, _ = self.renderer(
            planes, self.decoder, origins, directions, self.rendering_kwargs, deterministic=deterministic
        )
        feature_image = features.reshape(n, features.shape[1], resolution, resolution)
        depth_image = depth.reshape(n, 1, resolution, resolution)
        rgb_image = feature_image[:, :3].float()
        sr_noise = self.rendering_kwargs.get("superresolution_noise_mode", "none")
        image, raw_image = self._run(
            lambda fast: self.superresolution(rgb_image, feature_image, ws, sr_noise, fast, return_raw=True),
            ws,
        )
        return {"image": image, "image_raw": raw_image, "image_depth": depth_image}

    def synthesis(
        self,
        ws,
        c,
        neural_rendering_resolution=None,
        noise_mode="const",
        deterministic=False,
        update_emas=False,
        **_unused,
    ):
        """ws [N,num_ws,w_dim], c [N,25] → {'image', 'image_raw', 'image_depth'}.

        Extra official keyword arguments (cache_backbone, use_cached_backbone, force_fp32, …) are
        accepted and ignored; use `synthesize_planes` + `render_planes` to reuse tri-planes.
        """
        planes = self.synthesize_planes(ws, noise_mode=noise_mode)
        return self.render_planes(planes, ws, c, neural_rendering_resolution, deterministic=deterministic)

    def forward(
        self,
        z,
        c,
        truncation_psi=1,
        truncation_cutoff=None,
        neural_rendering_resolution=None,
        noise_mode="const",
        **kwargs,
    ):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(
            ws, c, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode, **kwargs
        )

    def _fast(self, ws) -> bool:
        return self.precision == "fast" and ws.device.type == "cuda"

    def _run(self, network, ws):
        """network(fast) in the fast mode when it applies, falling back to float32 on overflow.

        A network may return a tuple: its first tensor is checked (the final image, which an overflow
        anywhere in the super-resolution reaches). Inside a CUDA-graph capture the check cannot run
        (it reads the result on the host): whoever replays the graph checks its outputs instead (see
        preim3d.rendering.TriPlaneRenderer)."""
        if not self._fast(ws):
            return network(False)
        out = network(True)
        first = out[0] if isinstance(out, tuple) else out
        if (first.is_cuda and torch.cuda.is_current_stream_capturing()) or torch.isfinite(first).all():
            return out
        warnings.warn("float16 overflowed in the fast mode; recomputing this pass in float32", stacklevel=3)
        return network(False)
