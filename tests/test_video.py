"""Editing a face through a video: clips made here from skimage's astronaut (NASA, public domain).

The clips move, scale, rotate and squeeze the photo from frame to frame and carry a 440 Hz tone;
editing runs with the tiny random-weight bundle, so the pasted faces are random patterns: the
tests check what the chain must keep (frames, rate, size, audio, untouched frames, where the
face is) and, with a stand-in generator that renders the input's own crop, that pasting back is
exact and adds no jitter or flicker.
"""

import subprocess
import sys
import wave

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

import preim3d
from preim3d import tracking, video
from preim3d.errors import InputVideoError, NoFaceError, NoSuchFaceError
from preim3d.mp4 import Mp4Writer, VideoReader
from preim3d.testing import make_face_video

FACE = Image.fromarray(data.astronaut()).crop((120, 40, 360, 280))  # the face fills ~1/3 of it
FACELESS = range(5, 7)


def decoded(path) -> np.ndarray:
    with VideoReader(path) as clip:
        return np.stack(list(clip.frames()))


def has_audio(path) -> bool:
    return "audio_codec" in next(imageio_ffmpeg.read_frames(str(path)))


def no_partial_files(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return preim3d.Editor.from_pretrained(tiny_bundle, device="cpu")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """12 frames of 320x240 at 24 fps with a tone; frames 5 and 6 show no face."""
    path = tmp_path_factory.mktemp("clips") / "moving.mp4"
    maps = make_face_video(path, FACE, size=(320, 240), frames=12, fps=24, face_width=0.75, faceless=FACELESS)
    return path, maps


@pytest.fixture(scope="module")
def edited(editor, clip, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edited")
    calls = []
    report = editor.edit_video(
        clip[0], folder / "out.mp4", {"Smiling": 3}, workers=0, progress=lambda *a: calls.append(a)
    )
    return report, folder, calls


def test_edited_video_keeps_frames_rate_size_and_audio(clip, edited):
    report, folder, calls = edited
    source, out = decoded(clip[0]), decoded(report.path)
    assert out.shape == source.shape == (12, 240, 320, 3)
    assert report.frames == 12 and report.faces == 10 and report.size == (320, 240)
    meta = next(imageio_ffmpeg.read_frames(str(report.path)))
    assert meta["fps"] == pytest.approx(24) and report.fps == pytest.approx(24)
    assert has_audio(report.path) and report.audio
    assert calls[-1] == (12, 12)
    assert no_partial_files(folder) and {p.name for p in folder.iterdir()} == {"out.mp4"}


def test_frames_without_the_face_pass_unchanged_and_faces_are_edited(clip, edited):
    report, _, _ = edited
    source, out = decoded(clip[0]).astype(float), decoded(report.path).astype(float)
    change = np.abs(out - source).mean(axis=(1, 2, 3))
    assert change[list(FACELESS)].max() < 2.0  # only the H.264 round trip
    with_face = [i for i in range(12) if i not in FACELESS]
    assert change[with_face].min() > 3 * change[list(FACELESS)].max() + 1
    # the change is where the face is: around the middle of its jaw line and eyebrows in each frame
    middle = preim3d.align_face(FACE).landmarks[:27].mean(0)
    for i in with_face:
        centre = clip[1][i] @ [*middle, 1]
        diff = np.abs(out[i] - source[i]).mean(-1)
        ys, xs = np.nonzero(diff > 20)
        assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 25


def test_report_measures_jitter_and_flicker(edited):
    report, _, _ = edited
    for value in (report.jitter_input, report.jitter_output, report.flicker_input, report.flicker_output):
        assert value is not None and np.isfinite(value) and value >= 0
    assert report.jitter == pytest.approx(report.jitter_output - report.jitter_input)
    assert "frames" in report.summary() and "jitter" in report.summary()
    assert {"decode", "detection and landmarks", "inversion", "rendering", "paste-back", "encode"} <= set(
        report.stage_seconds
    )


def test_pasting_back_the_input_crop_reproduces_the_video(editor, clip, tmp_path, monkeypatch):
    # a generator that renders exactly the crop it was given: the output must be the input again,
    # as steady as the input, so any jitter or flicker would come from the chain itself
    crops = []

    def invert_and_keep(encoder, latent_avg, images):
        crops.append(images)
        return preim3d.invert(encoder, latent_avg, images)

    def render_the_crop(ws, c, **kwargs):
        crop = crops.pop(0)
        size = editor.generator.img_resolution
        return {
            "image": torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
        }

    monkeypatch.setattr(video, "invert", invert_and_keep)
    monkeypatch.setattr(editor.generator, "synthesis", render_the_crop)
    report = editor.edit_video(clip[0], tmp_path / "same.mp4", workers=0)
    source, out = decoded(clip[0]).astype(float), decoded(report.path).astype(float)
    assert np.abs(out - source).mean() < 2.0  # the 128-px render is a little blurred
    assert report.jitter_output <= report.jitter_input + 0.5
    assert report.flicker_output <= report.flicker_input + 1.0


def test_chosen_face_is_followed_side_by_side_without_audio(editor, tmp_path):
    # two faces: the astronaut and a smaller mirrored copy; face_index 1 is the smaller one
    pair = Image.new("RGB", (420, 240), (120, 128, 136))
    pair.paste(FACE, (0, 0))
    pair.paste(FACE.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((180, 180)), (240, 30))
    path = tmp_path / "pair.mp4"
    make_face_video(path, pair, size=(448, 256), frames=4, fps=12, face_width=0.95, motion=0.2, audio=False)
    report = editor.edit_video(
        path, tmp_path / "out.mp4", {"Smiling": 3}, face_index=1, side_by_side=True, workers=0
    )
    source, out = decoded(path).astype(float), decoded(report.path).astype(float)
    assert out.shape == (4, 256, 896, 3) and report.faces == 4
    assert not has_audio(report.path) and not report.audio
    assert np.abs(out[:, :, :448] - source).mean() < 2.0  # the left half is the input (H.264 round trip)
    diff = np.abs(out[:, :, 448:] - source).mean(axis=(0, 3))
    assert diff[:, 250:].mean() > 5 * diff[:, :200].mean()  # the small face (right) was edited


def test_no_face_anywhere_is_refused_and_leaves_nothing(editor, tmp_path):
    path = tmp_path / "empty.mp4"
    make_face_video(path, FACE, size=(160, 128), frames=4, fps=8, faceless=range(4))
    out = tmp_path / "out" / "out.mp4"
    with pytest.raises(NoFaceError, match="No face was found in any of the 4 frames"):
        editor.edit_video(path, out, workers=0)
    assert not out.exists() and no_partial_files(out.parent)


def test_face_number_beyond_the_faces_is_refused(editor, clip, tmp_path):
    with pytest.raises(NoSuchFaceError, match="has 1 face"):
        editor.edit_video(clip[0], tmp_path / "out.mp4", face_index=1, workers=0)
    assert not (tmp_path / "out.mp4").exists() and no_partial_files(tmp_path)


def test_bad_videos_get_clear_messages(tmp_path, clip):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(InputVideoError, match="not a video"):
        VideoReader(text)
    sound = tmp_path / "tone.wav"
    with wave.open(str(sound), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(np.zeros(8000, "<i2").tobytes())
    with pytest.raises(InputVideoError, match="no video track"):
        VideoReader(sound)
    with pytest.raises(InputVideoError, match="No video file"):
        VideoReader(tmp_path / "missing.mp4")
    with pytest.raises(InputVideoError, match="more than the limit of 5"):
        VideoReader(clip[0], max_frames=5)
    with pytest.raises(InputVideoError, match="larger than 4K"):
        preim3d.validation.check_video_size(7680, 4320, 10, 30, "the video")
    assert preim3d.validation.check_video_size(2160, 3840, 3600, 30, "the video") == 3600  # 4K portrait


def test_phone_rotation_and_variable_frame_rate_are_read_upright_and_steady(tmp_path):
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    landscape = tmp_path / "landscape.mp4"
    make_face_video(landscape, FACE, size=(240, 160), frames=8, fps=10, motion=0)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run(
        [
            ffmpeg,
            "-y",
            "-loglevel",
            "error",
            "-display_rotation",
            "90",
            "-i",
            str(landscape),
            "-c",
            "copy",
            str(rotated),
        ],
        check=True,
    )
    with VideoReader(rotated) as clip:
        frames = np.stack(list(clip.frames()))
    assert clip.size == (160, 240) and frames.shape == (8, 240, 160, 3)
    upright = decoded(landscape)
    # displayed turned by 90 degrees: the landscape frame, rotated
    turned = [np.rot90(upright[0], k) for k in (1, -1)]
    assert min(np.abs(t.astype(float) - frames[0]).mean() for t in turned) < 2.0
    # variable frame rate: 10 frames at 10 fps whose time stamps jitter; read at a steady rate
    vfr = tmp_path / "vfr.mkv"
    subprocess.run(
        [
            ffmpeg,
            "-y",
            "-loglevel",
            "error",
            "-i",
            str(landscape),
            "-vf",
            "setpts='N/10/TB+0.04*mod(N,2)/TB'",
            "-fps_mode",
            "vfr",
            str(vfr),
        ],
        check=True,
    )
    with VideoReader(vfr) as clip:
        count = sum(1 for _ in clip.frames())
    assert clip.fps == pytest.approx(10, abs=0.5) and abs(count - 8) <= 1


def test_writer_renames_only_a_complete_file(tmp_path):
    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with Mp4Writer(target, (64, 64), fps=10) as writer:
            writer.write(np.zeros((2, 64, 64, 3), np.uint8))
            assert not target.exists() and len(list(tmp_path.iterdir())) == 1  # a hidden partial file
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with Mp4Writer(target, (64, 64), fps=10) as writer:
        writer.write(np.zeros((3, 64, 64, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"] and decoded(target).shape[0] == 3


def test_a_4k_clip_is_edited_at_its_size(editor, tmp_path):
    path = tmp_path / "uhd.mp4"
    make_face_video(path, FACE, size=(3840, 2160), frames=2, fps=30, face_width=0.3, motion=0.1)
    report = editor.edit_video(path, tmp_path / "out.mp4", {"Smiling": 3}, workers=0, measure=False)
    assert decoded(report.path).shape == (2, 2160, 3840, 3) and report.faces == 2


def test_a_clip_of_one_or_two_frames_keeps_its_frames_and_sound(tmp_path):
    for frames in (1, 2):
        path = tmp_path / f"{frames}.mp4"
        make_face_video(path, FACE, size=(160, 128), frames=frames, fps=30)
        assert decoded(path).shape[0] == frames and has_audio(path)


# --- the parts -------------------------------------------------------------------------------------------


def test_one_euro_filter_removes_jitter_and_follows_fast_motion():
    rng = np.random.default_rng(0)
    fps, n = 30, 90
    t = np.arange(n) / fps
    truth = np.where(t < 1, 0.0, np.minimum(t - 1, 1.0))[:, None] * np.ones(136)  # still, then 1 side/s
    noisy = truth + rng.normal(0, 0.002, truth.shape)  # 1 px of a 512 crop
    f = video.OneEuroFilter(fps, **video.SMOOTHING)
    smooth = np.stack([f(x) for x in noisy])

    def jitter(x):  # frame-to-frame movement beyond the true one, where the face is still
        return np.abs(np.diff(x, axis=0) - np.diff(truth, axis=0))[np.r_[5:29, 75:89]].mean()

    assert jitter(smooth) < 0.3 * jitter(noisy)
    lag = np.abs(smooth - truth).mean(1)
    assert lag[40:60].max() < 0.006  # 3 px of a 512 crop while moving its own size per second
    assert lag[75:].max() < 0.002  # and caught up soon after stopping


def test_crops_cut_on_the_device_match_the_aligner(clip):
    frame = decoded(clip[0])[0]
    face = preim3d.align_face(frame)
    crop = video.warp_crops(torch.from_numpy(frame[None]), face.original_from_crop[None], 512)[0]
    ours = (crop.permute(1, 2, 0) * 127.5 + 127.5).numpy()
    # the aligner pads with blurred mirror images, the device crop with plain ones: compare inside
    inside = np.abs(ours - np.asarray(face.image, float))[96:416, 96:416]
    assert inside.mean() < 3.0


def test_face_mask_is_soft_inside_the_landmarks_hull():
    points = preim3d.align_face(FACE).crop_landmarks
    grid = torch.arange(512, dtype=torch.float32) + 0.5
    mask = video.face_mask(grid[None, :].expand(512, 512), grid[:, None].expand(512, 512), points).numpy()
    nose, corner = points[30].astype(int), (10, 10)
    assert mask[nose[1], nose[0]] == 1.0 and mask[corner] == 0.0
    assert ((mask > 0) & (mask < 1)).any() and mask.min() >= 0 and mask.max() <= 1
    forehead = points[17:27, 1].min() - 20
    assert mask[int(forehead), nose[0]] > 0.5  # the forehead is inside


class ScriptedPool:
    """A pool whose detections and descriptors are scripted per frame (frame i holds i in its first pixel)."""

    def __init__(self, faces, people):
        self.faces, self.people = faces, people  # frame -> boxes; box -> descriptor
        self.detected = []

    def map(self, fn, items):
        items = list(items)
        if fn is tracking.detect:
            self.detected += [int(f[0, 0, 0]) for f in items]
            return [self.faces.get(int(f[0, 0, 0]), []) for f in items]
        if fn is tracking.describe:
            return [self.people[tuple(region[2])] for region in items]
        return [np.tile(np.array(region[2][:2]) + 5.0, (68, 1)) for region in items]  # landmarks


def test_follower_keeps_its_person_through_a_loss_and_a_cut():
    a, b = (10.0, 10.0, 90.0, 90.0), (200.0, 20.0, 260.0, 80.0)  # person A (chosen, larger) and B
    moved_a = (190.0, 10.0, 270.0, 90.0)  # after the cut A stands where B was
    faces = {}
    for i in range(40):
        if i < 12:
            faces[i] = [a, b]
        elif i < 20:
            faces[i] = [b]  # A has left the picture
        else:
            faces[i] = [b[:1] + (b[1] + 100,) + b[2:3] + (b[3] + 100,), moved_a]  # a cut: B lower, A right
    people = {a: np.zeros(128), moved_a: np.zeros(128) + 0.01}
    people[b] = people[faces[25][0]] = np.ones(128)
    pool = ScriptedPool(faces, people)
    follower = tracking.FaceFollower(pool, face_index=0, key_interval=8)
    frames = np.zeros((40, 4, 4, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(40)
    tracks = [follower.follow(frames[s : s + 16]) for s in (0, 16, 32)]
    boxes = [box for t in tracks for box in t.boxes]
    restart = np.concatenate([t.restart for t in tracks])
    assert boxes[:12] == [a] * 12
    assert boxes[12:20] == [None] * 8  # lost: never B instead
    assert boxes[20:] == [moved_a] * 20  # found again after the cut, where B used to be
    assert restart[0] and restart[20] and restart.sum() == 2
    # key frames every 8 frames and each chunk's last; every frame around the loss and the cut
    assert {0, 8, 15, 16, 24, 31, 32, 39} <= set(pool.detected)
    assert set(range(9, 21)) <= set(pool.detected)


def test_worker_processes_start_without_torch():
    # the pool's tasks live in preim3d.tracking, which spawned workers import: it must stay light
    code = "import sys, preim3d.tracking; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_pool_of_processes_follows_like_one_process(clip):
    frames = decoded(clip[0])
    serial = tracking.FaceFollower(tracking.SerialPool()).follow(frames)
    pooled = tracking.FaceFollower(tracking.make_pool(2))
    try:
        parallel = pooled.follow(frames)
    finally:
        pooled.pool.shutdown()
    np.testing.assert_array_equal(serial.landmarks, parallel.landmarks)
    assert serial.boxes == parallel.boxes and (serial.restart == parallel.restart).all()


def test_command_line_edits_a_video(tiny_bundle, tmp_path, capsys):
    from preim3d import cli

    path = tmp_path / "in.mp4"
    make_face_video(path, FACE, size=(320, 240), frames=4, fps=8, face_width=0.75, motion=0.2)
    out = tmp_path / "out.mp4"
    args = ["edit-video", str(path), "--edit", "smile=2", "--out", str(out), "--side-by-side", "--face", "1"]
    code = cli.main([*args, "--workers", "0", "--weights", str(tiny_bundle), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert decoded(out).shape == (4, 240, 640, 3) and has_audio(out)
    assert "4 frames (320x240, 8.00 fps, audio kept), face edited in 4" in printed.out
    assert "jitter" in printed.out and "4/4 frames" in printed.err
    # the same message as the library for a bad video, before any weights load
    (tmp_path / "bad.mp4").write_text("not a video")
    assert cli.main(["edit-video", str(tmp_path / "bad.mp4"), "--out", str(tmp_path / "x.mp4")]) == 1
    assert "not a video ffmpeg can read" in capsys.readouterr().err
    assert cli.main(["edit-video", str(path), "--out", str(tmp_path / "x.avi")]) == 1
    assert "must end in .mp4" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists() and no_partial_files(tmp_path)
