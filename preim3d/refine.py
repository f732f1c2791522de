"""Pivotal tuning around the encoder's code: the generator learns to render one photo, the code stays put.

One encoder pass puts a photo's code w in the *inversion manifold*, where the editing directions
were fitted, but misses some of the person's identity and detail. Pivotal tuning (PTI, Roich et
al. 2022) keeps w fixed and tunes the generator's weights θ until G_θ(w, c) renders the photo x
from the photo's camera c. Here the pivot is the encoder's code, so the edits of w keep working;
the tuning runs as small per-photo deltas (LoRA, or full-rank) on a copy of the generator that
shares every base tensor, so the base generator never changes.

The objective at step t (images in [-1, 1]; each term only where it is switched on; G and D
without θ are the untuned image and depth, rendered once before the first step):

    L =  λ_pix · mean (G_θ(w, c) − x)²                              the aligned crop, its camera
       + λ_lpips · LPIPS(G_θ(w, c), x)                              with the optional `lpips` package
       + λ_id · (1 − ⟨f(G_θ(w, c)), f(x)⟩)                          with an ArcFace model f, if given
       + [t mod k = 0] · (the regularisers: one side view, one edit and one locality code a time)
           λ_views · mean |D_θ(w, c_v) − D(w, c_v)|                 side cameras c_v
         + λ_edits · mean |Δ_θ − Δ| / mean |Δ|      Δ = G(w + e, c) − G(w, c), an edit e
         + λ_loc · (mean (G_θ(w_r, c) − G(w_r, c))² + LPIPS(·, ·))

k = regularise_every. The regularisers keep what the photo says nothing about; they need not pull
at every step, and a step without them renders one code instead of three, at a third of the cost.

* views: depth maps at low resolution from yaw offsets (default ±0.6, ±1.0 rad) around the
  photo's view. The photo says nothing about what they see, so there the tuned head keeps the
  untuned head's geometry, and stays a plausible head from every angle.
* edits: an edit e (± edit_strength along a unit editing direction: each of the editor's own
  directions in turn, or random ones) must change the tuned render (Δ_θ) as it changed the untuned
  one (Δ), so that every slider moves the refined head about as much as before. The error is
  relative to the change (so a small edit counts as much as a large one), and its edit rides in
  the same batch as the pivot; Δ is rendered, with the deltas switched off, at the edit's first use.
* locality (PTI's): renders of codes w_r = w + α (w_z − w) / ‖w_z − w‖, w_z = mapping(z, ψ = 0.5),
  α = 30, from a small pool, stay as they were; the code rides in the pivot's batch too.
Every tuning render uses fixed depth samples (deterministic=True), so the terms compare like with
like. Adam with a cosine-decaying learning rate.

Parameters tuned: the weight and bias of every modulated convolution (tri-plane backbone and
super-resolution, ToRGB included) and of the decoder's two layers; the style affines, the mapping
network and the constant input stay as they are. A weight W becomes W + B·A (B [out, r] starts at
zero, A [r, in·k·k] ~ N(0, 1/r)), or W + Δ with a full-rank Δ when rank = 0 or when the low-rank
factors would not be smaller; biases get full deltas (they are small).

On a GPU with fast=True the tuning runs under bfloat16 autocast (the plain PyTorch networks, with
autograd; the fast mode's float16 kernels are for inference only), and each kind of step (with and
without the regularisers) is captured once as a CUDA graph — forward, backward and the optimizer's
update — and replayed: at batch 1 a step is otherwise bound by launching its thousands of small
kernels, not by their arithmetic. On a CPU it runs, slowly: the first step is timed and the
estimate for all steps is logged before the rest.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
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
    edit_weight: float = 0.3
    edit_directions: int = 8  # random unit directions for the edit term when the editor has none
    edit_strength: float = 3.0  # length in W+ of the edits kept (the directions are unit vectors)
    locality_weight: float = 0.1  # PTI's λ for its L2 and LPIPS terms
    locality_codes: int = 2
    regularise_every: int = 4  # k: the side view, edit and locality terms at every k-th step
    fast: bool = True  # bfloat16 autocast on a GPU (ignored on a CPU)
    graphs: bool = True  # in the fast mode on a GPU: the steps replayed from CUDA graphs
    coarse_gradients: bool = False  # through the coarse depth samples too (ImportanceRenderer)
    seed: int = 0  # of the low-rank factors' start and the locality codes

    def __post_init__(self):
        self.view_yaws = tuple(float(v) for v in self.view_yaws)
        if int(self.steps) != self.steps or self.steps < 0:
            raise ValueError(f"steps must be a whole number >= 0, got {self.steps!r}")
        counts = (self.rank, self.edit_directions, self.locality_codes)
        if min(counts) < 0 or self.regularise_every < 1 or self.view_resolution < 4:
            raise ValueError(
                "need rank, edit_directions and locality_codes >= 0, regularise_every >= 1 and "
                f"view_resolution >= 4; got {self}"
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

    active = True  # deltas_off switches it off for a moment

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return weight
        return weight + self.difference().view(weight.shape).to(weight.dtype)


@contextlib.contextmanager
def deltas_off(G: nn.Module):
    """Within it, a tuned copy computes what the base generator computes."""
    deltas = [m for m in G.modules() if isinstance(m, WeightDelta)]
    for delta in deltas:
        delta.active = False
    try:
        yield G
    finally:
        for delta in deltas:
            delta.active = True


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
def perceptual_loss(device: str):
    """LPIPS (AlexNet) on `device`, or None (logged once) when the package or its weights are missing."""
    from .training.losses import PerceptualLoss

    if importlib.util.find_spec("lpips") is None:
        log.warning(
            "The LPIPS term is off: the optional package `lpips` is not installed (pip install lpips); "
            "refining with the other terms."
        )
        return None
    try:
        return PerceptualLoss.create().to(device)
    except Exception as exc:  # the AlexNet weights are fetched on first use and may be unreachable
        log.warning("The LPIPS term is off: its model could not be loaded (%s: %s).", type(exc).__name__, exc)
        return None


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
    # float32 even under the tuning's autocast: the truncation mixes the codes with the float32 w_avg
    with torch.no_grad(), torch.autocast(ws.device.type, enabled=False):
        w_z = G.mapping(z, camera_vector(device=ws.device).expand(count, -1), truncation_psi=LOCALITY_PSI)
    direction = w_z - ws
    norms = direction.flatten(1).norm(dim=1).clamp_min(1e-8).reshape(-1, 1, 1)
    return ws + LOCALITY_ALPHA * direction / norms


def edit_steps(
    directions: torch.Tensor | None, count: int, strength: float, seed: int, shape
) -> torch.Tensor:
    """The edits the tuning keeps [2K, num_ws, w_dim]: + strength times each unit direction of
    `directions` [K, num_ws, w_dim] (or of `count` seeded random unit directions when it is None),
    then − strength times each, so that the first K steps already see every direction."""
    if directions is None:
        directions = torch.randn(count, *shape, generator=torch.Generator().manual_seed(seed))
    directions = torch.as_tensor(directions, dtype=torch.float32).reshape(-1, *shape)
    directions = directions / directions.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1)
    return strength * torch.cat([directions, -directions])


# --- Tuning ----------------------------------------------------------------------------------------------


def refine_generator(
    G: nn.Module,
    ws: torch.Tensor,
    target: torch.Tensor,
    pose: tuple[float, float] = (0.0, 0.0),
    settings: RefineSettings | None = None,
    *,
    directions: torch.Tensor | None = None,
    identity=None,
    lpips: bool = True,
    progress: Progress = None,
) -> Refinement:
    """Tune a copy of G so that G(ws, c) renders `target` (see the module docstring).

    ws [1, num_ws, w_dim] (kept as it is); target [1, 3, R, R] in [-1, 1] at the generator's image
    resolution; pose: (yaw, pitch) radians of the target's camera c (`preim3d.camera_vector`).
    directions: unit editing directions [K, num_ws, w_dim] whose edits the tuning keeps (default
    random ones). identity: an ArcFace model (IdentityLoss, ArcFaceBackbone or weights path) for
    the identity term. lpips=False leaves LPIPS out even when installed. progress(done, total)
    after each step. Returns a Refinement whose generator is the tuned copy (in G's precision mode).
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
    tuned.renderer.coarse_gradients = settings.coarse_gradients
    on_gpu = settings.fast and device.type == "cuda"

    with torch.inference_mode(False), torch.enable_grad(), _tuning_stream(device) as stream:
        objective = _Objective(tuned, ws, target, pose, settings, directions, identity, lpips, on_gpu)
        parameters = [p for p in tuned.parameters() if p.requires_grad]
        if on_gpu:  # the learning rate lives on the GPU, where the captured updates read it
            rate = torch.tensor(settings.learning_rate, device=device)
            optimizer = torch.optim.Adam(parameters, rate, fused=True, capturable=True)
        else:
            optimizer = torch.optim.Adam(parameters, settings.learning_rate)
        run_step = (_CapturedSteps if on_gpu and settings.graphs else _EagerSteps)(objective, optimizer)
        history: dict[str, list[torch.Tensor]] = {}
        start = time.perf_counter()
        for step in range(settings.steps):
            _set_learning_rate(optimizer, _cosine(settings.learning_rate, step, settings.steps))
            losses = run_step(*objective.inputs(step))
            for key, value in losses.items():
                history.setdefault(key, []).append(value)
            if step == 0 and device.type == "cpu" and settings.steps > 1:
                seconds = time.perf_counter() - start
                log.warning(
                    "Refining on the CPU: about %s for %d steps (%.1f s a step); a GPU takes seconds.",
                    _duration(seconds * settings.steps),
                    settings.steps,
                    seconds,
                )
            if progress is not None:
                if stream is not None:
                    stream.synchronize()  # report steps done, not steps queued
                progress(step + 1, settings.steps)
        if stream is not None:
            stream.synchronize()
        seconds = time.perf_counter() - start
        optimizer.zero_grad(set_to_none=True)  # the last gradients may live in the graphs' memory
        del run_step, optimizer  # which goes with them, as does the optimizer's state
    tuned.requires_grad_(False).set_precision(precision)
    tuned.renderer.coarse_gradients = True
    return Refinement(
        generator=tuned,
        settings=settings,
        losses=objective.used,
        history={k: torch.stack(v).float().cpu().tolist() for k, v in history.items()},
        seconds=seconds,
    )


def _cosine(rate: float, step: int, steps: int) -> float:
    """The learning rate at `step` of `steps`, decaying from `rate` to 0 along half a cosine."""
    return rate * (1 + math.cos(math.pi * step / max(steps, 1))) / 2


def _set_learning_rate(optimizer, rate: float):
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(rate)  # in place: the captured updates read this tensor
        else:
            group["lr"] = rate


@contextlib.contextmanager
def _tuning_stream(device: torch.device):
    """A side stream of `device` to tune on (CUDA graphs are captured on one), or None on a CPU."""
    if device.type != "cuda":
        yield None
        return
    caller = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(caller)
    with torch.cuda.device(device), torch.cuda.stream(stream):
        yield stream
    caller.wait_stream(stream)


class _EagerSteps:
    """One tuning step: the objective on the step's inputs, its gradient, the optimizer's update.
    Returns the step's losses (detached)."""

    def __init__(self, objective: _Objective, optimizer: torch.optim.Optimizer):
        self.objective, self.optimizer = objective, optimizer

    def __call__(self, kind: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in self._update(inputs).items()}

    def _update(self, inputs):
        losses = self.objective(inputs)
        losses["total"].backward()
        self.optimizer.step()
        return losses


class _CapturedSteps(_EagerSteps):
    """Tuning steps replayed from CUDA graphs, one per kind of step.

    The first `warmup` steps of a kind run eagerly (cuDNN chooses its algorithms, the optimizer makes
    its state); the next is captured — forward, backward and update — and from then on each step of
    that kind copies its inputs into the captured ones and replays. The graphs share one memory
    pool: they run one after another, and what one leaves behind (its losses) is copied before the
    next runs. A kind whose capture fails stays eager, with a warning. Runs on the caller's stream,
    which must not be the default one (`_tuning_stream`).
    """

    def __init__(self, objective, optimizer, warmup: int = 2):
        super().__init__(objective, optimizer)
        self.warmup, self.pool = warmup, None
        self.seen: dict[str, int] = {}
        self.graphs: dict[str, tuple | None] = {}  # kind -> (graph, static inputs, static losses)

    def __call__(self, kind, inputs):
        self.seen[kind] = self.seen.get(kind, 0) + 1
        if self.seen[kind] == self.warmup + 1:
            self.graphs[kind] = self._capture(inputs)
        entry = self.graphs.get(kind)
        if entry is None:
            return super().__call__(kind, inputs)
        graph, static_inputs, static_losses = entry
        for name, tensor in inputs.items():
            static_inputs[name].copy_(tensor)
        graph.replay()
        return {k: v.clone() for k, v in static_losses.items()}

    def _capture(self, inputs):
        static_inputs = {k: v.clone() for k, v in inputs.items()}
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward makes the gradients anew
        graph = torch.cuda.CUDAGraph()
        try:
            stream = torch.cuda.current_stream()  # thread_local: as CUDAGraphed, for the same reason
            with torch.cuda.graph(graph, self.pool, stream, capture_error_mode="thread_local"):
                static_losses = {k: v.detach() for k, v in self._update(static_inputs).items()}
        except Exception as exc:  # an operation that cannot be captured on this build
            warnings.warn(
                "Refining without CUDA graphs for some steps: the capture failed "
                f"({type(exc).__name__}: {exc})",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self.pool = graph.pool()
        return graph, static_inputs, static_losses


class _Objective:
    """The loss of one tuning step (module docstring); the untuned targets are rendered once, at init.

    `inputs(step)` says what the step renders and compares with: its kind ('plain', or
    'regularised' at every k-th step) and its tensors, whose shapes depend on the kind only;
    calling the objective on those tensors computes the losses from them alone, so that a step of
    one kind can be captured once and replayed with the inputs of another.
    """

    def __init__(self, G, ws, target, pose, settings, directions, identity, lpips, autocast):
        self.G, self.ws, self.target, self.s, self.autocast = G, ws, target, settings, autocast
        yaw, pitch = (float(v) for v in pose)
        self.c = camera_vector(yaw, pitch, device=ws.device)
        device = ws.device
        self.lpips = perceptual_loss(str(device)) if lpips and settings.lpips_weight > 0 else None
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
                (
                    "edits",
                    settings.edit_weight > 0 and (directions is not None or settings.edit_directions > 0),
                ),
                ("locality", settings.locality_weight > 0 and settings.locality_codes > 0),
            )
            if on
        )
        with torch.no_grad(), self._precision():  # the deltas are zero: these are the untuned renders
            planes = G.synthesize_planes(ws)
            if "views" in self.used:
                yaws = (yaw + torch.tensor(settings.view_yaws)).clamp(-1.2, 1.2)
                self.view_cameras = camera_vector(yaws, pitch, device=device)
                self.view_size = min(settings.view_resolution, G.neural_rendering_resolution)
                self.view_depths = raw_depth(G, planes, self.view_cameras, self.view_size).float()
            if "edits" in self.used:
                steps = edit_steps(
                    directions, settings.edit_directions, settings.edit_strength, settings.seed, ws.shape[1:]
                )
                self.edit_ws = ws + steps.to(device)
                self.image = self._render(ws, planes).float()
                self.edit_changes: dict[int, torch.Tensor] = {}  # rendered at first use
            if "locality" in self.used:
                self.locality_ws = locality_codes(G, ws, settings.locality_codes, settings.seed)
                self.locality_images = torch.cat([self._render(w[None]) for w in self.locality_ws]).float()

    def _precision(self):
        # no cast cache: the captured steps must cast the weights each time
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast, cache_enabled=False)

    def _render(self, ws, planes=None):
        planes = self.G.synthesize_planes(ws) if planes is None else planes
        return self.G.render_planes(planes, ws, self.c, deterministic=True)["image"]

    def _edit_change(self, k: int) -> torch.Tensor:
        """How edit k changed the untuned render (the deltas' parametrizations switched off)."""
        if k not in self.edit_changes:
            with torch.no_grad(), self._precision(), deltas_off(self.G):
                self.edit_changes[k] = self._render(self.edit_ws[k : k + 1]).float() - self.image
        return self.edit_changes[k]

    def inputs(self, step: int) -> tuple[str, dict[str, torch.Tensor]]:
        """The kind of step `step` and its inputs: the codes to render (the pivot first; on a
        regularised step one edit and one locality code with it, in one batch, so that each kind of
        step is one graph; the batch costs about as much as three renders of one code) and what the
        regularisers compare with. Each regularised step takes the next view, edit and code."""
        regularisers = {"views", "edits", "locality"} & set(self.used)
        if not regularisers or step % self.s.regularise_every:
            return "plain", {"ws": self.ws}
        turn = step // self.s.regularise_every
        codes, inputs = [self.ws], {}
        if "views" in self.used:
            v = turn % len(self.view_cameras)
            inputs["view_camera"] = self.view_cameras[v : v + 1]
            inputs["view_depth"] = self.view_depths[v : v + 1]
        if "edits" in self.used:
            k = turn % len(self.edit_ws)
            codes.append(self.edit_ws[k : k + 1])
            inputs["edit_change"] = self._edit_change(k)
        if "locality" in self.used:
            j = turn % len(self.locality_ws)
            codes.append(self.locality_ws[j : j + 1])
            inputs["locality_image"] = self.locality_images[j : j + 1]
        return "regularised", {"ws": torch.cat(codes), **inputs}

    def __call__(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        s, losses, ws = self.s, {}, inputs["ws"]
        with self._precision():
            planes = self.G.synthesize_planes(ws)
            images = self.G.render_planes(planes, ws, self.c.expand(len(ws), -1), deterministic=True)["image"]
            images = images.float()
            image = images[:1]
            losses["pixel"] = F.mse_loss(image, self.target)
            total = s.pixel_weight * losses["pixel"]
            if self.lpips is not None:
                losses["lpips"] = self.lpips(image, self.target)
                total = total + s.lpips_weight * losses["lpips"]
            if self.identity is not None:
                losses["identity"] = self.identity(image, self.target)[0]
                total = total + s.identity_weight * losses["identity"]
            if "view_camera" in inputs:
                depth = raw_depth(self.G, planes[:1], inputs["view_camera"], self.view_size).float()
                losses["views"] = (depth - inputs["view_depth"]).abs().mean()
                total = total + s.view_weight * losses["views"]
            if "edit_change" in inputs:
                expected = inputs["edit_change"]
                error = (images[1:2] - image - expected).abs().mean()
                losses["edits"] = error / expected.abs().mean().clamp_min(1e-8)
                total = total + s.edit_weight * losses["edits"]
            if "locality_image" in inputs:
                other, before = images[-1:], inputs["locality_image"]
                losses["locality"] = F.mse_loss(other, before)
                if self.lpips is not None:
                    losses["locality"] = losses["locality"] + self.lpips(other, before)
                total = total + s.locality_weight * losses["locality"]
        losses["total"] = total
        return losses


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- Targets ----------------------------------------------------------------------------------------


def crop_target(image, resolution: int) -> torch.Tensor:
    """An aligned crop (AlignedFace or PIL image) → [1, 3, R, R] in [-1, 1] at the generator's resolution,
    resized with PIL's antialiasing LANCZOS filter when R is not the crop's size."""
    from PIL import Image

    image = getattr(image, "image", image)
    if not isinstance(image, Image.Image):
        raise TypeError(
            f"refine needs an aligned face or its crop as a PIL image, not {type(image).__name__}"
        )
    image = image.convert("RGB")
    if image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    return pixels.float() / 127.5 - 1
