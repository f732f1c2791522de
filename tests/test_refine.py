"""Pivotal tuning (`Editor.refine`, preim3d.refine) on the tiny random-weight bundle and a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from preim3d.cameras import camera_vector
from preim3d.errors import InvalidValueError, LatentFileError, WeightsError
from preim3d.evaluation.metrics import psnr
from preim3d.pipeline import Editor, RefinedHead, load_latent
from preim3d.refine import (
    RefineSettings,
    delta_state,
    locality_codes,
    tunable_parameters,
    tuned_copy,
)
from preim3d.testing import make_tiny_bundle

# Few regularising codes and cameras, so that each refinement takes seconds on a 2-core CPU; the
# regularisers at every step, the edit term at weight 1 and the locality term at ten times PTI's
# weight, so that their effects show within these few steps.
QUICK = {
    "locality_codes": 1,
    "locality_weight": 1.0,
    "edit_weight": 1.0,
    "view_yaws": (-0.8, 0.8),
    "regularise_every": 1,
}
STEPS = 12  # each of the tiny bank's six directions, edited both ways, once
NOTHING_ELSE = {"view_weight": 0, "edit_weight": 0, "locality_weight": 0}  # for the plain cases


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


@pytest.fixture(scope="module")
def face(editor, astronaut_png):
    return editor.align(astronaut_png)


@pytest.fixture(scope="module")
def base_state(editor):
    return {k: v.clone() for k, v in editor.generator.state_dict().items()}


@pytest.fixture(scope="module")
def head(editor, face, base_state):
    """The astronaut refined for STEPS steps, with the steps reported as they are done."""
    done = []
    head = editor.refine(face, steps=STEPS, progress=lambda step, total: done.append((step, total)), **QUICK)
    assert done == [(step, STEPS) for step in range(1, STEPS + 1)]
    return head


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_reconstruction_improves_with_steps(editor, face, head, base_state):
    pose = face.estimate_pose()
    ws = editor.invert(face)
    before = psnr(face.image, editor.render(ws, *pose))
    assert before + 0.5 < psnr(face.image, head.reconstruction())
    curve = head.history["pixel"]  # the pixel loss before each step's update
    assert len(curve) == STEPS and all(b < a for a, b in zip(curve, curve[1:])) and curve[-1] < 0.8 * curve[0]
    assert head.losses == ("pixel", "views", "edits", "locality")  # no lpips package, no ArcFace here
    # the base editor is untouched: same weights, same renders
    state = editor.generator.state_dict()
    assert state.keys() == base_state.keys() and all(torch.equal(state[k], base_state[k]) for k in state)


def test_more_steps_fit_better_and_a_cpu_says_how_long_first(editor, face, head, caplog):
    ws = editor.invert(face)
    logged_by_step = []
    with caplog.at_level("WARNING", logger="preim3d.refine"):
        fewer = editor.refine(face, ws, 4, progress=lambda *_: logged_by_step.append(caplog.text), **QUICK)
    # the estimate for all steps comes after the first step, before the others
    estimate = "Refining on the CPU: about"
    assert estimate in logged_by_step[0] and "for 4 steps" in logged_by_step[0]
    assert logged_by_step[-1].count(estimate) == 1
    before = psnr(face.image, editor.render(ws, *face.estimate_pose()))
    assert before < psnr(face.image, fewer.reconstruction()) < psnr(face.image, head.reconstruction())
    assert head.history["pixel"][-1] < fewer.history["pixel"][-1] < fewer.history["pixel"][0]


def test_the_code_is_kept(editor, face, head):
    ws = editor.invert(face)
    assert torch.equal(head.ws, ws)  # the encoder's code, bit for bit
    assert head.pose == tuple(float(v) for v in face.estimate_pose())
    given = ws + 0.01
    assert torch.equal(editor.refine(face, given, steps=1, **NOTHING_ELSE).ws, given)


def float_render(editor, ws, pose) -> np.ndarray:
    """The generator's output in [-1, 1], unclamped: the tiny model's renders are a third black
    (below -1), where a uint8 picture would hide how much an edit moves the output."""
    return editor.renderer.render(ws, camera_vector(*pose), deterministic=True)["image"].numpy()


def test_edits_move_the_refined_head_as_much_as_the_base(editor, face, head):
    pose = face.estimate_pose()
    ws = head.ws
    base_view, head_view = float_render(editor, ws, pose), float_render(head, ws, pose)
    assert np.abs(base_view - head_view).mean() > 0.05  # the head did change
    for name in editor.directions.names:
        edited = editor.edit(ws, {name: 3.0})
        base_move = np.abs(float_render(editor, edited, pose) - base_view).mean()
        head_move = np.abs(float_render(head, edited, pose) - head_view).mean()
        assert 0.75 < head_move / base_move < 1.25, (name, base_move, head_move)
    precise = editor.edit(ws, {"smile": 3.0}, precise=True)
    assert torch.equal(head.edit(ws, {"smile": 3.0}, precise=True), precise)  # the same directions


def test_every_output_of_the_head_comes_from_the_tuned_weights(editor, head, tmp_path):
    import imageio_ffmpeg

    from preim3d.cameras import turntable_path
    from preim3d.rendering import to_uint8

    ws = editor.edit(head.ws, {"smile": 2.0})
    # views: converted to uint8 on the device, as the editor's, from the tuned weights
    (view,) = head.views(ws, [0.3], [0.1])
    tuned = to_uint8(head.renderer.render(ws, camera_vector(0.3, 0.1), deterministic=True)["image"])[0]
    assert np.array_equal(pixels(view), tuned)
    assert np.abs(pixels(view) - pixels(editor.views(ws, [0.3], [0.1])[0])).mean() > 1
    assert np.abs(pixels(head.depth(ws, 0.3)) - pixels(editor.depth(ws, 0.3))).mean() > 1
    assert np.abs(pixels(head.grid(ws)) - pixels(editor.grid(ws))).mean() > 1
    # the turntable's frames are the head's renders, not the base's
    video = head.turntable(ws, tmp_path / "head.mp4", frames=2, fps=2)
    frames = imageio_ffmpeg.read_frames(str(video))
    width, height = next(frames)["size"]
    cameras = turntable_path(2)
    for frame, camera in zip(frames, cameras):
        frame = np.frombuffer(frame, np.uint8).reshape(height, width, 3).astype(np.float64)
        head_error, base_error = (
            np.abs(frame - to_uint8(e.renderer.render(ws, camera, deterministic=True)["image"])[0]).mean()
            for e in (head, editor)
        )
        assert head_error < 0.5 * base_error, (head_error, base_error)


@pytest.fixture(scope="module")
def unregularised(editor, face, head):
    """The same tuning without the side-view and locality terms."""
    return editor.refine(face, head.ws, steps=STEPS, **{**QUICK, "view_weight": 0, "locality_weight": 0})


def test_other_codes_change_less_with_the_locality_term(editor, face, head, unregularised):
    # On the tiny random model every code renders much alike (its mapping network gives nearly one
    # code for every z), so tuning moves all of them almost as much as the photo's: what is checked
    # is that PTI's term keeps its codes closer than tuning without it does (bench_refine.py
    # measures how little other codes move on the full-size generator).
    # Checked on the regularising codes and on codes the tuning never saw (other seeds, and the
    # mapping's own codes).
    pose = face.estimate_pose()
    z = torch.randn(2, editor.generator.z_dim, generator=torch.Generator().manual_seed(7))
    unseen = editor.generator.mapping(z, camera_vector().expand(2, -1), truncation_psi=0.7)
    others = [locality_codes(editor.generator, head.ws, 2, seed=seed) for seed in (0, 9)]
    for w in torch.cat([*others, unseen]):
        before = float_render(editor, w[None], pose)
        kept, unkept = (np.abs(float_render(e, w[None], pose) - before).mean() for e in (head, unregularised))
        assert kept < 0.9 * unkept, (kept, unkept)


def test_side_views_keep_the_geometry(editor, face, head, unregularised):
    yaw, pitch = face.estimate_pose()
    for side in (yaw - 0.8, yaw + 0.8):
        camera = camera_vector(side, pitch)
        before = editor.renderer.render(head.ws, camera, deterministic=True)["image_depth"]
        kept, unkept = (
            (e.renderer.render(head.ws, camera, deterministic=True)["image_depth"] - before).abs().mean()
            for e in (head, unregularised)
        )
        assert kept < 0.9 * unkept, (side, kept, unkept)  # depth in world units (the box is 1 wide)


def test_save_and_load_render_bit_exact(editor, face, head, tmp_path):
    path = head.save(tmp_path / "astronaut.head.safetensors")
    assert path.stat().st_size < 2e6  # rank-8 deltas of the tiny model; a few MB at full size
    assert torch.equal(load_latent(path), head.ws)  # the file is also a latent file
    loaded = editor.load_refined(path)
    assert isinstance(loaded, RefinedHead) and loaded.settings == head.settings and loaded.pose == head.pose
    edited = editor.edit(head.ws, {"age": -2.0})
    for code in (head.ws, edited):
        assert np.array_equal(pixels(loaded.render(code, 0.3, 0.1)), pixels(head.render(code, 0.3, 0.1)))
    loaded.renderer.clear()  # and from freshly computed planes too
    assert np.array_equal(pixels(loaded.reconstruction()), pixels(head.reconstruction()))
    mesh = loaded.mesh(edited, resolution=64)
    assert len(mesh.faces) > 0


def test_loading_checks_the_file_and_the_weights(editor, head, tmp_path):
    path = head.save(tmp_path / "a.safetensors")
    other = Editor.from_pretrained(make_tiny_bundle(tmp_path / "other", seed=5), device="cpu")
    with pytest.raises(WeightsError, match="other generator weights"):
        other.load_refined(path)
    tensors = load_file(path)
    name = next(k for k in tensors if k.startswith("delta."))
    tensors[name] = tensors[name][:1]
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(LatentFileError, match="do not fit"):
        editor.load_refined(tmp_path / "bad.safetensors")
    save_file({"latents": head.ws}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(LatentFileError, match="not a refined head"):
        editor.load_refined(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(LatentFileError):
        editor.load_refined(tmp_path / "junk.safetensors")


def test_base_and_head_planes_do_not_collide_in_the_shared_cache(editor, head):
    assert head.renderer._cache is editor.renderer._cache  # one bounded cache for all heads
    editor.renderer.clear()
    ws = head.ws
    base_planes, head_planes = editor.renderer.planes(ws), head.renderer.planes(ws)
    assert not torch.equal(base_planes, head_planes)
    assert editor.renderer.planes(ws) is base_planes and head.renderer.planes(ws) is head_planes
    assert len(editor.renderer._cache) == 2


def test_deltas_share_the_base_weights(editor, head):
    G, tuned = editor.generator, head.generator
    names = tunable_parameters(G)
    assert any(".b4." in n for n in names) and any("superresolution" in n for n in names)
    assert any(n.startswith("decoder.") for n in names) and not any(".affine." in n for n in names)
    base_storage = {t.data_ptr() for t in G.state_dict().values()}
    own = [t for t in tuned.state_dict().values() if t.data_ptr() not in base_storage]
    assert sum(t.numel() for t in own) == sum(t.numel() for t in delta_state(tuned).values())
    fresh = tuned_copy(G, rank=8)
    with torch.no_grad():  # zero deltas: the copy computes exactly what G does
        for name in names:
            module, leaf = name.rsplit(".", 1)
            assert torch.equal(getattr(fresh.get_submodule(module), leaf), G.get_parameter(name))


def test_the_regularisers_pull_at_every_kth_step(editor, face):
    head = editor.refine(face, steps=7, **{**QUICK, "regularise_every": 3})
    history = head.history
    assert len(history["pixel"]) == len(history["total"]) == 7
    assert len(history["views"]) == len(history["edits"]) == len(history["locality"]) == 3  # steps 0, 3, 6
    # a plain step's total is its pixel loss alone (no LPIPS or identity term here)
    assert history["total"][1] == pytest.approx(history["pixel"][1])
    assert history["total"][0] > history["pixel"][0]
    # the tuning's renderer setting does not stay with the head
    assert head.generator.renderer.coarse_gradients


def test_settings_and_steps_are_checked(editor, face):
    with pytest.raises(InvalidValueError):
        editor.refine(face, steps=1001)
    with pytest.raises(InvalidValueError):
        editor.refine(face, steps=-1)
    with pytest.raises(ValueError):
        RefineSettings(rank=-1)
    with pytest.raises(ValueError):
        RefineSettings(regularise_every=0)
    with pytest.raises(TypeError):
        editor.refine(face, steps=1, no_such_setting=1)
    assert RefineSettings.from_json(RefineSettings(rank=4).to_json()) == RefineSettings(rank=4)
