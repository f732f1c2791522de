"""Face alignment: crops agree with EG3D's geometry, survive rotation / scale / shift, map back exactly.

The photo is skimage's astronaut (NASA portrait, public domain), shipped inside scikit-image.
An optional test compares with EG3D-style crops made by the official preprocessing, when a
PREIM3D checkout is given: PREIM3D_OFFICIAL_PREIM3D=/path/to/Preim3D.
"""

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

import preim3d
from preim3d import align
from preim3d.errors import FaceTooSmallError, InputImageError, NoFaceError
from preim3d.head_template import LANDMARKS_3D, MIRROR

# Mean 5-point positions (eyes = corner means, nose = mean(30, 33), mouth corners) of dlib's
# landmarks in the 20 EG3D-style crops of PREIM3D's data/test, in 512-px crop pixels.
EG3D_FIVE_POINTS = np.array([[192.6, 210.3], [325.9, 209.5], [263.0, 298.4], [202.2, 344.9], [315.1, 344.0]])


def mean_displacement(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b), axis=-1).mean())


def similarity(angle_deg, scale, centre, size):
    """3x3 map photo -> canvas: rotate by angle (clockwise on screen),
    scale, put the photo centre at centre."""
    t = math.radians(angle_deg)
    rot = scale * np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = np.asarray(centre, float) - rot @ (np.asarray(size, float) / 2)
    return m


def place(photo, matrix, canvas_size):
    inverse = np.linalg.inv(matrix)
    return photo.transform(
        canvas_size,
        Image.Transform.AFFINE,
        tuple(inverse[:2].ravel()),
        resample=Image.Resampling.BICUBIC,
        fillcolor=(120, 130, 140),
    )


@pytest.fixture(scope="module")
def photo():
    # 2x the stored 512 px so that the 0.5x case below still has a face of ~90 px
    return Image.fromarray(data.astronaut()).resize((1024, 1024), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def face(photo):
    return preim3d.align_face(photo)


def test_models_are_found_without_importing_their_package():
    code = (
        "import sys, os; from preim3d import align; "
        "paths = [align.dlib_model_path(n) for n in ('shape_predictor_68_face_landmarks.dat', "
        "'mmod_human_face_detector.dat')]; "
        "assert all(os.path.isfile(p) for p in paths), paths; "
        "assert 'face_recognition_models' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_astronaut_aligns_like_eg3d_crops(face, photo):
    assert isinstance(face, preim3d.AlignedFace)
    assert face.image.size == (512, 512) and face.image.mode == "RGB"
    assert face.landmarks.shape == (68, 2) and face.original_size == photo.size
    left, top, right, bottom = face.box
    assert 0 <= left < right <= photo.width and 0 <= top < bottom <= photo.height
    five = align._five_points(face.crop_landmarks)
    # eyes level after roll normalisation (the photo's own eye line is tilted by ~3 degrees)
    assert abs(math.degrees(face.roll)) > 1.5
    assert abs(math.degrees(math.atan2(five[1, 1] - five[0, 1], five[1, 0] - five[0, 0]))) < 1.0
    # eye and mouth midpoints and eye distance where EG3D's crops put them (they spread by
    # ~8 px there: the astronaut, seen slightly from above, has hers ~12 px lower)
    for pair in ((0, 1), (3, 4)):
        assert mean_displacement(five[list(pair)].mean(0), EG3D_FIVE_POINTS[list(pair)].mean(0)) < 16
    eye_distance = np.linalg.norm(five[1] - five[0])
    assert abs(eye_distance / np.linalg.norm(EG3D_FIVE_POINTS[1] - EG3D_FIVE_POINTS[0]) - 1) < 0.1


def test_crop_content_matches_the_mapped_landmarks(face):
    # landmarks found again in the crop sit where the transform says: the warp and the matrices
    # use the same pixel convention
    again = align._landmarks(face.image, preim3d.detect_faces(face.image)[0].box)
    assert mean_displacement(again, face.crop_landmarks) < 1.5
    np.testing.assert_allclose(face.to_original(face.to_crop(face.landmarks)), face.landmarks, atol=1e-9)
    np.testing.assert_allclose(face.original_from_crop @ face.crop_from_original, np.eye(3), atol=1e-12)
    assert face.scale * 512 == pytest.approx(
        np.linalg.norm(face.to_original([[512, 0]]) - face.to_original([[0, 0]]))
    )


def test_aligning_an_aligned_crop_is_idempotent(face):
    again = preim3d.align_face(face.image)
    lm = again.landmarks
    assert mean_displacement(again.to_crop(lm), lm) < 1.5
    assert abs(again.scale - 1) < 0.01 and abs(again.roll) < math.radians(0.5)


@pytest.mark.parametrize(
    "angle, scale, shift",
    [
        (20, 1.0, (150, -60)),
        (-20, 1.0, (-200, 90)),
        (0, 0.5, (420, 300)),
        (-20, 2.0, (300, 450)),
        (20, 0.5, (-500, -400)),
        (-8, 1.5, (250, 200)),
    ],
)
def test_rotated_scaled_shifted_face_gives_the_same_crop(photo, face, angle, scale, shift):
    canvas_size = (1700, 1400)
    centre = np.array(canvas_size) / 2 + shift
    matrix = similarity(angle, scale, centre, photo.size)
    moved = preim3d.align_face(place(photo, matrix, canvas_size))
    # reference landmarks carried into the canvas, then into each crop: ideally the same points
    p = face.landmarks
    canvas_points = p @ matrix[:2, :2].T + matrix[:2, 2]
    assert mean_displacement(moved.to_crop(canvas_points), face.to_crop(p)) <= 3.0
    assert math.degrees(moved.roll - face.roll) == pytest.approx(angle, abs=1.0)


def test_inputs_of_every_kind_align_the_same(photo, face, tmp_path):
    small = photo.resize((512, 512), Image.Resampling.LANCZOS)
    reference = preim3d.align_face(small).crop_landmarks
    buf = io.BytesIO()
    small.save(buf, "PNG")
    path = tmp_path / "astronaut.png"
    path.write_bytes(buf.getvalue())
    for source in (np.asarray(small), buf.getvalue(), path, str(path), small.convert("RGBA")):
        assert mean_displacement(preim3d.align_face(source).crop_landmarks, reference) < 0.5


def test_exif_rotated_photo_aligns_upright(tmp_path):
    upright = Image.fromarray(data.astronaut())
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned 90 degrees clockwise; view by turning it back
    path = tmp_path / "sideways.jpg"
    upright.transpose(Image.Transpose.ROTATE_270).save(path, exif=exif, quality=95)
    sideways = preim3d.align_face(path)
    straight = preim3d.align_face(upright)
    assert sideways.original_size == upright.size
    assert mean_displacement(sideways.landmarks, straight.landmarks) < 3.0


def test_large_photo_is_downscaled_for_detection(monkeypatch, photo):
    seen = []
    original = align._gray

    def spy(image, scale):
        gray = original(image, scale)
        seen.append(gray.shape)
        return gray

    monkeypatch.setattr(align, "_gray", spy)
    big = Image.new("RGB", (6000, 4000), (128, 128, 128))  # 24 MP, the face ~900 px wide
    big.paste(photo.crop((200, 0, 800, 600)).resize((3000, 3000)), (2500, 500))
    aligned = preim3d.align_face(big)  # the default face: one look at a 640 px copy
    assert len(seen) == 1 and max(seen[0]) <= 640
    left, top, right, bottom = aligned.box
    assert 3500 < (left + right) / 2 < 4500 and 1000 < (top + bottom) / 2 < 2000
    seen.clear()
    faces = preim3d.detect_faces(big)  # all faces: smaller ones too, within a 4 MP budget
    assert len(seen) == 1 and seen[0][0] * seen[0][1] <= 4_000_000
    centre = np.reshape(faces[0].box, (2, 2)).mean(0)
    assert np.linalg.norm(centre - np.reshape(aligned.box, (2, 2)).mean(0)) < 0.1 * faces[0].size


def test_detect_faces_lists_faces_largest_first(photo):
    canvas = Image.new("RGB", (1600, 1100), (128, 128, 128))
    canvas.paste(photo.resize((512, 512)), (1050, 500))
    canvas.paste(photo, (0, 0))
    faces = preim3d.detect_faces(canvas)
    big = faces[0]
    assert big.box[2] < 1024 and big.size > 150
    # the small face is listed too, at its place (HOG may add a weak false positive on the suit)
    index, small = next((i, f) for i, f in enumerate(faces) if f.box[0] > 1050 and f.box[1] > 500)
    assert 70 < small.size < 110 and small.score > 0.5 * big.score
    # choose a face by index, by detection or by box
    by_index = preim3d.align_face(canvas, face=index)
    by_box = preim3d.align_face(canvas, face=small.box)
    assert by_index.box == small.box and by_box.box == small.box
    assert preim3d.align_face(canvas, face=small).box == small.box
    default = np.reshape(preim3d.align_face(canvas).box, (2, 2)).mean(0)  # found at another scale
    assert np.linalg.norm(default - np.reshape(big.box, (2, 2)).mean(0)) < 0.1 * big.size
    with pytest.raises(
        IndexError, match=f"has {len(faces)} faces .numbered 1 to {len(faces)}.; there is no face"
    ):
        preim3d.align_face(canvas, face=len(faces))


def test_weak_false_positives_do_not_win_over_a_confident_face():
    weak = align.FaceDetection((0, 0, 400, 400), 0.05, "hog")
    strong = align.FaceDetection((500, 500, 700, 700), 1.5, "hog")
    assert align._rank([weak, strong]) == [strong, weak]
    big_strong = align.FaceDetection((0, 0, 400, 400), 1.0, "hog")
    assert align._rank([strong, big_strong]) == [big_strong, strong]


def test_no_face_is_a_specific_error():
    with pytest.raises(NoFaceError, match="No face was found in the 320x240 photo"):
        preim3d.align_face(Image.new("RGB", (320, 240), (90, 140, 200)))
    assert preim3d.detect_faces(np.zeros((240, 320), np.uint8)) == []


def test_cnn_detector_is_the_fallback(monkeypatch, photo):
    monkeypatch.setattr(align, "_hog_detector", lambda: _NoFaces())
    faces = preim3d.detect_faces(photo.resize((400, 400)))
    assert faces and faces[0].detector == "cnn"
    with pytest.raises(NoFaceError):
        preim3d.align_face(photo.resize((400, 400)), cnn_fallback=False)


class _NoFaces:
    def run(self, image, upsample, threshold):
        return [], [], []


def test_too_small_face_names_the_threshold(photo):
    tiny = photo.resize((256, 256))  # the face is ~50 px wide
    with pytest.raises(FaceTooSmallError, match=f"at least {align.MIN_FACE_SIZE} px"):
        preim3d.align_face(tiny)
    with pytest.raises(FaceTooSmallError, match="at least 300 px"):
        preim3d.align_face(photo, min_face_size=300)
    assert issubclass(FaceTooSmallError, InputImageError)


def test_bad_arguments(photo):
    with pytest.raises(ValueError, match="padding"):
        preim3d.align_face(photo, padding="wrap")
    with pytest.raises(ValueError, match="box"):
        preim3d.align_face(photo, face=(10, 10, 5, 5))
    with pytest.raises(ValueError, match="outside the 1024x1024 photo"):
        preim3d.align_face(photo, face=(2000, 10, 2100, 110))
    with pytest.raises(InputImageError):
        preim3d.align_face(b"not an image")


def test_padding_outside_the_photo(photo):
    # the face near the top-left corner: the crop reaches beyond the photo there
    corner = photo.crop((300, 120, 1024, 1024))
    zero = preim3d.align_face(corner, padding="zero")
    mirrored = preim3d.align_face(corner)
    outside = zero.to_crop([[-40, -40]])[0].astype(int)  # a crop pixel well outside the photo
    assert np.asarray(zero.image)[outside[1], outside[0]].max() == 0
    assert np.asarray(mirrored.image)[outside[1], outside[0]].max() > 40  # mirrored hair, not black
    # inside the photo both are the same resampling
    np.testing.assert_array_equal(np.asarray(zero.image)[200:, 200:], np.asarray(mirrored.image)[200:, 200:])


def test_paste_back_round_trip_and_edit(photo, face):
    same = preim3d.paste_back(photo, face.image, face)
    assert same.size == photo.size
    diff = np.abs(np.asarray(same, float) - np.asarray(photo, float))
    assert diff.mean() < 0.5  # the unedited crop put back is (nearly) the photo itself
    edited = Image.fromarray(255 - np.asarray(face.image))
    out = np.asarray(preim3d.paste_back(photo, edited, face), float)
    src = np.asarray(photo, float)
    cx, cy = face.to_original([[256, 256]])[0].astype(int)
    assert np.abs(out[cy, cx] - (255 - src[cy, cx])).max() < 12  # centre: the edit
    corner = face.to_original([[2, 2]])[0].astype(int)
    np.testing.assert_array_equal(out[corner[1], corner[0]], src[corner[1], corner[0]])  # crop corner: photo
    far = (5, 1000)  # outside the crop square: untouched
    np.testing.assert_array_equal(out[far[1], far[0]], src[far[1], far[0]])
    # a larger edited crop (e.g. 1024 px) maps the same way; a zero mask keeps the photo
    big = preim3d.paste_back(photo, edited.resize((1024, 1024)), face)
    assert np.abs(np.asarray(big, float)[cy, cx] - out[cy, cx]).max() < 12
    untouched = preim3d.paste_back(photo, edited, face, mask=np.zeros((512, 512), np.uint8))
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(photo))
    with pytest.raises(ValueError, match="same photo"):
        preim3d.paste_back(photo.resize((100, 100)), edited, face)


def _project_template(yaw, pitch, points=None):
    """Template points seen by EG3D's camera at (yaw, pitch), in 512-px crop pixels."""
    from preim3d.cameras import camera_vector

    c = camera_vector(yaw, pitch)[0].double().numpy()
    pose, k = c[:16].reshape(4, 4), c[16:].reshape(3, 3)
    world = LANDMARKS_3D if points is None else points
    cam = (np.linalg.inv(pose) @ np.c_[world, np.ones(len(world))].T).T[:, :3]
    return (k @ (cam / cam[:, 2:]).T).T[:, :2] * 512


def _face_with_crop_landmarks(points):
    return align.AlignedFace(None, np.asarray(points), (0, 0, 1, 1), 1.0, np.eye(3), (512, 512))


@pytest.mark.parametrize("yaw_deg, pitch_deg", [(0, 0), (30, 0), (-40, 10), (20, -20), (0, 15), (55, -5)])
def test_pose_estimate_recovers_the_camera_of_the_template(yaw_deg, pitch_deg):
    points = _project_template(math.radians(yaw_deg), math.radians(pitch_deg))
    yaw, pitch = _face_with_crop_landmarks(points).estimate_pose()
    assert (math.degrees(yaw), math.degrees(pitch)) == pytest.approx((yaw_deg, pitch_deg), abs=0.01)
    # landmark noise of 1 px (dlib's on a 512 crop) moves the estimate by well under a degree
    noisy = points + np.random.default_rng(yaw_deg + 100).normal(0, 1.0, points.shape)
    yaw, pitch = _face_with_crop_landmarks(noisy).estimate_pose()
    assert (math.degrees(yaw), math.degrees(pitch)) == pytest.approx((yaw_deg, pitch_deg), abs=1.0)


def test_camera_fit_is_perspective_and_batched():
    # a head at 2.7 units seen from 20 degrees: the fit finds the camera's rotation and position
    rng = np.random.default_rng(0)
    yaws, pitches = rng.uniform(-0.6, 0.6, 8), rng.uniform(-0.3, 0.3, 8)
    points = np.stack([_project_template(y, p) for y, p in zip(yaws, pitches)])
    rotation, translation = align.fit_head_camera(points)
    assert rotation.shape == (8, 3, 3) and translation.shape == (8, 3)
    np.testing.assert_allclose(
        rotation @ np.swapaxes(rotation, 1, 2), np.broadcast_to(np.eye(3), (8, 3, 3)), atol=1e-9
    )
    from preim3d.cameras import camera_vector

    poses = camera_vector(yaws, pitches).double().numpy()[:, :16].reshape(-1, 4, 4)
    camera_from_world = np.linalg.inv(poses)
    np.testing.assert_allclose(rotation, camera_from_world[:, :3, :3], atol=1e-6)
    np.testing.assert_allclose(translation, camera_from_world[:, :3, 3], atol=1e-5)
    np.testing.assert_allclose(align.estimate_poses(points), np.c_[yaws, pitches], atol=1e-6)
    single = align.fit_head_camera(points[3])
    np.testing.assert_allclose(single[0][0], rotation[3], atol=1e-12)


def test_head_template_is_symmetric():
    assert sorted(MIRROR) == list(range(68)) and np.array_equal(MIRROR[MIRROR], np.arange(68))
    np.testing.assert_allclose(LANDMARKS_3D[MIRROR] * [-1, 1, 1], LANDMARKS_3D, atol=1e-4)
    # eyes (36-47) above the mouth (48-67), nose tip (30) in front of the eye corners
    assert LANDMARKS_3D[36:48, 1].min() > LANDMARKS_3D[48:68, 1].max()
    assert LANDMARKS_3D[30, 2] > LANDMARKS_3D[[36, 45], 2].max() + 0.05


def test_landmarks_of_the_mirrored_photo_are_the_mirrored_landmarks(photo, face):
    mirrored = preim3d.align_face(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    expected = face.landmarks[MIRROR] * [-1, 1] + [photo.width, 0]
    assert mean_displacement(mirrored.landmarks, expected) < 0.5


def test_pose_estimate_on_the_photo(photo, face):
    yaw, pitch = face.estimate_pose()
    # a near-frontal portrait, taken slightly from above (pitch < 0)
    assert abs(math.degrees(yaw)) < 6 and -15 < math.degrees(pitch) < 0
    # mirrored: yaw changes sign, pitch stays (the landmarks are averaged with their mirror images)
    mirrored = preim3d.align_face(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)).estimate_pose()
    assert math.degrees(mirrored[0]) == pytest.approx(-math.degrees(yaw), abs=0.5)
    assert math.degrees(mirrored[1]) == pytest.approx(math.degrees(pitch), abs=0.5)
    # a face turned toward the image left (camera toward the subject's left, +x) has yaw > 0
    turned_face = _face_with_crop_landmarks(_project_template(math.radians(25), 0.0))
    assert turned_face.estimate_pose()[0] > 0 and turned_face.landmarks[30, 0] < 256
    turned = preim3d.align_face(place(photo, similarity(15, 1.0, (700, 600), photo.size), (1400, 1200)))
    assert np.degrees(turned.estimate_pose()) == pytest.approx(np.degrees((yaw, pitch)), abs=2.0)


def test_dlib_models_from_a_folder_named_by_environment(tmp_path):
    # machines without face-recognition-models point PREIM3D_DLIB_MODELS at a folder of the .dat files
    name = "shape_predictor_68_face_landmarks.dat"
    (tmp_path / name).symlink_to(align.dlib_model_path(name))
    code = (
        "import sys; from preim3d import align; from preim3d.errors import WeightsError\n"
        f"assert align.dlib_model_path({name!r}) == {str(tmp_path / name)!r}\n"
        "try:\n    align.dlib_model_path('mmod_human_face_detector.dat')\n"
        "except WeightsError as e:\n    assert 'PREIM3D_DLIB_MODELS' in str(e)\nelse:\n    sys.exit(1)\n"
    )
    env = dict(os.environ, PREIM3D_DLIB_MODELS=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_camera_constants_match_preim3d_cameras():
    from preim3d import cameras

    assert align._FRONTAL_ANGLE == cameras.FRONTAL_ANGLE
    assert align._RADIUS == cameras.DEFAULT_RADIUS
    assert tuple(align._PIVOT) == cameras.DEFAULT_PIVOT


OFFICIAL = os.environ.get("PREIM3D_OFFICIAL_PREIM3D")


@pytest.mark.skipif(not OFFICIAL, reason="set PREIM3D_OFFICIAL_PREIM3D to a Preim3D checkout")
def test_official_eg3d_crops_come_back_nearly_unchanged():
    files = sorted(Path(OFFICIAL, "data", "test").glob("*.png"))
    assert len(files) >= 10, f"no EG3D-style crops under {OFFICIAL}/data/test"
    first, second = [], []
    for path in files:
        aligned = preim3d.align_face(path)
        first.append(mean_displacement(aligned.to_crop(aligned.landmarks), aligned.landmarks))
        again = preim3d.align_face(aligned.image)
        second.append(mean_displacement(again.to_crop(again.landmarks), again.landmarks))
    # measured: 3.3 px mean (median 3.2); EG3D's own MTCNN pipeline re-applied to these crops gives
    # 3.4 px (median 3.1): benchmarks/RESULTS.md, "Face alignment against EG3D's own crops"
    assert np.mean(first) <= 3.5 and np.median(first) <= 3.3
    assert np.mean(second) <= 1.5
