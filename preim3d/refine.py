"""Pivotal tuning around the encoder's code: the generator learns to render one photo, the code stays put.

One encoder pass puts a photo's code w in the *inversion manifold*, where the editing directions
were fitted, but misses some of the person's identity and detail. Pivotal tuning (PTI, Roich et
al. 2022) keeps w fixed and tunes the generator's weights θ until G_θ(w, c) renders the photo x
from the photo's camera c. Here the pivot is the encoder's code, so every edit of w still works;
the tuning runs as small per-photo deltas (LoRA, or full-rank) on a copy of the generator that
shares every base tensor, so the base generator never changes.

The objective at step t (images in [-1, 1], as rendered; each term only where it is switched on):

    L =  λ_pix · mean (G_θ(w, c) − x)²                          the aligned crop from its camera
       + λ_lpips · LPIPS(G_θ(w, c), x)                          with the optional `lpips` package
       + λ_id · (1 − ⟨f(G_θ(w, c)), f(x)⟩)                      with an ArcFace model f, if given
       + λ_views · mean |D_θ(w, c_v) − D(w, c_v)|               depth at side cameras c_v (cycled,
                                                                one a step, low resolution)
       + λ_loc · [t mod k = 0] · (mean (G_θ(w_r, c) − G(w_r, c))² + LPIPS(·, ·))

G and D without θ are the untuned renders (image, depth), computed once before the first step.
The locality term is PTI's: w_r = w + α (w_z − w) / ‖w_z − w‖ with w_z = mapping(z, ψ = 0.5),
α = 30, over a small pool of codes, every k-th step. The side cameras look at the head from
yaw offsets (default ±0.6, ±1.0 rad) around the photo's view: the photo does not constrain what
they see, so they keep the untuned head's geometry there, and the tuned head stays a plausible head
from every angle. Both regularisers render with fixed depth samples (deterministic=True); the photo
term uses the official random samples, so that the tuned head renders well with either.

Parameters tuned: the weight and bias of every modulated convolution (tri-plane backbone and
super-resolution, ToRGB included) and of the decoder's two layers; the style affines, the mapping
network and the constant input stay as they are. A weight W becomes W + B·A (B [out, r] starts at
zero, A [r, in·k·k] ~ N(0, 1/r)), or W + Δ with a full-rank Δ when rank = 0 or when the low-rank
factors would not be smaller; biases get full deltas (they are small).

On a GPU with fast=True the tuning runs under bfloat16 autocast (the plain PyTorch networks, with
autograd; the fast mode's float16 kernels are for inference only). On a CPU it runs, slowly: the
first step is timed and the estimate for all steps is logged before the rest.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .cameras import camera_vector
from .networks.renderer import camera_rays
from .networks.stylegan2 import SynthesisLayer, ToRGBLayer

log = logging.getLogger("preim3d.refine")

Progress = Callable[[int, int], None] | None

# PTI's locality regulariser (Roich et al. 2022, the authors' code): truncation of the random codes
# and the distance of the regularising codes from the pivot, in W+ units.
LOCALITY_PSI = 0.5
LOCALITY_ALPHA = 30.0


@dataclass
class RefineSettings:
    """How `refine_generator` tunes; stored with a refined head so that it can be rebuilt."""

    steps: int = 300
    rank: int = 8  # of each weight's low-rank delta; 0: full-rank deltas
    learning_rate: float = 2e-3  # Adam
    pixel_weight: float = 1.0
    lpips_weight: float = 1.0  # when the `lpips` package is installed
    identity_weight: float = 0.1  # when an ArcFace model is given
    view_weight: float = 1.0
    view_yaws: tuple[float, ...] = (-1.0, -0.6, 0.6, 1.0)  # radians, offsets from the photo's yaw
    view_resolution: int = 32  # px of the side views' depth maps (at most the neural resolution)
    locality_weight: float = 0.1  # PTI's λ for its L2 and LPIPS terms
    locality_every: int = 10
    locality_codes: int = 4
    fast: bool = True  # bfloat16 autocast on a GPU (ignored on a CPU)
    seed: int = 0  # of the low-rank factors' start and the locality codes

    def __post_init__(self):
        self.view_yaws = tuple(float(v) for v in self.view_yaws)
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, got {self.steps!r}")
        if self.rank < 0 or self.locality_every < 1 or self.locality_codes < 1 or self.view_resolution < 4:
            raise ValueError(
                "need rank >= 0, locality_every >= 1, locality_codes >= 1 and view_resolution >= 4; got "
                f"{self.rank}, {self.locality_every}, {self.locality_codes} and {self.view_resolution}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RefineSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in known})


@dataclass
class Refinement:
    """What `refine_generator` returns: the tuned copy and how the tuning went."""

    generator: nn.Module  # a copy of G with the deltas, in eval mode, sharing G's other tensors
    settings: RefineSettings
    losses: tuple[str, ...]  # the terms that were used, e.g. ("pixel", "lpips", "views", "locality")
    history: dict[str, list[float]] = field(default_factory=dict)  # per step, before its update
    seconds: float = 0.0


# --- The deltas ------------------------------------------------------------------------------------------


class WeightDelta(nn.Module):
    """A parametrization W ↦ W + ΔW: ΔW = (B A) reshaped to W's shape, or a full tensor Δ.

    B [out, rank] starts at zero and A [rank, in] ~ N(0, 1/rank), so ΔW starts at zero and grows,
    under Adam, about as fast per element as a full delta would.
    """

    def __init__(self, shape, rank: int, generator: torch.Generator | None = None):
        super().__init__()
        shape = tuple(shape)
        rows, cols = shape[0], math.prod(shape[1:])
        if rank > 0 and len(shape) >= 2 and rank * (rows + cols) < rows * cols:
            self.lora_b = nn.Parameter(torch.zeros(rows, rank))
            self.lora_a = nn.Parameter(torch.randn(rank, cols, generator=generator) / math.sqrt(rank))
        else:
            self.delta = nn.Parameter(torch.zeros(shape))

    @property
    def low_rank(self) -> bool:
        return hasattr(self, "lora_b")

    def difference(self) -> torch.Tensor:
        """ΔW, flattened to [out, in] for a low-rank delta."""
        return self.lora_b @ self.lora_a if self.low_rank else self.delta

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.difference().view(weight.shape).to(weight.dtype)


def tunable_parameters(G: nn.Module) -> list[str]:
    """Names of the parameters pivotal tuning changes (the module docstring says which and why)."""
    names = []
    for name, module in G.named_modules():
        if isinstance(module, (SynthesisLayer, ToRGBLayer)) or name.startswith("decoder.net."):
            names += [f"{name}.{p}" for p in ("weight", "bias") if module._parameters.get(p) is not None]
    return names


def tuned_copy(G: nn.Module, rank: int, seed: int = 0) -> nn.Module:
    """A copy of G whose tunable weights are W + ΔW (WeightDelta, ΔW = 0), sharing every tensor of G.

    The copy's own parameters are the deltas (they alone require gradients); G is never changed.
    """
    shared = {}
    for tensor in itertools.chain(G.parameters(), G.buffers()):
        shared[id(tensor)] = (
            nn.Parameter(tensor.detach(), requires_grad=False) if isinstance(tensor, nn.Parameter) else tensor
        )
    copied = copy.deepcopy(G, memo=shared)  # new modules around the same storage
    gen = torch.Generator().manual_seed(seed)
    for name in tunable_parameters(copied):
        module_name, leaf = name.rsplit(".", 1)
        module = copied.get_submodule(module_name)
        weight = getattr(module, leaf)
        delta = WeightDelta(weight.shape, rank, gen).to(weight.device)
        parametrize.register_parametrization(module, leaf, delta)
    return copied.eval()


def delta_state(G: nn.Module) -> dict[str, torch.Tensor]:
    """The deltas of a tuned copy by parameter name (e.g. '...conv0.parametrizations.weight.0.lora_a')."""
    return {
        name: p.detach()
        for name, p in G.named_parameters()
        if ".parametrizations." in name and not name.endswith(".original")
    }


def weights_digest(G: nn.Module) -> str:
    """A short hash of a tuned copy's deltas: two copies render alike exactly when their digests agree."""
    h = hashlib.blake2b(digest_size=12)
    for name, tensor in sorted(delta_state(G).items()):
        h.update(name.encode())
        h.update(tensor.to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def generator_fingerprint(G: nn.Module, samples: int = 4096) -> str:
    """A short hash of the base weights that deltas apply to (names, shapes and a strided sample of
    each tunable tensor's values), so that saved deltas are never applied to another generator."""
    h = hashlib.blake2b(digest_size=12)
    state = G.state_dict()
    for name in tunable_parameters(G):
        flat = state[name].detach().reshape(-1)
        h.update(f"{name}:{list(state[name].shape)}".encode())
        h.update(
            flat[:: max(1, flat.numel() // samples)].to("cpu", torch.float32).contiguous().numpy().tobytes()
        )
    return h.hexdigest()


# --- Losses ----------------------------------------------------------------------------------------------


@functools.cache
def _perceptual_loss(device: str):
    """LPIPS (AlexNet) on `device`, or None (logged once) when the package or its weights are missing."""
    from .training.losses import PerceptualLoss

    try:
        loss = PerceptualLoss.create()
    except Exception as exc:  # the AlexNet weights are fetched on first use and may be unreachable
        log.warning("LPIPS loss off: the LPIPS model could not be loaded (%s: %s).", type(exc).__name__, exc)
        return None
    return None if loss is None else loss.to(device)


def _identity_loss(identity, device):
    """An IdentityLoss from an IdentityLoss, an ArcFaceBackbone or a path to ArcFace weights."""
    from .training.identity import ArcFaceBackbone, IdentityLoss, load_arcface

    if isinstance(identity, IdentityLoss):
        return identity.to(device)
    if not isinstance(identity, ArcFaceBackbone):
        identity = load_arcface(identity)
    return IdentityLoss(identity).to(device)


def raw_depth(G, planes: torch.Tensor, c: torch.Tensor, resolution: int) -> torch.Tensor:
    """Depth maps [V, 1, r, r] of the tri-planes seen from cameras c [V, 25] at r = resolution,
    with fixed depth samples and without the super-resolution (the regulariser needs no colours)."""
    cam2world, intrinsics = c[:, :16].view(-1, 4, 4), c[:, 16:25].view(-1, 3, 3)
    origins, directions = camera_rays(cam2world, intrinsics, resolution)
    planes = planes.expand(len(c), -1, -1, -1, -1)
    _, depth, _ = G.renderer(planes, G.decoder, origins, directions, G.rendering_kwargs, deterministic=True)
    return depth.reshape(len(c), 1, resolution, resolution)


def locality_codes(G, ws: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """PTI's regularising codes [count, num_ws, w_dim]: w + α (w_z − w)/‖w_z − w‖, w_z = mapping(z, ψ=0.5)."""
    z = torch.randn(count, G.z_dim, generator=torch.Generator().manual_seed(seed)).to(ws.device)
    with torch.no_grad():
        w_z = G.mapping(z, camera_vector(device=ws.device).expand(count, -1), truncation_psi=LOCALITY_PSI)
    direction = w_z - ws
    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-8).reshape(-1, 1, 1)
    return ws + LOCALITY_ALPHA * direction / norms


# --- Tuning ----------------------------------------------------------------------------------------------


def refine_generator(
    G: nn.Module,
    ws: torch.Tensor,
    target: torch.Tensor,
    pose: tuple[float, float] = (0.0, 0.0),
    settings: RefineSettings | None = None,
    *,
    identity=None,
    lpips: bool = True,
    deterministic: bool = False,
    progress: Progress = None,
) -> Refinement:
    """Tune a copy of G so that G(ws, c) renders `target` (see the module docstring).

    ws [1, num_ws, w_dim] (kept as it is); target [1, 3, R, R] in [-1, 1] at the generator's image
    resolution; pose: (yaw, pitch) radians of the target's camera c (`preim3d.camera_vector`).
    identity: an ArcFace model (IdentityLoss, ArcFaceBackbone or weights path) for the identity
    term. lpips=False leaves LPIPS out even when installed. deterministic: fixed depth samples for
    the photo term too. progress(done, total) after each step. Returns a Refinement whose generator
    is the tuned copy (in G's precision mode).
    """
    settings = settings or RefineSettings()
    device = next(G.parameters()).device
    ws = torch.as_tensor(ws).detach().to(device, torch.float32).reshape(1, G.num_ws, -1)
    target = torch.as_tensor(target).detach().to(device, torch.float32)
    if target.shape != (1, 3, G.img_resolution, G.img_resolution):
        raise ValueError(
            f"target must be [1, 3, {G.img_resolution}, {G.img_resolution}] in [-1, 1]; "
            f"got {list(target.shape)}"
        )
    precision = getattr(G, "precision", "fp32")
    tuned = tuned_copy(G, settings.rank, settings.seed)
    tuned.set_precision("fp32")  # autograd runs the plain networks; autocast makes them fast
    autocast = settings.fast and device.type == "cuda"

    with torch.inference_mode(False), torch.enable_grad():
        terms = _Objective(tuned, ws, target, pose, settings, identity, lpips, deterministic, autocast)
        optimizer = torch.optim.Adam(
            [p for p in tuned.parameters() if p.requires_grad], settings.learning_rate
        )
        history: dict[str, list[torch.Tensor]] = {}
        start = time.perf_counter()
        for step in range(settings.steps):
            losses = terms(step)
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            for key, value in losses.items():
                history.setdefault(key, []).append(value.detach())
            if step == 0 and device.type == "cpu" and settings.steps > 1:
                seconds = time.perf_counter() - start
                log.warning(
                    "Refining on the CPU: about %s for %d steps (%.1f s a step); a GPU takes seconds.",
                    _duration(seconds * settings.steps),
                    settings.steps,
                    seconds,
                )
            if progress is not None:
                progress(step + 1, settings.steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    tuned.requires_grad_(False).set_precision(precision)
    return Refinement(
        generator=tuned,
        settings=settings,
        losses=terms.used,
        history={k: torch.stack(v).float().cpu().tolist() for k, v in history.items()},
        seconds=seconds,
    )


class _Objective:
    """The loss of one tuning step (module docstring); the untuned targets are rendered once, at init."""

    def __init__(self, G, ws, target, pose, settings, identity, lpips, deterministic, autocast):
        self.G, self.ws, self.target, self.s = G, ws, target, settings
        yaw, pitch = (float(v) for v in pose)
        self.c = camera_vector(yaw, pitch, device=ws.device)
        self.deterministic, self.autocast = deterministic, autocast
        device = ws.device
        self.lpips = _perceptual_loss(str(device)) if lpips and settings.lpips_weight > 0 else None
        self.identity = (
            _identity_loss(identity, device)
            if identity is not None and settings.identity_weight > 0
            else None
        )
        self.used = tuple(
            name
            for name, on in (
                ("pixel", settings.pixel_weight > 0),
                ("lpips", self.lpips is not None),
                ("identity", self.identity is not None),
                ("views", settings.view_weight > 0 and bool(settings.view_yaws)),
                ("locality", settings.locality_weight > 0),
            )
            if on
        )
        with torch.no_grad(), self._precision():  # the deltas are zero: these are the untuned renders
            if "views" in self.used:
                yaws = (yaw + torch.tensor(settings.view_yaws)).clamp(-1.2, 1.2)
                self.view_cameras = camera_vector(yaws, pitch, device=device)
                self.view_size = min(settings.view_resolution, G.neural_rendering_resolution)
                planes = G.synthesize_planes(ws)
                self.view_depths = raw_depth(G, planes, self.view_cameras, self.view_size).float()
            if "locality" in self.used:
                self.locality_ws = locality_codes(G, ws, settings.locality_codes, settings.seed)
                self.locality_images = torch.cat(
                    [self._render(w[None], deterministic=True) for w in self.locality_ws]
                ).float()

    def _precision(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast)

    def _render(self, ws, planes=None, deterministic=False):
        planes = self.G.synthesize_planes(ws) if planes is None else planes
        return self.G.render_planes(planes, ws, self.c, deterministic=deterministic)["image"]

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        s, losses = self.s, {}
        with self._precision():
            planes = self.G.synthesize_planes(self.ws)
            image = self._render(self.ws, planes, self.deterministic).float()
            losses["pixel"] = F.mse_loss(image, self.target)
            total = s.pixel_weight * losses["pixel"]
            if self.lpips is not None:
                losses["lpips"] = self.lpips(image, self.target)
                total = total + s.lpips_weight * losses["lpips"]
            if self.identity is not None:
                losses["identity"] = self.identity(image, self.target)[0]
                total = total + s.identity_weight * losses["identity"]
            if "views" in self.used:
                k = step % len(self.view_cameras)
                depth = raw_depth(self.G, planes, self.view_cameras[k : k + 1], self.view_size).float()
                losses["views"] = (depth - self.view_depths[k : k + 1]).abs().mean()
                total = total + s.view_weight * losses["views"]
            if "locality" in self.used and step % s.locality_every == 0:
                k = step // s.locality_every % len(self.locality_ws)
                other = self._render(self.locality_ws[k][None], deterministic=True).float()
                locality = F.mse_loss(other, self.locality_images[k : k + 1])
                if self.lpips is not None:
                    locality = locality + self.lpips(other, self.locality_images[k : k + 1])
                losses["locality"] = locality
                total = total + s.locality_weight * locality
        losses["total"] = total
        return losses


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
