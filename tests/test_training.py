"""Training the encoder (preim3d.training), on CPU with small networks.

Most tests use `MicroGenerator`: EG3D's generator interface (mapping / synthesis, z_dim, w_dim,
num_ws) over a 32-px 2-D StyleGAN2 of our own layers, fast enough for hundreds of CPU steps. Even
the tiny TriPlaneGenerator takes about a second per training step on two cores (its tri-plane
backbone always renders 96 x 256 x 256 planes and its 2x super-resolution is 128 channels wide), so
one test runs a few steps through it to show the real generator trains end to end.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eg3d_reference import TINY, fill_random
from PIL import Image

from preim3d import cli
from preim3d.cameras import camera_vector, orbit_cam2world
from preim3d.errors import Preim3DError, WeightsError
from preim3d.inversion import preprocess_for_encoder
from preim3d.networks.encoder import WPlusEncoder
from preim3d.networks.stylegan2 import MappingNetwork, SynthesisNetwork
from preim3d.testing import TINY_ARCFACE_KWARGS
from preim3d.training import make_config
from preim3d.training.checkpoint import read_training_checkpoint
from preim3d.training.config import config_from_args
from preim3d.training.data import CameraLabelledImages, epoch_batches
from preim3d.training.discriminator import LatentDiscriminator, LatentPool, r1_penalty
from preim3d.training.export import export_bundle, export_official
from preim3d.training.identity import (
    ArcFaceBackbone,
    IdentityLoss,
    init_encoder_from_arcface,
    load_arcface,
)
from preim3d.training.losses import PerceptualLoss, latent_loss_weight
from preim3d.training.ranger import Ranger
from preim3d.training.trainer import Trainer, camera_angles, train
from preim3d.weights.encoder import load_encoder, load_latent_avg


class MicroGenerator(torch.nn.Module):
    """EG3D's generator interface over a 32-px 2-D StyleGAN2 (8 ws of 64): a fast stand-in for tests.

    synthesis() shifts the image sideways by the camera's x position, so cameras change the picture.
    """

    def __init__(self, seed=0):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim = 16, 25, 64
        self.net = SynthesisNetwork(
            w_dim=64, img_resolution=32, img_channels=3, channel_base=256, channel_max=16
        )
        self.num_ws = self.net.num_ws
        self.map = MappingNetwork(16, 25, 64, self.num_ws, num_layers=2)
        self.rendering_kwargs = {"avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]}
        fill_random(self, seed)

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None):
        return self.map(z, c, truncation_psi, truncation_cutoff)

    def synthesis(self, ws, c, noise_mode="const"):
        image = torch.tanh(self.net(ws, noise_mode=noise_mode))
        theta = torch.zeros(len(image), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = c[:, 3] / 2.7
        grid = F.affine_grid(theta, list(image.shape), align_corners=False).to(image.dtype)
        return {"image": F.grid_sample(image, grid, padding_mode="border", align_corners=False)}


@pytest.fixture(autouse=True)
def one_thread():
    """Networks this small train fastest on one thread: with two, the threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def micro_encoder(seed=0):
    torch.manual_seed(seed)
    return WPlusEncoder(
        n_styles=8,
        w_dim=64,
        stage_units=[1, 1, 1, 1],
        stage_channels=[8, 16, 24, 32],
        stem_channels=8,
        pool_size=2,
        se_reduction=4,
    )


def tiny_arcface(seed=1):
    torch.manual_seed(seed)
    return ArcFaceBackbone(**TINY_ARCFACE_KWARGS).eval()


def write_dataset(folder, G, n=16, size=48, seed=0):
    """n PNG crops rendered by G, their EG3D dataset.json, and one unlabelled image."""
    g = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(n, generator=g) - 0.5) * 0.6
    c = camera_vector(yaw, torch.zeros(n))
    with torch.no_grad():
        images = G.synthesis(G.mapping(torch.randn(n, G.z_dim, generator=g), c, 0.7, 14), c)["image"]
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    pixels = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    (folder / "sub").mkdir(parents=True)
    labels = []
    for i in range(n):
        name = f"sub/img{i:03d}.png"
        Image.fromarray(pixels[i]).save(folder / name)
        labels.append([name, c[i].tolist()])
    Image.fromarray(pixels[0]).save(folder / "unlabelled.png")
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))
    return folder


def micro_config(out, **overrides):
    settings = dict(
        out=str(out),
        batch_size=2,
        resolution=32,
        learning_rate=1e-3,
        lpips_lambda=0.0,
        w_rec_lambda_start=1.0,
        w_rec_lambda_delta=0.0,
        multi_view_start_step=150,
        view_count=1,
        d_reg_every=4,
        log_every=1,
        image_every=100,
        save_every=100,
        device="cpu",
        workers=0,
        progress=False,
    )
    settings.update(overrides)
    return make_config(**settings)


def read_log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def mean_of(records, key):
    values = [r[key] for r in records if key in r]
    assert values, key
    return sum(values) / len(values)


# ------------------------------------------------------------------ the loop


def test_a_few_hundred_steps_lower_the_losses_and_every_part_runs(tmp_path, caplog):
    G = MicroGenerator()
    data = write_dataset(tmp_path / "data", G)
    config = micro_config(tmp_path / "run", data=str(data), max_steps=240, multi_view_start_step=120)
    with caplog.at_level(logging.WARNING, logger="preim3d.training"):
        train(config, generator=G, encoder=micro_encoder(), arcface=tiny_arcface())
    assert "have no camera label and are left out: unlabelled.png" in caplog.text
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, 241))
    first, last = log[:30], log[-30:]
    ratios = {key: mean_of(last, key) / mean_of(first, key) for key in ("loss_l2", "loss_w_rec", "loss_id")}
    print("loss ratios (last 30 / first 30 steps):", ratios)
    assert ratios["loss_l2"] < 0.2 and ratios["loss_w_rec"] < 0.3 and ratios["loss_id"] < 0.5

    # the alternation: synthetic and real micro-batches take turns; the latent loss only on synthetic ones
    assert [r["phases"] for r in log[:2]] == [{"synthetic": 1, "real": 0}, {"synthetic": 0, "real": 1}]
    assert all(("loss_w_rec" in r) == (r["phases"]["synthetic"] == 1) for r in log)
    # the multi-view identity loss switches on after its step
    assert not any(r["multi_view"] or "loss_id_multi_view" in r for r in log[:120])
    assert all(r["multi_view"] and r["loss_id_multi_view"] > 0 for r in log[120:])
    # the discriminator trained, with R1 every d_reg_every updates
    assert sum("d_r1" in r for r in log) == 240 // 4 and all(math.isfinite(r["d_loss"]) for r in log)

    run = tmp_path / "run"
    grid = Image.open(run / "samples" / "step_0000200.png")
    assert grid.size == (32 * 5, 32 * 2)  # input | reconstruction | 3 novel views, one row per sample
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000200.pt", "step_0000240.pt"]
    encoder = load_encoder(run / "bundle")
    official = load_encoder(run / "preim3d_encoder.pt")
    for a, b in zip(encoder.state_dict().values(), official.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(load_latent_avg(run / "bundle"), load_latent_avg(run / "preim3d_encoder.pt"))


def test_resuming_reproduces_the_next_step_exactly(tmp_path):
    G = MicroGenerator()
    data = write_dataset(tmp_path / "data", G)
    # two micro-batches per step (both phases), R1 every other update, multi-view on from step 2
    settings = dict(
        data=str(data),
        max_steps=4,
        save_every=3,
        accumulate=2,
        d_reg_every=2,
        multi_view_start_step=1,
        w_pool_size=3,
    )
    train(
        micro_config(tmp_path / "a", **settings), generator=G, encoder=micro_encoder(), arcface=tiny_arcface()
    )
    checkpoint = tmp_path / "a" / "checkpoints" / "step_0000003.pt"
    resumed = train(
        micro_config(tmp_path / "b", resume=str(checkpoint), **settings),
        generator=G,
        encoder=micro_encoder(seed=5),
        arcface=tiny_arcface(),
    )

    expected, got = read_log(tmp_path / "a")[-1], read_log(tmp_path / "b")[-1]
    assert got["step"] == expected["step"] == 4 and got["multi_view"]
    for key in expected:
        if key != "images_per_s":
            assert got[key] == expected[key], key
    final = read_training_checkpoint(tmp_path / "a" / "checkpoints" / "step_0000004.pt")
    for key, value in resumed.encoder_module.state_dict().items():
        assert torch.equal(value, final["encoder"][key]), key
    assert len(resumed.fake_pool.codes) == 3


def test_the_full_tri_plane_generator_trains_the_encoder_through_its_renderer(tmp_path):
    G = tiny_triplane_generator()
    encoder = WPlusEncoder(
        stage_units=[1, 1, 1, 1], stage_channels=[8, 16, 24, 32], stem_channels=8, pool_size=2, se_reduction=4
    )
    c = camera_vector([0.2, -0.1], [0.0, 0.05])
    with torch.no_grad():
        images = G.synthesis(G.mapping(torch.randn(2, G.z_dim), c, 0.7, 14), c)["image"]
    dataset = list(zip(F.adaptive_avg_pool2d(images, 64), c))
    # No latent or adversarial loss: every gradient the encoder gets has come through G.synthesis.
    config = micro_config(
        tmp_path / "run",
        batch_size=1,
        resolution=64,
        max_steps=2,
        multi_view_start_step=1,
        w_rec_lambda_start=0.0,
        w_discriminator_lambda=0.0,
        image_every=2,
    )
    trainer = Trainer(config, generator=G, encoder=encoder, arcface=tiny_arcface(), dataset=dataset)
    before = trainer.encoder_module.linear.weight.detach().clone()
    first = trainer.train_step()
    assert first["phases"]["synthetic"] == 1 and "loss_id_multi_view" not in first
    assert trainer.encoder_module.linear.weight.grad.abs().sum() > 0
    assert not torch.equal(trainer.encoder_module.linear.weight, before)
    second = trainer.train_step()
    assert second["phases"]["real"] == 1 and second["loss_id_multi_view"] > 0
    assert Image.open(trainer.save_samples()).size == (64 * 5, 64)


def tiny_triplane_generator():
    from preim3d.networks.triplane import TriPlaneGenerator

    G = TriPlaneGenerator(**TINY[0])
    fill_random(G, 3)
    G.neural_rendering_resolution = 16
    return G.eval().requires_grad_(False)


def test_bf16_autocast_runs_close_to_float32(tmp_path):
    G = MicroGenerator()
    data = write_dataset(tmp_path / "data", G, n=4)
    losses = {}
    for bf16 in (False, True):
        run = tmp_path / f"bf16_{bf16}"
        train(
            micro_config(run, data=str(data), max_steps=2, bf16=bf16),
            generator=G,
            encoder=micro_encoder(),
            arcface=tiny_arcface(),
        )
        losses[bf16] = [r["loss_l2"] for r in read_log(run)]
    assert losses[True] != losses[False]  # autocast really ran in bfloat16
    for a, b in zip(losses[True], losses[False]):
        assert abs(a - b) < 0.05 * b


def _ddp_worker(rank, world_size, port, folder, data):
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    config = micro_config(
        f"{folder}/run",
        data=data,
        max_steps=3,
        accumulate=2,
        save_every=3,
        d_reg_every=2,
        multi_view_start_step=1,
    )
    trainer = Trainer(config, generator=MicroGenerator(), encoder=micro_encoder(), arcface=tiny_arcface())
    try:
        trainer.fit()
        mean = trainer._mean_over_processes({"step": 3, "loss": float(rank), "phases": {"real": rank}})
    finally:
        trainer.close()
    parameters = {name: p.detach() for name, p in trainer.encoder_module.named_parameters()}
    torch.save({"encoder": parameters, "D": trainer.D.state_dict(), "mean": mean}, f"{folder}/rank{rank}.pt")


def test_two_processes_train_in_step_through_distributed_data_parallel(tmp_path, caplog):
    data = write_dataset(tmp_path / "data", MicroGenerator())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(data)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    initial = micro_encoder().state_dict()
    for key, value in ranks[0]["encoder"].items():
        assert torch.equal(value, ranks[1]["encoder"][key]), key
    assert not torch.equal(ranks[0]["encoder"]["linear.weight"], initial["linear.weight"])
    for key, value in ranks[0]["D"].items():
        assert torch.equal(value, ranks[1]["D"][key]), key
    checkpoint = read_training_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000003.pt")
    assert checkpoint["world_size"] == 2 and len(checkpoint["processes"]) == 2
    # each process drew its own samples
    assert not torch.equal(checkpoint["processes"][0]["rng_cpu"], checkpoint["processes"][1]["rng_cpu"])
    # the log holds the mean over the processes of each number (rank 0 gathers them)
    assert ranks[0]["mean"] == {"step": 3, "loss": 0.5, "phases": {"real": 0}}

    # one process continues the two processes' run: the same place in the data, both pools dealt to it
    caplog.set_level(logging.WARNING, logger="preim3d.training")
    resumed = Trainer(
        micro_config(tmp_path / "run", data=str(data), max_steps=5, resume="latest", w_pool_size=8),
        generator=MicroGenerator(),
        encoder=micro_encoder(seed=5),
        arcface=tiny_arcface(),
    )
    assert "was written by 2 process(es) with batch 2, this run has 1 with batch 2" in caplog.text
    epoch, taken = checkpoint["processes"][0]["data_position"]
    assert taken > 0 and resumed.stream.position == (epoch, 2 * taken)
    both = [checkpoint["processes"][r]["fake_pool"]["codes"] for r in range(2)]
    assert len(both[0]) == 12 and len(resumed.fake_pool.codes) == 8  # 2 x 12 codes, cut to the new size
    assert torch.equal(torch.stack(resumed.fake_pool.codes), torch.stack(both, 1).flatten(0, 1)[:8])
    for key, value in resumed.encoder_module.state_dict().items():
        assert torch.equal(value, ranks[0]["encoder"].get(key, value)), key
    resumed.fit()
    assert [r["step"] for r in read_log(tmp_path / "run")][-2:] == [4, 5]


def test_identity_losses_need_arcface_weights(tmp_path):
    with pytest.raises(Preim3DError, match="--arcface"):
        Trainer(micro_config(tmp_path, real_batches=0), generator=MicroGenerator(), encoder=micro_encoder())
    trainer = Trainer(
        micro_config(tmp_path, real_batches=0, id_lambda=0.0, id_lambda_multi_view=0.0),
        generator=MicroGenerator(),
        encoder=micro_encoder(),
    )
    assert trainer.identity is None and "loss_id" not in trainer.train_step()


# ------------------------------------------------------------------ cameras


def test_camera_angles_invert_the_orbit():
    h = torch.tensor([1.2, 1.57, 2.0, 1.9])
    v = torch.tensor([1.3, 1.57, 1.8, 1.5])
    for pivot in (None, (0, 0, 0.2)):
        c = torch.cat([orbit_cam2world(h, v, pivot=pivot).reshape(-1, 16), torch.zeros(4, 9)], 1)
        h2, v2 = camera_angles(c)
        assert torch.allclose(h2, h, atol=1e-5) and torch.allclose(v2, v, atol=1e-5)


def test_views_and_synthetic_cameras_follow_their_distributions(tmp_path):
    trainer = Trainer(
        micro_config(
            tmp_path,
            real_batches=0,
            view_count=3,
            multi_view_yaw_std=0.0,
            multi_view_pitch_std=0.0,
            batch_size=64,
        ),
        generator=MicroGenerator(),
        encoder=micro_encoder(),
        arcface=tiny_arcface(),
    )
    _, c, ws = trainer.synthetic_batch()
    h, v = camera_angles(c)
    assert (h - math.pi / 2).abs().max() <= math.radians(30) and (
        v - math.pi / 2
    ).abs().max() <= math.radians(20)
    assert (h - math.pi / 2).abs().max() > math.radians(20)  # spread over the range
    assert torch.allclose(ws[:, 0], ws[:, -1]) and ws.shape == (64, 8, 64)

    cameras = trainer.multi_view_cameras(c[:2])
    assert cameras.shape == (6, 25)
    origin, forward = cameras[:, :16].view(-1, 4, 4)[:, :3, 3], cameras[:, :16].view(-1, 4, 4)[:, :3, 2]
    assert torch.allclose(F.normalize(-origin, dim=1), forward, atol=1e-5)  # looking at the origin
    assert torch.allclose(origin.norm(dim=1), torch.full((6,), 2.7))
    h, v = camera_angles(cameras)
    assert torch.allclose(h, h[:1].expand(6)) and (h[0] - math.pi / 2).abs() <= math.radians(20)

    trainer.config.multi_view_center = "input"
    h, v = camera_angles(trainer.multi_view_cameras(c[:2]))
    h_in, v_in = camera_angles(c[:2])
    assert torch.allclose(h, h_in.repeat_interleave(3), atol=1e-5)
    assert torch.allclose(v, v_in.repeat_interleave(3), atol=1e-5)


# ------------------------------------------------------------------ parts


def test_ranger_follows_its_formulas():
    torch.manual_seed(0)
    grads = torch.randn(8, 3, dtype=torch.float64)
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Ranger([p], lr=0.1, k=100)
    m = v = torch.zeros(3, dtype=torch.float64)
    expected = torch.zeros(3, dtype=torch.float64)
    b1, b2 = 0.95, 0.999
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, 1):
        p.grad = g.clone()
        opt.step()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if t <= 5:  # momentum SGD until the variance estimate is trusted
            assert rho <= 5
            expected = expected - 0.1 / (1 - b1**t) * m
        else:
            r = math.sqrt(
                (1 - b2**t) * (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
            )
            expected = expected - 0.1 * r / (1 - b1**t) * m / (v.sqrt() + 1e-5)
        assert torch.allclose(p.detach(), expected, rtol=1e-12, atol=1e-12), t


def test_ranger_lookahead_and_gradient_centralisation():
    torch.manual_seed(0)
    grads = torch.randn(6, 4, 5)
    runs = {}
    for alpha in (1.0, 0.5):
        w = torch.nn.Parameter(torch.ones(4, 5))
        opt = Ranger([w], lr=0.01, k=3, alpha=alpha)
        for g in grads[:3]:
            w.grad = g.clone()
            opt.step()
        runs[alpha] = w.detach().clone()
    # every k steps the weights move only alpha of the way from the slow weights (the start) to the fast ones
    assert torch.allclose(runs[0.5], 1 + 0.5 * (runs[1.0] - 1), atol=1e-6)
    # centralised gradients: each output row's update has zero mean
    assert runs[1.0].sub(1).mean(1).abs().max() < 1e-6 and runs[1.0].sub(1).abs().max() > 1e-3

    # state_dict round trip continues identically
    w1, w2 = torch.nn.Parameter(torch.ones(4, 5)), torch.nn.Parameter(torch.ones(4, 5))
    opt1 = Ranger([w1], lr=0.01)
    for g in grads[:4]:
        w1.grad = g.clone()
        opt1.step()
    w2.data.copy_(w1.data)
    opt2 = Ranger([w2], lr=0.01)
    saved = io.BytesIO()
    torch.save(opt1.state_dict(), saved)
    opt2.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    for g in grads[4:]:
        w1.grad, w2.grad = g.clone(), g.clone()
        opt1.step()
        opt2.step()
    assert torch.equal(w1, w2)


def test_latent_pool_fills_then_swaps_and_picks_rows():
    torch.manual_seed(0)
    pool = LatentPool(4)
    codes = torch.arange(3 * 5 * 2, dtype=torch.float32).view(3, 5, 2)
    out = pool.query(codes)
    assert out.shape == (3, 2) and len(pool.codes) == 3
    assert all(any(torch.equal(o, row) for row in code) for o, code in zip(out, codes))
    seen_old = seen_new = 0
    for _ in range(20):
        fresh = torch.randn(2, 2)
        out = pool.query(fresh)
        assert len(pool.codes) == 4
        for o, f in zip(out, fresh):
            if torch.equal(o, f):
                seen_new += 1
            else:
                seen_old += 1
    assert seen_old > 5 and seen_new > 5
    copy = LatentPool(0)
    copy.load_state_dict(pool.state_dict())
    assert copy.size == 4 and all(torch.equal(a, b) for a, b in zip(copy.codes, pool.codes))
    assert torch.equal(LatentPool(0).query(codes[:, :1]), codes[:, 0])  # no pool: rows only


def test_discriminator_layout_and_r1():
    D = LatentDiscriminator(512)
    assert list(D.state_dict()) == [f"mlp.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias")]
    assert D(torch.randn(2, 14, 512)).shape == (2, 14, 1)
    linear = LatentDiscriminator(8, hidden_layers=0)  # D(w) = a.w + b: |grad|^2 = |a|^2 everywhere
    penalty = r1_penalty(linear, torch.randn(5, 8))
    assert torch.allclose(penalty, linear.mlp[0].weight.square().sum())
    penalty.backward()
    assert torch.allclose(linear.mlp[0].weight.grad, 2 * linear.mlp[0].weight)


def test_latent_weight_ramp():
    ramp = [latent_loss_weight(s, 0.0, 0.1, 5000, 100) for s in (0, 4999, 5000, 12000, 500_000, 2_000_000)]
    assert ramp == pytest.approx([0.0, 0.0, 0.1, 0.2, 10.0, 10.0])


def test_identity_loss_compares_embeddings_and_keeps_the_target_fixed():
    loss_fn = IdentityLoss(tiny_arcface())
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    y_hat = (y + 0.3 * torch.randn_like(y)).requires_grad_(True)
    target = y.clone().requires_grad_(True)
    loss, similarity = loss_fn(y_hat, target)
    cosine = (loss_fn.embed(y_hat) * loss_fn.embed(y)).sum(1)
    assert torch.allclose(similarity, cosine.detach()) and torch.allclose(loss, (1 - cosine).mean())
    loss.backward()
    assert y_hat.grad.abs().sum() > 0 and target.grad is None
    assert loss_fn(y, y)[0].abs() < 1e-6


def test_arcface_has_the_treb1en_layout_and_initialises_the_encoder(tmp_path):
    torch.manual_seed(0)
    net = ArcFaceBackbone().eval()
    state = net.state_dict()
    assert state["output_layer.3.weight"].shape == (512, 512 * 7 * 7)
    assert state["output_layer.4.running_var"].shape == (512,) and "body.23.res_layer.5.fc2.weight" in state
    assert sum(k.startswith("body.") for k in state) == 24 * 15 + 3 * 6  # 24 units, 3 with a conv shortcut
    torch.save(state, tmp_path / "model_ir_se50.pth")
    loaded = load_arcface(tmp_path / "model_ir_se50.pth")
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.equal(loaded(x), net(x)) and torch.allclose(loaded(x).norm(dim=1), torch.ones(2))

    encoder = WPlusEncoder()
    assert init_encoder_from_arcface(encoder, state) == sum(
        k.startswith(("input_layer.", "body.")) for k in state
    )
    assert torch.equal(encoder.body[21].shortcut_layer[0].weight, state["body.21.shortcut_layer.0.weight"])
    with pytest.raises(WeightsError, match="do not fit"):
        init_encoder_from_arcface(micro_encoder(), state)
    torch.save({"input_layer.0.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="do not fit an IR-SE50 ArcFace"):
        load_arcface(tmp_path / "other.pth")


def test_lpips_weight_without_the_package_stops_and_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail as if not installed
    settings = dict(real_batches=0, id_lambda=0.0, id_lambda_multi_view=0.0)
    with pytest.raises(Preim3DError, match="lpips") as info:
        Trainer(micro_config(tmp_path, lpips_lambda=0.8, **settings), MicroGenerator(), micro_encoder())
    assert "pip install lpips" in str(info.value) and "--lpips-lambda 0" in str(info.value)
    trainer = Trainer(micro_config(tmp_path, lpips_lambda=0.0, **settings), MicroGenerator(), micro_encoder())
    assert trainer.lpips is None and "loss_lpips" not in trainer.train_step()


def test_a_broken_lpips_install_reports_its_own_error(tmp_path, monkeypatch):
    (tmp_path / "lpips.py").write_text("import a_package_lpips_needs\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lpips", raising=False)
    with pytest.raises(ModuleNotFoundError, match="a_package_lpips_needs"):
        PerceptualLoss.create()


# ------------------------------------------------------------------ data


def test_dataset_reads_labels_by_path_or_name_and_resizes_like_inference(tmp_path, caplog):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(3)]
    images[0].save(tmp_path / "a" / "x.png")
    images[1].save(tmp_path / "y.png")
    images[2].save(tmp_path / "z.png")
    c = [[float(i)] * 25 for i in range(3)]
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": [["a/x.png", c[0]], ["elsewhere/y.png", c[1]]]})
    )
    with caplog.at_level(logging.WARNING, logger="preim3d.training"):
        dataset = CameraLabelledImages(tmp_path, resolution=256)
    assert "1 image(s)" in caplog.text and "z.png" in caplog.text
    assert len(dataset) == 2
    x, cam = dataset[0]
    assert torch.equal(x, preprocess_for_encoder(images[0])[0]) and cam.tolist() == c[0]
    assert dataset[1][1].tolist() == c[1]

    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a/x.png", [1.0, 2.0]]]}))
    with pytest.raises(Preim3DError, match="25 numbers"):
        CameraLabelledImages(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": None}))
    with pytest.raises(Preim3DError, match="no camera labels"):
        CameraLabelledImages(tmp_path)


def test_epoch_batches_are_disjoint_between_processes_and_reproducible():
    a = epoch_batches(11, 2, epoch=3, seed=1, rank=0, world_size=2)
    b = epoch_batches(11, 2, epoch=3, seed=1, rank=1, world_size=2)
    # every process gets as many batches (extra images wait for the next epoch), none shared
    assert len(a) == len(b) == 2 and not set(sum(a, [])) & set(sum(b, []))
    assert a == epoch_batches(11, 2, epoch=3, seed=1, rank=0, world_size=2)
    assert a != epoch_batches(11, 2, epoch=4, seed=1, rank=0, world_size=2)


# ------------------------------------------------------------------ config, command line, export


def test_config_file_and_command_line_overrides(tmp_path):
    (tmp_path / "run.toml").write_text('batch_size = 4\nbf16 = true\nout = "somewhere"\nlearning_rate = 3\n')
    args = cli.build_parser().parse_args(
        [
            "train",
            "--config",
            str(tmp_path / "run.toml"),
            "--batch-size",
            "8",
            "--no-bf16",
            "--id-lambda",
            "0.5",
        ]
    )
    config = config_from_args(args)
    assert (config.batch_size, config.bf16, config.out, config.id_lambda) == (8, False, "somewhere", 0.5)
    assert config.learning_rate == 3.0 and config.max_steps == 2_000_000
    (tmp_path / "bad.json").write_text(json.dumps({"batchsize": 2}))
    with pytest.raises(Preim3DError, match="unknown training setting 'batchsize'"):
        make_config(tmp_path / "bad.json")
    with pytest.raises(Preim3DError, match="batch_size must be an integer"):
        make_config(batch_size="2")
    with pytest.raises(Preim3DError, match="multi_view_center"):
        make_config(multi_view_center="left")


def test_export_layouts_load_back(tmp_path):
    encoder = micro_encoder()
    latent_avg = torch.randn(1, 8, 64)
    export_official(encoder, latent_avg, tmp_path / "enc.pt", extra_opts={"batch_size": 2})
    raw = torch.load(tmp_path / "enc.pt", weights_only=True)
    assert set(raw["state_dict"]) == {f"encoder.{k}" for k in encoder.state_dict()}
    assert raw["opts"]["encoder_type"] == "WPlusEncoder" and raw["opts"]["batch_size"] == 2
    assert raw["opts"]["stylegan_size"] == 32  # PREIM3D's n_styles = 2 log2(size) - 2 = 8
    export_bundle(encoder, latent_avg, tmp_path / "bundle")
    x = torch.rand(2, 3, 32, 32)
    for source in (tmp_path / "enc.pt", tmp_path / "bundle"):
        assert torch.equal(load_encoder(source)(x), encoder.eval()(x))
        assert torch.equal(load_latent_avg(source), latent_avg)


def test_export_encoder_command(tmp_path, capsys):
    G = MicroGenerator()
    config = micro_config(tmp_path / "run", real_batches=0, max_steps=1)
    train(config, generator=G, encoder=micro_encoder(), arcface=tiny_arcface())
    checkpoint = tmp_path / "run" / "checkpoints" / "step_0000001.pt"
    assert (
        cli.main(
            [
                "export-encoder",
                str(checkpoint),
                "--bundle",
                str(tmp_path / "b"),
                "--official",
                str(tmp_path / "e.pt"),
            ]
        )
        == 0
    )
    assert "step 1" in capsys.readouterr().out
    trained = load_encoder(tmp_path / "run" / "bundle").state_dict()
    for source in (tmp_path / "b", tmp_path / "e.pt"):
        for key, value in load_encoder(source).state_dict().items():
            assert torch.equal(value, trained[key])
    assert cli.main(["export-encoder", str(checkpoint)]) == 1
    assert "--bundle" in capsys.readouterr().err


def test_train_command_reads_the_generator_encoder_and_data_from_files(tmp_path):
    from preim3d.weights.encoder import save_encoder
    from preim3d.weights.generator import save_generator

    G = tiny_triplane_generator()
    save_generator(G, tmp_path / "start")
    torch.manual_seed(0)
    save_encoder(
        WPlusEncoder(
            stage_units=[1, 1, 1, 1],
            stage_channels=[8, 16, 24, 32],
            stem_channels=8,
            pool_size=2,
            se_reduction=4,
        ),
        tmp_path / "start",
    )
    data = write_dataset(tmp_path / "data", G, n=2, size=128)
    status = cli.main(
        [
            "train",
            "--generator",
            str(tmp_path / "start"),
            "--encoder",
            str(tmp_path / "start"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "2",
            "--batch-size",
            "1",
            "--resolution",
            "64",
            "--id-lambda",
            "0",
            "--id-lambda-multi-view",
            "0",
            "--lpips-lambda",
            "0",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
            "--log-every",
            "1",
        ]
    )
    assert status == 0
    log = read_log(tmp_path / "run")
    assert [r["phases"] for r in log] == [{"synthetic": 1, "real": 0}, {"synthetic": 0, "real": 1}]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["resolution"] == 64
    trained = load_encoder(tmp_path / "run" / "bundle")
    start = load_encoder(tmp_path / "start")
    assert not torch.equal(trained.linear.weight, start.linear.weight)
    from preim3d.weights.generator import load_generator

    assert load_generator(tmp_path / "run" / "bundle").neural_rendering_resolution == 16
