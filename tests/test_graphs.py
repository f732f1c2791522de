"""CUDA-graph replay gives the same results as direct calls (runs only where CUDA is available)."""

import threading
import warnings

import pytest
import torch

from preim3d.networks.graphs import CUDAGraphed

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_replay_matches_direct_calls_per_shape_and_does_not_alias():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)
    ).cuda()
    graphed = CUDAGraphed(net, max_graphs=2)
    for shape in [(1, 3, 16, 16), (5, 3, 16, 16), (1, 3, 16, 16), (2, 3, 8, 8)]:
        x = torch.randn(shape, device="cuda")
        with torch.no_grad():
            expected = net(x)
        first = graphed(x)
        second = graphed(torch.randn(shape, device="cuda"))
        assert torch.allclose(first, expected, atol=1e-5)
        assert not torch.equal(first, second)  # the first result survived the next replay
    assert len(graphed._graphs) == 2


def test_several_inputs_and_nested_outputs_survive_inference_mode_captures():
    def fn(a, b):
        return {"sum": a + b, "both": (a * b, (a - b).abs().max())}

    graphed = CUDAGraphed(fn)
    a, b = torch.randn(3, 5, device="cuda"), torch.randn(3, 5, device="cuda")
    with torch.inference_mode():  # captured under inference mode, as the Editor renders
        first = graphed(a, b)
    with torch.no_grad():  # replayed outside it, as a script calling the renderer does
        second = graphed(b, a)
    torch.testing.assert_close(first["sum"], a + b)
    torch.testing.assert_close(second["both"][0], a * b)
    torch.testing.assert_close(second["both"][1], (b - a).abs().max())
    assert not second["sum"].is_inference()  # copies in the caller's mode


def test_fast_renderer_replays_graphs_like_direct_rendering():
    from eg3d_reference import TINY, fill_random

    from preim3d.cameras import camera_vector, turntable_path
    from preim3d.networks.triplane import TriPlaneGenerator
    from preim3d.rendering import TriPlaneRenderer, uint8_images

    G = TriPlaneGenerator(**TINY[0]).eval().requires_grad_(False)
    fill_random(G, 3)
    G.neural_rendering_resolution = TINY[1]
    G = G.cuda().set_precision("fast")
    ws = torch.randn(1, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    renderer = TriPlaneRenderer(G, batch_size=3)
    cameras = turntable_path(7)
    with torch.inference_mode():
        graphed = renderer.render(ws, cameras, deterministic=True)
    assert len(renderer._graphs) == 2  # the backbone's, and the rendering's (batches of 3 and 1)
    with torch.no_grad():
        planes = G.synthesize_planes(ws.cuda())
        direct = G.render_planes(planes, ws.cuda(), cameras.cuda(), deterministic=True)
        torch.testing.assert_close(renderer.planes(ws), planes, atol=1e-2, rtol=0)
        again = renderer.render(ws, camera_vector(0.3, 0.1), outputs=("image",), on_device=uint8_images)
    for key in ("image", "image_raw", "image_depth"):
        torch.testing.assert_close(graphed[key], direct[key].cpu(), atol=1e-2, rtol=0)
    assert (
        again["image"].shape == (1, G.img_resolution, G.img_resolution, 3)
        and again["image"].dtype == torch.uint8
    )


def test_a_refined_head_and_its_editor_never_replay_each_others_graphs(tiny_bundle):
    from preim3d.cameras import turntable_path
    from preim3d.pipeline import Editor, RefinedHead
    from preim3d.refine import RefineSettings, delta_state, tuned_copy

    # no tri-plane cache: every render runs the backbone's graph as well as the rendering's
    editor = Editor.from_pretrained(tiny_bundle, "cuda", precision="fast", deterministic=True, cache_size=0)
    settings = RefineSettings(rank=4, seed=1)
    tuned = tuned_copy(editor.generator, settings.rank, settings.seed).requires_grad_(False)
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():  # deltas as a tuning would leave them (B starts at zero)
        for value in delta_state(tuned).values():
            value.copy_(torch.randn(value.shape, generator=noise) * 0.05)
    head = RefinedHead(editor, tuned, editor.latent_avg.cpu(), (0.0, 0.0), settings, ())
    ws, cameras = head.ws.cuda(), turntable_path(5).cuda()

    def direct(G):  # without graphs
        with torch.no_grad():
            return G.render_planes(G.synthesize_planes(ws), ws, cameras, deterministic=True)["image"].cpu()

    expected = {"base": direct(editor.generator), "head": direct(tuned)}
    assert (expected["base"] - expected["head"]).abs().mean() > 0.05  # 0.12 on the CPU in float32
    # captures alternate between the two generators, then each replays after the other's replay
    for name in ("base", "head", "base", "head"):
        viewer = editor if name == "base" else head
        with torch.inference_mode():
            image = viewer.renderer.render(ws, cameras, deterministic=True, outputs=("image",))["image"]
        torch.testing.assert_close(image, expected[name], atol=1e-2, rtol=0)
    ours, theirs = ({id(g) for g in e.renderer._graphs.values()} for e in (editor, head))
    assert len(ours) == len(theirs) == 2 and not ours & theirs


def tuning_problem():
    """A tiny random generator on the GPU, a code and a target image for refine_generator."""
    from eg3d_reference import TINY, fill_random

    from preim3d.networks.triplane import TriPlaneGenerator

    G = TriPlaneGenerator(**TINY[0]).eval().requires_grad_(False)
    fill_random(G, 3)
    G.neural_rendering_resolution = TINY[1]
    gen = torch.Generator().manual_seed(0)
    ws = torch.randn(1, G.num_ws, G.w_dim, generator=gen)
    target = torch.rand(1, 3, G.img_resolution, G.img_resolution, generator=gen) * 2 - 1
    return G.cuda(), ws.cuda(), target.cuda()


# 10 steps, every other one regularised: each kind of step runs twice, is captured, then replays
FEW_STEPS = {"steps": 10, "regularise_every": 2, "edit_directions": 2, "locality_codes": 1}


def test_refining_through_graphs_tunes_as_direct_steps_do():
    from preim3d.refine import RefineSettings, refine_generator

    G, ws, target = tuning_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a capture that fails warns
        graphed = refine_generator(G, ws, target, settings=RefineSettings(**FEW_STEPS), lpips=False)
    direct = refine_generator(G, ws, target, settings=RefineSettings(graphs=False, **FEW_STEPS), lpips=False)
    for key, values in direct.history.items():
        expected = torch.tensor(values)
        torch.testing.assert_close(torch.tensor(graphed.history[key]), expected, rtol=0.02, atol=1e-4)
    assert direct.history["pixel"][-1] < 0.9 * direct.history["pixel"][0]  # it did tune


def test_captures_leave_other_threads_working_on_the_gpu():
    """The page's two lanes: one refines or renders for the first time (capturing graphs) while the
    other renders and copies its results to the host."""
    from preim3d.refine import RefineSettings, refine_generator

    G, ws, target = tuning_problem()
    stop, errors, waits = threading.Event(), [], []

    def other_lane():
        while not stop.is_set():
            try:
                waits.append(torch.ones(4096, device="cuda").sum().item())  # waits for the GPU
            except Exception as exc:  # what a capture in the process-wide mode makes of it
                errors.append(exc)

    thread = threading.Thread(target=other_lane)
    thread.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a capture that fails warns
            for _ in range(3):
                refine_generator(G, ws, target, settings=RefineSettings(**FEW_STEPS), lpips=False)
                CUDAGraphed(lambda a: a * 2)(torch.randn(64, device="cuda"))
    finally:
        stop.set()
        thread.join()
    assert not errors and len(waits) > 10
