"""The evaluation: each metric on real photos or exact scenes, moving the right way under controlled changes,
and the whole report on the tiny random-weight bundle with the astronaut photo."""

import csv
import math
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from preim3d import cli
from preim3d.align import align_face
from preim3d.cameras import camera_vector
from preim3d.distributed import Processes
from preim3d.editing import CODE_DIM, DirectionBank
from preim3d.evaluation import evaluate
from preim3d.evaluation.consistency import reproject
from preim3d.evaluation.editing import latent_leakage, plain_and_precise
from preim3d.evaluation.identity import ArcFaceIdentity, DlibIdentity, cosine, similarity_matrix
from preim3d.evaluation.metrics import (
    _lpips_model,
    image_metrics,
    lpips_distance,
    lpips_status,
    mse,
    psnr,
    ssim,
)
from preim3d.evaluation.speed import time_call
from preim3d.networks.renderer import camera_rays
from preim3d.pipeline import Editor
from preim3d.plots import heatmap, line_chart, nice_ticks

# ----------------------------------------------------------------------------- real photos


@pytest.fixture(scope="module")
def crop():
    """The astronaut's aligned 512 crop."""
    return align_face(data.astronaut()).image


@pytest.fixture(scope="module")
def other_face():
    """A different person: a face of skimage's LFW subset (25 px, upscaled)."""
    face = (data.lfw_subset()[0] * 255).astype(np.uint8)
    return Image.fromarray(face).convert("RGB").resize((200, 200), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def dlib_model():
    return DlibIdentity()


def shifted(image, dx=12, dy=8):
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), Image.Resampling.BICUBIC)


def test_pixel_metrics_fall_as_the_reconstruction_gets_worse(crop):
    assert mse(crop, crop) == 0 and psnr(crop, crop) == math.inf and ssim(crop, crop) == pytest.approx(1)
    mild, strong = (crop.filter(ImageFilter.GaussianBlur(r)) for r in (1, 4))
    assert 0 < mse(crop, mild) < mse(crop, strong)
    assert psnr(crop, mild) > psnr(crop, strong) > 15
    assert 1 > ssim(crop, mild) > ssim(crop, strong)
    # PSNR is 10 log10(1 / MSE) in [0, 1] units
    assert psnr(crop, strong) == pytest.approx(10 * math.log10(1 / mse(crop, strong)))
    # a 512 crop against a 128 render: the crop is downsampled, so an exact downsample scores near-perfectly
    small = crop.resize((128, 128), Image.Resampling.LANCZOS)
    assert psnr(crop, small) > 45 and psnr(small, crop) == psnr(crop, small)
    assert psnr(crop, small.filter(ImageFilter.GaussianBlur(1))) < 35
    metrics = image_metrics(crop, mild)
    assert set(metrics) == {"mse", "psnr", "ssim", "lpips"}
    if lpips_status() is None:
        assert lpips_distance(crop, crop) < lpips_distance(crop, mild) < lpips_distance(crop, strong)
    else:  # not installed here: reported as missing, never as a number
        assert metrics["lpips"] is None and "lpips" in lpips_status()


@pytest.fixture
def fresh_lpips():
    """The cached LPIPS model forgotten before and after the test."""
    _lpips_model.cache_clear()
    yield
    _lpips_model.cache_clear()


def test_lpips_missing_is_reported_as_missing(fresh_lpips, monkeypatch, crop):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail as if not installed
    assert "not installed" in lpips_status() and "pip install lpips" in lpips_status()
    assert image_metrics(crop, crop)["lpips"] is None


def test_lpips_failing_otherwise_raises_its_own_error(fresh_lpips, monkeypatch, tmp_path, crop):
    class UnreachableWeights:
        def __init__(self, **kwargs):
            raise OSError("AlexNet weights unreachable")

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=UnreachableWeights))
    with pytest.raises(OSError, match="AlexNet weights unreachable"):
        image_metrics(crop, crop)
    (tmp_path / "lpips.py").write_text("import a_package_lpips_needs\n")  # installed, but broken
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lpips")
    with pytest.raises(ModuleNotFoundError, match="a_package_lpips_needs"):
        lpips_status()


def test_identity_is_kept_by_shifts_blur_and_size_but_not_by_another_face(crop, other_face, dlib_model):
    reference = dlib_model.embed(crop)
    assert reference.detected and np.linalg.norm(reference.vector) == pytest.approx(1)
    assert cosine(reference, dlib_model.embed(crop)) == pytest.approx(1)
    same = {
        "shifted": shifted(crop),
        "blurred": crop.filter(ImageFilter.GaussianBlur(2)),
        "render size": crop.resize((128, 128), Image.Resampling.LANCZOS),
        "mirrored": crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    }
    similar = {name: cosine(reference, dlib_model.embed(image)) for name, image in same.items()}
    different = cosine(reference, dlib_model.embed(other_face))
    assert min(similar.values()) > 0.95, similar
    assert different < 0.9 and min(similar.values()) - different > 0.08
    # a stronger blur moves the embedding further than a mild one
    assert cosine(reference, dlib_model.embed(crop.filter(ImageFilter.GaussianBlur(5)))) < similar["blurred"]
    # a set of views with one wrong-identity view: that view is the least similar to the others
    views = [
        dlib_model.embed(v)
        for v in (crop, shifted(crop), crop.filter(ImageFilter.GaussianBlur(1)), other_face)
    ]
    between = similarity_matrix(views)
    mean_to_others = (between.sum(1) - np.diag(between)) / 3
    assert int(np.argmin(mean_to_others)) == 3


def test_identity_without_a_detected_face_uses_the_crop_box(dlib_model):
    cat = Image.fromarray(data.chelsea())
    embedding = dlib_model.embed(cat)
    assert not embedding.detected and np.isfinite(embedding.vector).all()


def test_arcface_identity_matches_the_identity_loss_preprocessing(crop, other_face):
    training = pytest.importorskip("preim3d.training.identity")
    torch.manual_seed(0)
    net = training.ArcFaceBackbone(
        input_size=32,
        stage_units=(1, 1, 1, 1),
        stage_channels=(8, 8, 16, 16),
        stem_channels=8,
        embedding_dim=32,
        se_reduction=4,
    ).eval()
    model = ArcFaceIdentity(net)
    embedding = model.embed(crop)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255).permute(2, 0, 1)[None] * 2 - 1
    expected = training.IdentityLoss(net).embed(x)[0].double().numpy()  # PREIM3D's loss: pooled whole crop
    np.testing.assert_allclose(embedding.vector, expected / np.linalg.norm(expected), atol=1e-5)
    assert cosine(embedding, model.embed(crop)) == pytest.approx(1)
    assert cosine(embedding, model.embed(other_face)) < 0.999


# ----------------------------------------------------------------------------- reprojection


def sphere_scene(c, size=128):
    """An exact scene: a textured sphere before a textured backdrop plane, ray-cast from camera c [25].

    Returns the image [1,3,S,S] in [-1,1] and the ray depth [1,1,S,S]; colour is a smooth function
    of the 3-D point, so a correct warp matches up to interpolation error.
    """
    c = torch.as_tensor(c, dtype=torch.float32).reshape(1, 25)
    origins, directions = camera_rays(c[:, :16].view(1, 4, 4), c[:, 16:].view(1, 3, 3), size)
    o, d = origins[0].double(), directions[0].double()
    centre, radius = torch.tensor([0.0, 0.0, 0.1], dtype=torch.float64), 0.4
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius**2)
    t_sphere = torch.where(disc > 0, -b - disc.clamp_min(0).sqrt(), torch.inf)
    t_plane = (-0.5 - o[:, 2]) / d[:, 2]  # backdrop z = -0.5, facing the cameras
    t = torch.minimum(t_sphere, t_plane)
    p = o + t[:, None] * d
    rgb = (
        torch.stack(
            [
                torch.sin(7 * p[:, 0]) * torch.cos(5 * p[:, 1]),
                torch.sin(6 * p[:, 1] + 3 * p[:, 2]),
                torch.cos(8 * p[:, 0] - 4 * p[:, 2]),
            ],
            0,
        )
        * 0.8
    )
    return rgb.reshape(1, 3, size, size).float(), t.reshape(1, 1, size, size).float()


def test_reprojection_is_exact_on_a_ray_cast_scene():
    c_a, c_b = camera_vector(0.3, 0.1), camera_vector(0.0, 0.0)
    image_a, depth_a = sphere_scene(c_a)
    image_b, depth_b = sphere_scene(c_b)
    itself = reproject(image_a, depth_a, c_a, image_a, depth_a, c_a)
    assert itself.error.item() < 1e-3 and itself.covisible.item() == 1
    other = reproject(image_a, depth_a, c_a, image_b, depth_b, c_b)
    # co-visible pixels match up to bilinear interpolation; part of the backdrop seen from A is
    # hidden behind the sphere from B (or leaves B's frame) and is left out
    assert other.error.item() < 0.5 and 0.8 < other.covisible.item() < 1
    assert not other.mask.all()
    for wrong in (depth_a + 0.1, torch.full_like(depth_a, depth_a.median().item()), depth_a.flip(-1)):
        check = reproject(image_a, wrong, c_a, image_b, depth_b, c_b)
        assert check.error.item() > 10 * other.error.item()
    # images finer than the depth (the super-resolved case): the depth is read bilinearly
    fine_a, fine_b = sphere_scene(c_a, 256)[0], sphere_scene(c_b, 256)[0]
    coarse = reproject(fine_a, sphere_scene(c_a, 64)[1], c_a, fine_b, sphere_scene(c_b, 64)[1], c_b)
    assert coarse.mask.shape == (1, 256, 256)
    assert coarse.error.item() < 0.5 and coarse.covisible.item() == pytest.approx(
        other.covisible.item(), abs=0.02
    )


def test_reprojection_on_the_tiny_generator(tiny_bundle):
    editor = Editor.from_bundle(tiny_bundle, device="cpu")
    ws = editor.latent_avg.cpu() + 0.5 * editor.directions.direction("Smiling")
    yaws = [0.0, 0.05, 0.6]
    c = camera_vector(yaws, [0.0] * 3)
    out = editor.renderer.render(ws, c, deterministic=True)
    for key in ("image_raw", "image"):  # the raw render with its own depth, the super-resolved one upsampled
        image, depth = out[key], out["image_depth"]
        errors = [
            reproject(image[:1], depth[:1], c[0], image[k : k + 1], depth[k : k + 1], c[k]).error.item()
            for k in range(3)
        ]
        assert errors[0] < 1e-3, key  # a view warped onto itself
        assert errors[1] < errors[2], (key, errors)  # a nearby view agrees better than a far one
        # a depth off by 0.1 or 0.05 world units (the head is ~0.5 deep) misplaces the far view's colours
        for offset in (-0.1, 0.05):
            wrong = reproject(image[:1], depth[:1] + offset, c[0], image[2:], depth[2:], c[2]).error.item()
            assert wrong > 1.25 * errors[2], (key, offset, wrong, errors)


# ----------------------------------------------------------------------------- editing precision


def entangled_bank(cosine_smile_male: float) -> DirectionBank:
    """Smiling, Male with the given cosine to Smiling, and Young orthogonal to both."""
    basis, _ = torch.linalg.qr(
        torch.randn(CODE_DIM, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    a, b, young = basis.T
    male = cosine_smile_male * a + math.sqrt(1 - cosine_smile_male**2) * b
    return DirectionBank({"Smiling": a.float(), "Male": male.float(), "Young": young.float()})


def test_plain_edits_leak_as_the_directions_are_entangled_and_precise_ones_do_not():
    ws = torch.randn(1, 14, 512, generator=torch.Generator().manual_seed(1))
    leaks = {}
    for entanglement in (0.3, 0.8):
        bank = entangled_bank(entanglement)
        edits = plain_and_precise(bank, ws, "smile", 3.0)
        plain = latent_leakage(bank, ws, edits["plain"], "smile", 3.0)
        precise = latent_leakage(bank, ws, edits["precise"], "smile", 3.0)
        assert plain["target_shift"] == pytest.approx(1, abs=1e-5)
        assert precise["target_shift"] == pytest.approx(1, abs=1e-5)
        assert plain["leakage"]["Male"] == pytest.approx(entanglement, abs=1e-5)
        assert plain["leakage"]["Young"] == pytest.approx(0, abs=1e-5)
        assert plain["max_leak_attribute"] == "Male"
        assert precise["max_leak"] < 1e-5 < plain["mean_leak"]
        assert precise["step"] > plain["step"] == pytest.approx(3, rel=1e-5)  # precision costs a longer step
        leaks[entanglement] = plain["mean_leak"]
    assert leaks[0.8] > leaks[0.3]
    # the target is never held, and a target inside the span of the held directions has no precise edit
    torch.testing.assert_close(
        plain_and_precise(bank, ws, "smile", 3.0, hold=["Smiling", "Young"])["precise"],
        plain_and_precise(bank, ws, "smile", 3.0, hold=["Young"])["precise"],
    )
    degenerate = DirectionBank(
        {
            "Smiling": bank.direction("Smiling"),
            "Young": bank.direction("Young"),
            "Male": bank.direction("Smiling") + bank.direction("Young"),
        }
    )
    with pytest.raises(ValueError, match="combination"):
        plain_and_precise(degenerate, ws, "smile", 3.0)
    # an alias with a sign: age = -Young, so +3 age lowers Young's score and counts as a shift of +1
    bank = entangled_bank(0.5)
    older = latent_leakage(bank, ws, bank.apply(ws, {"age": 3.0}), "age", 3.0)
    assert older["target_shift"] == pytest.approx(1, abs=1e-5) and "Young" not in older["leakage"]


# ----------------------------------------------------------------------------- speed and plots


def test_time_call_reports_milliseconds_and_returns_the_result():
    calls = []

    def step():
        calls.append(1)
        time.sleep(0.01)
        return len(calls)

    timing, result = time_call(step, repeats=2)
    assert len(calls) == 3 and result == 3  # the first (cold) call, then the repeats
    assert timing["repeats"] == 2 and timing["cold_ms"] >= 10 and timing["ms"] >= timing["min_ms"] >= 10
    with pytest.raises(ValueError):
        time_call(step, repeats=0)


def test_ticks_cover_the_data_with_round_steps():
    assert nice_ticks(0.83, 0.856) == [0.83, 0.84, 0.85, 0.86]
    assert nice_ticks(-22.9, 22.9) == [-40, -20, 0, 20, 40]
    assert nice_ticks(0.5, 0.5)[0] <= 0.5 <= nice_ticks(0.5, 0.5)[-1]


def test_line_chart_and_heatmap_draw_the_values():
    chart = np.asarray(
        line_chart({"a": [(0, 0.0), (1, math.nan), (2, 1.0)], "b": [(0, 1.0), (2, 0.0)]}, "title", "x", "y")
    )
    blue, red = np.array([31, 119, 180]), np.array([214, 39, 40])
    for colour in (blue, red):
        assert (np.abs(chart.astype(int) - colour).sum(-1) < 10).sum() > 50  # each series is drawn
    cells = np.asarray(heatmap([[1.0, -1.0, math.nan]], ["row"], ["pos", "neg", "none"], "t", cell=40))
    reds = (np.abs(cells.astype(int) - [178, 24, 43]).sum(-1) < 10).sum()
    blues = (np.abs(cells.astype(int) - [33, 102, 172]).sum(-1) < 10).sum()
    greys = (np.abs(cells.astype(int) - [200, 200, 200]).sum(-1) < 4).sum()
    assert min(reds, blues, greys) > 600  # most of each 40 x 40 cell, less the printed value


# ----------------------------------------------------------------------------- the whole report

GRID = dict(yaws=(-0.4, 0.0, 0.4), pitches=(0.0,))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, astronaut_png):
    """The astronaut, its mirror image (both with labels) and a photo without a face."""
    folder = tmp_path_factory.mktemp("eval_photos")
    astronaut = Image.open(astronaut_png)
    astronaut.save(folder / "astronaut.png")
    astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "mirrored.png")
    Image.new("RGB", (160, 120), (128, 128, 128)).save(folder / "wall.png")
    labels = folder.parent / "labels.csv"
    labels.write_text("file,Smiling,Young\nastronaut.png,1,1\nmirrored.png,-1,1\n")
    return folder, labels


@pytest.fixture(scope="module")
def report(tiny_bundle, photo_folder, tmp_path_factory):
    folder, labels = photo_folder
    editor = Editor.from_bundle(tiny_bundle, device="cpu")
    out = tmp_path_factory.mktemp("report")
    return evaluate(editor, folder, labels, out, edits={"smile": 3.0, "age": 2.0}, repeats=1, **GRID), out


def test_report_measures_every_photo_view_and_edit(report):
    report, _ = report
    assert report.photos == ["astronaut.png", "mirrored.png"]
    assert list(report.skipped) == ["wall.png"] and "No face" in report.skipped["wall.png"]
    for row in report.inversion:
        assert 0 < row["mse"] < 1 and math.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1
        assert -1 <= row["identity"] <= 1
    assert len(report.views) == 2 * 3
    for row in report.views:
        assert all(
            math.isfinite(row[k])
            for k in (
                "identity_to_input",
                "identity_to_views",
                "reprojection_raw",
                "reprojection_final",
                "covisible_raw",
                "covisible_final",
            )
        )
        if row["yaw_deg"] == 0:  # the frontal view warped onto itself
            assert row["reprojection_raw"] < 1e-3 and row["covisible_raw"] == 1
        else:
            assert row["reprojection_raw"] > 1e-2 and row["covisible_raw"] < 1
    assert len(report.edits) == 2 * 2 * 2  # photos x edits x (plain, precise)
    by_mode = {mode: [r for r in report.edits if r["mode"] == mode] for mode in ("plain", "precise")}
    for plain, precise in zip(by_mode["plain"], by_mode["precise"]):
        assert plain["target_shift"] == pytest.approx(1, abs=1e-4) == precise["target_shift"]
        assert precise["mean_leak"] < 1e-5 < plain["mean_leak"]
        assert -1 <= plain["identity"] <= 1 and -1 <= precise["identity"] <= 1
    # the labels say the astronaut smiles and the mirrored copy does not: smile edits go the other way
    strengths = {(r["photo"], r["edit"]): r["strength"] for r in report.edits}
    assert strengths[("astronaut.png", "smile")] == -3 and strengths[("mirrored.png", "smile")] == 3
    assert strengths[("astronaut.png", "age")] == 2  # labelled young: ageing moves away from it already
    assert [r["attribute"] for r in report.attributes] == ["Smiling"]  # Young has only positives
    assert report.attributes[0]["auc"] in (0.0, 1.0)
    assert [r["stage"] for r in report.speed] == [
        "align",
        "invert",
        "edit",
        "edit_precise",
        "render",
        "render_cached",
    ]
    assert all(r["ms"] > 0 for r in report.speed)
    assert (
        report.environment["device"] == "cpu"
        and "random_weights" in report.environment["weights generator provenance"]
    )


def test_report_files_are_complete(report):
    report, out = report
    names = {p.name for p in out.iterdir()}
    assert names == {
        "report.md",
        "environment.json",
        "summary.csv",
        "inversion.csv",
        "views.csv",
        "editing.csv",
        "leakage.csv",
        "attributes.csv",
        "speed.csv",
        "identity_curve.png",
        "reprojection_curve.png",
        "leakage.png",
        "examples.png",
    }
    examples = Image.open(out / "examples.png")
    # two photo rows of 128 px tiles: input, reconstruction, 3 views, 2 edits x (plain, precise)
    assert examples.height == 24 + 2 * 128 and examples.width > 9 * 128
    assert np.asarray(examples.convert("L")).std() > 20
    for name in ("identity_curve.png", "reprojection_curve.png", "leakage.png"):
        assert np.asarray(Image.open(out / name).convert("L")).std() > 20
    markdown = (out / "report.md").read_text()
    for heading in (
        "## Summary",
        "## Inversion",
        "## 3D consistency",
        "## Editing precision",
        "## Speed",
        "## Examples",
        "## Environment",
        "## Skipped",
        "## Attribute scores",
    ):
        assert heading in markdown
    for name in names - {"report.md"}:
        if name.endswith(".png"):
            assert f"]({name})" in markdown
    # every summary metric has a value except LPIPS without the lpips package
    summary = list(csv.DictReader(open(out / "summary.csv")))
    missing = [r["metric"] for r in summary if r["value"] == ""]
    assert missing == ([] if lpips_status() is None else ["lpips"])
    views = list(csv.DictReader(open(out / "views.csv")))
    assert len(views) == 6 and {"yaw_deg", "reprojection_raw", "identity_to_input"} <= set(views[0])


class TwoProcessesInTurn(Processes):
    """Two processes run one after the other: the second hands its share to the first's gather."""

    handed = None

    def gather(self, obj):
        if self.rank == 1:
            TwoProcessesInTurn.handed = obj
            return None
        return [obj, TwoProcessesInTurn.handed]


def test_two_processes_each_measure_every_other_photo_into_the_same_report(report, photo_folder, tiny_bundle):
    one, _ = report
    folder, labels = photo_folder
    editor = Editor.from_bundle(tiny_bundle, device="cpu")
    lines = {0: [], 1: []}
    reports = {
        rank: evaluate(
            editor,
            folder,
            labels,
            edits={"smile": 3.0, "age": 2.0},
            repeats=1,
            processes=TwoProcessesInTurn(rank=rank, world_size=2),
            log=lines[rank].append,
            **GRID,
        )
        for rank in (1, 0)
    }
    assert reports[1] is None
    assert [line.split(":")[0] for line in lines[0] + lines[1]] == [
        "astronaut.png",
        "wall.png",
        "speed",
        "mirrored.png",
    ]
    two = reports[0]
    for part in ("photos", "skipped", "inversion", "views", "edits", "leakage", "attributes"):
        assert getattr(two, part) == getattr(one, part), part
    assert np.array_equal(np.asarray(two.figures["examples.png"]), np.asarray(one.figures["examples.png"]))


def test_evaluate_command(tiny_bundle, astronaut_png, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        [
            "evaluate",
            "--photos",
            str(astronaut_png),
            "--weights",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--out",
            str(out),
            "--yaws=-20,20",
            "--pitches",
            "0",
            "--edit",
            "glasses=2",
            "--repeats",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "astronaut.png: PSNR" in printed and f"wrote the report to {out / 'report.md'}" in printed
    assert "| glasses | +2 | precise |" in (out / "report.md").read_text()
    assert len(list(csv.DictReader(open(out / "views.csv")))) == 2
    code = cli.main(
        ["evaluate", "--photos", str(astronaut_png), "--weights", str(tiny_bundle), "--yaws", "left"]
    )
    assert code == 1 and "--yaws 'left'" in capsys.readouterr().err
