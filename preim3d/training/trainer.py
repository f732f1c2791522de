"""PREIM3D's training loop: a W+ encoder learns to invert a frozen EG3D generator.

One optimiser step = `accumulate` micro-batches per process. Micro-batch m is *synthetic* when
m mod (S + R) < S (S = synthetic_batches, R = real_batches), else *real*:

    synthetic  z ~ N(0, I); camera at yaw ~ U(+-30 deg), pitch ~ U(+-20 deg) about the frontal view, looking
               at the pivot; ws = G.mapping(z, c, psi 0.7, cutoff 14); x = pool(G.synthesis(ws, c))
    real       x, c from the dataset (c = the photo's EG3D camera label)

and in both cases, with the generator frozen but differentiated through:

    codes  = E(x) + latent_avg                                  [N, 14, 512]
    y_hat  = pool(G.synthesis(codes, c)['image'])               pool = average pooling to `resolution`
    loss   = l2 L2(y_hat, x) + lpips LPIPS(y_hat, x) + id L_id(y_hat, x) + adv L_adv(codes)
             + [synthetic] lambda_w(step) MSE(codes, ws)
             + [step > multi_view_start_step] mv L_id(G.synthesis(codes, c_v), x) over view_count views

The novel views c_v of each image are drawn around a base pose: one random pose per micro-batch
(yaw ~ U(+-20 deg), pitch ~ U(+-5 deg), the official choice) or the input's own pose
(multi_view_center = "input"); each view adds N(0, 0.25) yaw and N(0, 0.12) pitch, on the sphere
of radius 2.7, looking at the origin. Before the encoder's loss, the latent discriminator takes one
step on (mapping-network w, detached codes); see `discriminator.py`.

Several processes: launched by `torchrun --nproc_per_node=N` (one per GPU), the encoder is wrapped
in DistributedDataParallel; the discriminator's gradients are averaged by hand, because its R1 term
needs autograd.grad, which DistributedDataParallel does not support. Gradients are averaged over the
processes, so one step of N processes with batch B equals one step of one process with batch N*B
(the global batch N * batch_size * accumulate), at the same learning rate; nothing is rescaled.
Two things stay per process: BatchNorm statistics (over its own B images) and the latent pools.
Each process has its own data shard, random streams and latent pools; all of them go into the
checkpoint, so a resumed run continues exactly with the same number of processes and batch size.
With another number or batch size, the data continue from the same place of the same epoch, the
pools are dealt out again and the random streams restart from the seed and the step.

Numerics: float32 by default. `bf16` runs the encoder, the generator and the identity network
under bfloat16 autocast; the mapping network, every loss, the discriminator and its R1 term, and the
optimiser stay in float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel

from ..cameras import (
    DEFAULT_FOCAL,
    DEFAULT_PIVOT,
    DEFAULT_RADIUS,
    FRONTAL_ANGLE,
    conditioning,
    intrinsics,
    orbit_cam2world,
)
from ..distributed import start_processes
from ..errors import Preim3DError
from ..inversion import compute_latent_avg
from ..networks.encoder import WPlusEncoder
from ..networks.triplane import TriPlaneGenerator
from ..rendering import to_uint8
from ..weights.encoder import load_encoder
from ..weights.generator import load_generator
from .checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, read_training_checkpoint
from .config import TrainConfig
from .data import BatchStream, CameraLabelledImages
from .discriminator import (
    LatentDiscriminator,
    LatentPool,
    discriminator_loss,
    encoder_adversarial_loss,
    r1_penalty,
)
from .export import export_bundle, export_official
from .identity import IdentityLoss, arcface_from_state, init_encoder_from_arcface, read_arcface_weights
from .losses import PerceptualLoss, l2_loss, latent_loss, latent_loss_weight
from .ranger import Ranger

log = logging.getLogger("preim3d.training")

SAMPLE_YAWS = (-0.4, 0.0, 0.4)  # novel views of the sample grids, radians from the frontal view
SAMPLE_ROWS = 4


def look_at_cameras(h, v, radius, pivot, focal_or_K) -> torch.Tensor:
    """c [N,25] for absolute LookAt angles h, v [N] (pi/2 = frontal); pivot None looks at the origin."""
    pose = orbit_cam2world(h, v, radius=radius, pivot=pivot, device=h.device)
    K = intrinsics(focal_or_K, device=h.device) if isinstance(focal_or_K, float) else focal_or_K
    return conditioning(pose, K)


def camera_angles(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The LookAt angles (h, v) of the camera positions in c [N,25] (inverse of `orbit_cam2world`).

    o = r (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h)), phi = arccos(1 - 2 v / pi)
    =>  h = pi - atan2(o_z, o_x),  v = pi (1 - o_y / r) / 2.
    """
    o = c[:, :16].reshape(-1, 4, 4)[:, :3, 3]
    r = o.norm(dim=1)
    return math.pi - torch.atan2(o[:, 2], o[:, 0]), math.pi * (1 - o[:, 1] / r) / 2


def _uniform(n: int, half_range: float) -> torch.Tensor:
    return (torch.rand(n) * 2 - 1) * half_range


class Trainer:
    """Everything a run needs; `fit()` trains until `config.max_steps`.

    The components come from the config's paths, or are given directly (tests, notebooks):
    `generator` (an EG3D-like module with `mapping`, `synthesis`, `z_dim`, `w_dim`, `num_ws`),
    `encoder` (a WPlusEncoder, trained in place), `arcface` (an `ArcFaceBackbone`) and `dataset`
    (pairs (x [3,R,R] in [-1,1], c [25]), e.g. `CameraLabelledImages`).
    """

    def __init__(self, config: TrainConfig, generator=None, encoder=None, arcface=None, dataset=None):
        self.config = cfg = config
        self.processes = start_processes(cfg.device)
        self.rank, self.world_size, self.device = (
            self.processes.rank,
            self.processes.world_size,
            self.processes.device,
        )
        self.out = Path(cfg.out)
        torch.manual_seed(cfg.seed)  # identical initial weights in every process

        if generator is None:
            if cfg.generator is None:
                raise Preim3DError(
                    "Give the frozen generator: --generator (a preim3d bundle or an official file)."
                )
            generator = load_generator(cfg.generator)
        self.G = generator.to(self.device).eval().requires_grad_(False)
        rendering = getattr(self.G, "rendering_kwargs", {}) or {}
        self.radius = float(rendering.get("avg_camera_radius", DEFAULT_RADIUS))
        self.pivot = tuple(rendering.get("avg_camera_pivot", DEFAULT_PIVOT))
        self.latent_avg = compute_latent_avg(self.G, device=self.device)
        arcface_state = read_arcface_weights(cfg.arcface) if cfg.arcface and arcface is None else None
        self.encoder_module = self._build_encoder(encoder, arcface_state).to(self.device).train()
        if tuple(self.latent_avg.shape[1:]) != (self.encoder_module.n_styles, self.encoder_module.w_dim):
            raise Preim3DError(
                f"The encoder predicts [{self.encoder_module.n_styles}, {self.encoder_module.w_dim}] codes "
                f"but the generator takes {list(self.latent_avg.shape[1:])}: they do not belong together."
            )

        self.identity = None
        if cfg.uses_identity:
            if arcface is None and cfg.arcface is None:
                raise Preim3DError(
                    "The identity losses need ArcFace weights: give --arcface model_ir_se50.pth (IR-SE50 of "
                    "TreB1eN/InsightFace_Pytorch), or turn them off with --id-lambda 0 "
                    "--id-lambda-multi-view 0."
                )
            if arcface is None:
                arcface = arcface_from_state(arcface_state, origin=cfg.arcface)
            self.identity = IdentityLoss(arcface).to(self.device)
        self.lpips = PerceptualLoss.create(cfg.lpips_net).to(self.device) if cfg.lpips_lambda > 0 else None

        params = list(self.encoder_module.parameters())
        if cfg.optimizer == "ranger":
            self.optimizer = Ranger(params, lr=cfg.learning_rate)
        else:
            self.optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
        self.D = self.d_optimizer = None
        if cfg.w_discriminator_lambda > 0:
            self.D = LatentDiscriminator(self.encoder_module.w_dim).to(self.device).requires_grad_(False)
            self.d_optimizer = torch.optim.Adam(self.D.parameters(), lr=cfg.w_discriminator_lr)
        self.real_pool, self.fake_pool = LatentPool(cfg.w_pool_size), LatentPool(cfg.w_pool_size)

        self.encoder = self.encoder_module
        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.encoder = DistributedDataParallel(self.encoder_module, device_ids=ids)

        self.stream = None
        if cfg.real_batches > 0:
            if dataset is None:
                if cfg.data is None:
                    raise Preim3DError(
                        "Give the training images: --data FOLDER (EG3D crops with dataset.json)."
                    )
                dataset = CameraLabelledImages(cfg.data, cfg.resolution, cfg.labels)
            self.stream = BatchStream(
                dataset,
                cfg.batch_size,
                cfg.seed,
                self.rank,
                self.world_size,
                cfg.workers,
                pin_memory=self.device.type == "cuda",
            )

        self.step = 0  # optimiser steps done
        self.micro_step = 0  # micro-batches done (drives the alternation)
        self.d_updates = 0  # discriminator updates done (drives R1)
        self._last_batch = None  # (x, y_hat, codes) of the latest micro-batch, for sample grids
        torch.manual_seed(_process_seed(cfg.seed, self.rank))  # each process its own random stream
        if cfg.resume:
            self.load_checkpoint(self._find_checkpoint(cfg.resume))

    # ------------------------------------------------------------------ setup helpers

    def _build_encoder(self, encoder, arcface_state):
        cfg = self.config
        if encoder is not None:
            return encoder.requires_grad_(True)
        if cfg.encoder:
            log.info("encoder initialised from %s", cfg.encoder)
            return load_encoder(cfg.encoder).requires_grad_(True)
        encoder = WPlusEncoder(n_styles=self.latent_avg.shape[1], w_dim=self.latent_avg.shape[2])
        if arcface_state is not None:
            count = init_encoder_from_arcface(encoder, arcface_state, origin=cfg.arcface)
            log.info(
                "encoder stem and body (%d tensors) initialised from the ArcFace weights %s",
                count,
                cfg.arcface,
            )
        else:
            log.warning("encoder initialised at random (no --arcface or --encoder weights given)")
        return encoder

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _pool(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.resolution
        return F.adaptive_avg_pool2d(images.float(), (size, size))

    def _render(self, ws: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            image = self.G.synthesis(ws, c, noise_mode="const")["image"]
        return self._pool(image)

    # ------------------------------------------------------------------ batches and cameras

    @torch.no_grad()
    def synthetic_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, c, ws): images the frozen generator renders from known latents, one random camera each
        (the official code draws one camera per batch; per image gives more poses for the same work)."""
        cfg, n = self.config, self.config.batch_size
        z = torch.randn(n, self.G.z_dim, device=self.device)
        h = math.pi / 2 + _uniform(n, cfg.synthetic_yaw_range)
        v = math.pi / 2 + _uniform(n, cfg.synthetic_pitch_range)
        c = look_at_cameras(h, v, self.radius, self.pivot, DEFAULT_FOCAL).to(self.device)
        ws = self.G.mapping(z, c, truncation_psi=cfg.truncation_psi, truncation_cutoff=cfg.truncation_cutoff)
        return self._render(ws, c), c, ws

    def multi_view_cameras(self, c: torch.Tensor) -> torch.Tensor:
        """view_count cameras per input camera c [N,25] -> [N*view_count, 25], views of sample i together."""
        cfg, n, views = self.config, len(c), self.config.view_count
        if cfg.multi_view_center == "random":
            h = torch.full((n * views,), math.pi / 2 + float(_uniform(1, cfg.multi_view_yaw_range)))
            v = torch.full((n * views,), math.pi / 2 + float(_uniform(1, cfg.multi_view_pitch_range)))
        else:
            h, v = (a.cpu().repeat_interleave(views) for a in camera_angles(c.float()))
        h = h + torch.randn(n * views) * cfg.multi_view_yaw_std
        v = v + torch.randn(n * views) * cfg.multi_view_pitch_std
        K = c[:, 16:].reshape(-1, 3, 3).cpu().repeat_interleave(views, 0)  # the inputs' own intrinsics
        return look_at_cameras(h, v, self.radius, None, K).to(c.device)

    # ------------------------------------------------------------------ one step

    def train_step(self) -> dict:
        """One optimiser step over `accumulate` micro-batches; returns the logged values of the step."""
        cfg = self.config
        step = self.step + 1
        self.optimizer.zero_grad(set_to_none=True)
        values = defaultdict(list)
        phases = {"synthetic": 0, "real": 0}
        for i in range(cfg.accumulate):
            synthetic = self.micro_step % (cfg.synthetic_batches + cfg.real_batches) < cfg.synthetic_batches
            phases["synthetic" if synthetic else "real"] += 1
            last = i == cfg.accumulate - 1
            sync = self.encoder.no_sync() if self.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                for key, value in self._micro_step(step, synthetic).items():
                    values[key].append(value)
            self.micro_step += 1
        self.optimizer.step()
        self.step = step
        record = {
            "step": step,
            **{k: sum(v) / len(v) for k, v in values.items()},
            "phases": phases,
            "multi_view": self._multi_view_on(step),
        }
        return record

    def _multi_view_on(self, step: int) -> bool:
        cfg = self.config
        return (
            self.identity is not None
            and cfg.view_count > 0
            and cfg.id_lambda_multi_view > 0
            and step > cfg.multi_view_start_step
        )

    def _micro_step(self, step: int, synthetic: bool) -> dict:
        cfg = self.config
        if synthetic:
            x, c, ws_true = self.synthetic_batch()
        else:
            x, c = (t.to(self.device, non_blocking=True) for t in next(self.stream))
            ws_true = None
        with self._autocast():
            offsets = self.encoder(x)
        codes = offsets.float() + self.latent_avg
        values = self._discriminator_step(codes.detach(), len(x)) if self.D is not None else {}

        y_hat = self._render(codes, c)
        terms = {"l2": (cfg.l2_lambda, l2_loss(y_hat, x))}
        if self.lpips is not None:
            with self._autocast():
                terms["lpips"] = (cfg.lpips_lambda, self.lpips(y_hat, x).float())
        if self.identity is not None:
            with self._autocast():
                loss_id, similarity = self.identity(y_hat, x)
            terms["id"] = (cfg.id_lambda, loss_id)
            values["id_similarity"] = similarity.mean().item()
        if self.D is not None:
            terms["adv"] = (cfg.w_discriminator_lambda, encoder_adversarial_loss(self.D, codes))
        if synthetic:
            weight = latent_loss_weight(
                step,
                cfg.w_rec_lambda_start,
                cfg.w_rec_lambda_delta,
                cfg.w_rec_interval,
                cfg.w_rec_max_increments,
            )
            terms["w_rec"] = (weight, latent_loss(codes, ws_true))
            values["w_rec_weight"] = weight
        if self._multi_view_on(step):
            views = self._render(codes.repeat_interleave(cfg.view_count, 0), self.multi_view_cameras(c))
            with self._autocast():
                loss_mv, _ = self.identity(views, x.repeat_interleave(cfg.view_count, 0))
            terms["id_multi_view"] = (cfg.id_lambda_multi_view, loss_mv)
        total = sum(weight * loss for weight, loss in terms.values())
        (total / cfg.accumulate).backward()
        values.update({f"loss_{name}": loss.item() for name, (_, loss) in terms.items()})
        values["loss"] = total.item()
        self._last_batch = (x.detach(), y_hat.detach(), codes.detach())
        return values

    def _discriminator_step(self, codes: torch.Tensor, n: int) -> dict:
        """One update of D on (mapping-network w at the frontal camera, encoder codes), with lazy R1."""
        cfg = self.config
        with torch.no_grad():
            z = torch.randn(n, self.G.z_dim, device=self.device)
            frontal = torch.full((n,), FRONTAL_ANGLE)
            c = look_at_cameras(frontal, frontal, self.radius, self.pivot, DEFAULT_FOCAL).to(self.device)
            real = self.G.mapping(z, c)
        real_w, fake_w = self.real_pool.query(real), self.fake_pool.query(codes)
        self.D.requires_grad_(True)
        loss, values = discriminator_loss(self.D, real_w, fake_w)
        self._update_discriminator(loss)
        values["d_loss"] = loss.item()
        if self.d_updates % cfg.d_reg_every == 0:
            penalty = r1_penalty(self.D, real_w)
            self._update_discriminator(cfg.r1 / 2 * cfg.d_reg_every * penalty)
            values["d_r1"] = penalty.item()
        self.d_updates += 1
        self.D.requires_grad_(False)
        return values

    def _update_discriminator(self, loss: torch.Tensor) -> None:
        self.d_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.world_size > 1:
            grads = [p.grad for p in self.D.parameters() if p.grad is not None]  # R1 leaves the last bias out
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world_size
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.view_as(g))
        self.d_optimizer.step()

    # ------------------------------------------------------------------ the loop

    def fit(self) -> Trainer:
        """Train from `self.step` to `config.max_steps`: logs, sample grids, checkpoints, final export."""
        cfg = self.config
        main = self.rank == 0
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            log.info(
                "training on %s x %d process(es), batch %d x %d accumulated, from step %d to %d",
                self.device,
                self.world_size,
                cfg.batch_size,
                cfg.accumulate,
                self.step,
                cfg.max_steps,
            )
        from tqdm.auto import tqdm

        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            disable=not (main and cfg.progress),
            unit="step",
            dynamic_ncols=True,
        )
        tick, images = time.perf_counter(), 0
        while self.step < cfg.max_steps:
            record = self.train_step()
            images += cfg.batch_size * cfg.accumulate * self.world_size
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", l2=f"{record['loss_l2']:.4f}", refresh=False)
            if self.step % cfg.log_every == 0:
                record = self._mean_over_processes(record)
                if main:
                    now = time.perf_counter()
                    record["images_per_s"] = images / (now - tick)
                    tick, images = now, 0
                    with open(self.out / "log.jsonl", "a") as f:
                        f.write(json.dumps(record) + "\n")
            if self.step % cfg.image_every == 0 and main:
                self.save_samples()
            if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        if main:
            self.export()
        return self

    def _mean_over_processes(self, record: dict) -> dict:
        """The step's record with each loss and value averaged over the processes (each saw its own batch)."""
        records = self.processes.gather(record)
        if records is None:
            return record
        numbers = [k for k, v in record.items() if isinstance(v, float)]
        return {**record, **{k: sum(r[k] for r in records) / len(records) for k in numbers}}

    # ------------------------------------------------------------------ samples, checkpoints, export

    @torch.no_grad()
    def save_samples(self) -> Path:
        """A PNG grid of the last micro-batch: input | reconstruction | novel views at SAMPLE_YAWS."""
        x, y_hat, codes = (t[:SAMPLE_ROWS] for t in self._last_batch)
        n, views = len(x), len(SAMPLE_YAWS)
        h = (math.pi / 2 + torch.tensor(SAMPLE_YAWS)).repeat(n)
        c = look_at_cameras(h, torch.full_like(h, FRONTAL_ANGLE), self.radius, self.pivot, DEFAULT_FOCAL)
        novel = self._render(codes.repeat_interleave(views, 0), c.to(self.device))
        columns = torch.cat([x[:, None], y_hat[:, None], novel.view(n, views, *novel.shape[1:])], 1)
        cells = to_uint8(columns.flatten(0, 1))  # [n * (2 + views), R, R, 3]
        size = cells.shape[1]
        grid = cells.reshape(n, 2 + views, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(n * size, -1, 3)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)
        return path

    def _process_state(self) -> dict:
        """What differs between processes: random streams, data position, latent pools."""
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return {
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": cuda,
            "data_position": list(self.stream.position) if self.stream is not None else None,
            "real_pool": self.real_pool.state_dict(),
            "fake_pool": self.fake_pool.state_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step_XXXXXXX.pt (first process) with everything needed to continue exactly."""
        processes = self.processes.gather(self._process_state())
        if self.rank != 0:
            return None
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "micro_step": self.micro_step,
            "d_updates": self.d_updates,
            "config": self.config.to_dict(),
            "world_size": self.world_size,
            "encoder_architecture": dict(self.encoder_module.config),
            "encoder": self.encoder_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "latent_avg": self.latent_avg.cpu(),
            "discriminator": self.D.state_dict() if self.D is not None else None,
            "d_optimizer": self.d_optimizer.state_dict() if self.D is not None else None,
            "processes": processes,
        }
        folder = self.out / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{self.step:07d}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        for old in sorted(folder.glob("step_*.pt"))[: -self.config.keep_checkpoints]:
            old.unlink()
        return path

    def _find_checkpoint(self, resume: str) -> Path:
        if resume != "latest":
            return Path(resume)
        found = sorted((self.out / "checkpoints").glob("step_*.pt"))
        if not found:
            raise Preim3DError(f"--resume latest: no checkpoint in {self.out / 'checkpoints'}.")
        return found[-1]

    def load_checkpoint(self, path) -> None:
        """Continue from a checkpoint written by `save_checkpoint` (read with weights_only=True)."""
        state = read_training_checkpoint(path)
        self.encoder_module.load_state_dict(state["encoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.D is not None and state["discriminator"] is not None:
            self.D.load_state_dict(state["discriminator"])
            self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.latent_avg = state["latent_avg"].to(self.device)
        self.step, self.micro_step, self.d_updates = state["step"], state["micro_step"], state["d_updates"]
        processes = state["processes"]
        batch = state["config"]["batch_size"]
        if len(processes) == self.world_size and batch == self.config.batch_size:
            mine = processes[self.rank]
            torch.set_rng_state(mine["rng_cpu"])
            if mine["rng_cuda"] is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["rng_cuda"], self.device)
            if self.stream is not None and mine["data_position"] is not None:
                self.stream.epoch, self.stream.taken = mine["data_position"]
            self.real_pool.load_state_dict(mine["real_pool"], self.device)
            self.fake_pool.load_state_dict(mine["fake_pool"], self.device)
        else:
            self._reshard(processes, batch)
            log.warning(
                "%s was written by %d process(es) with batch %d, this run has %d with batch %d: the data "
                "continue from the same place, the latent pools are dealt out again and the random "
                "streams restart from the seed and step, so the run does not continue bit for bit.",
                path,
                len(processes),
                batch,
                self.world_size,
                self.config.batch_size,
            )
        log.info("resumed from %s at step %d", path, self.step)

    def _reshard(self, processes: list[dict], batch: int) -> None:
        """Continue the per-process state of `processes` (another count or batch size) in this process."""
        torch.manual_seed(_process_seed(self.config.seed, self.rank, self.step))
        position = processes[0]["data_position"]
        if self.stream is not None and position is not None:
            # Each epoch's permutation is the same for any number of processes, and after t batches
            # each of W processes has had the first t * W * batch images of it: skip as many.
            epoch, taken = position
            shown = taken * len(processes) * batch
            self.stream.epoch, self.stream.taken = (
                epoch,
                -(-shown // (self.world_size * self.config.batch_size)),
            )
        for pool, key in ((self.real_pool, "real_pool"), (self.fake_pool, "fake_pool")):
            # the old processes' codes taken in turns, then dealt out in turns
            old = [list(p[key]["codes"]) for p in processes]
            codes = [codes[i] for i in range(max(map(len, old))) for codes in old if i < len(codes)]
            pool.codes = [c.to(self.device) for c in codes[self.rank :: self.world_size][: pool.size]]

    def export(self) -> tuple[Path, Path]:
        """The trained encoder as a bundle (with latent average and generator) and in PREIM3D's layout."""
        provenance = {"trained_with": "preim3d train", "steps": self.step, "config": self.config.to_dict()}
        bundle = export_bundle(
            self.encoder_module,
            self.latent_avg,
            self.out / "bundle",
            provenance=provenance,
            generator=self.G if isinstance(self.G, TriPlaneGenerator) else None,
        )
        official = export_official(
            self.encoder_module,
            self.latent_avg,
            self.out / "preim3d_encoder.pt",
            extra_opts=self.config.to_dict(),
        )
        log.info("exported the encoder to %s and %s", bundle, official)
        return bundle, official

    def close(self) -> None:
        """Leave the process group if this trainer created it."""
        self.processes.close()


def _process_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of one process's random streams: different per process, and per step after a reshard."""
    return seed * 65_537 + rank + 1 + step * 1_000_003


def train(config: TrainConfig, **components) -> Trainer:
    """Train with `config` (components as for `Trainer`); returns the trainer after the last step."""
    trainer = Trainer(config, **components)
    try:
        return trainer.fit()
    finally:
        trainer.close()
