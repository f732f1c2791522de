"""Video editing end to end: decode, follow the face, invert, render, paste back, encode.

    python benchmarks/bench_video.py [--models DIR] [--workers N] [--seconds 10] [--device cuda]
    python benchmarks/bench_video.py --tiny          # tiny random weights, a small clip: a CPU check

The clip is made here: skimage's astronaut (NASA, public domain) moving, scaling, rotating and
squeezed sideways over a grey background, 1280x720 at 30 fps for 10 s, with a tone as audio
(`preim3d.testing.make_face_video`). The editor has random full-size weights (the ffhq512-128
generator, the IR-SE50 encoder) in the fast mode (float16 on a GPU): the renders are noise, but
every stage does the work it does with the real weights. A 1-s clip is edited first, to start the
dlib workers and warm the GPU; then the timed run, with the default settings of
`preim3d edit-video --edit smile=2` (landmarks found again on the output to measure jitter).

--models DIR: a folder holding dlib's shape_predictor_68_face_landmarks.dat (and, for the identity
check across cuts, dlib_face_recognition_resnet_model_v1.dat): sets PREIM3D_DLIB_MODELS, for
machines where the face-recognition-models package is not installed.

Prints the frames per second end to end and each stage's busy time (stages overlap: decode and
following run ahead in threads, encoding behind; detection and landmarks in a process pool), and
writes them as JSON to $OUT/bench_video.json when OUT is set. Module-level imports stay light:
the spawned dlib workers import this file again.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def build_editor(tiny: bool, device: str, folder: Path):
    import torch

    import preim3d
    from preim3d import testing

    if tiny:
        return preim3d.Editor.from_bundle(testing.make_tiny_bundle(folder / "tiny"), device=device)
    generator = preim3d.TriPlaneGenerator(**testing.FFHQ512_GENERATOR_KWARGS)
    generator.neural_rendering_resolution = testing.FFHQ512_NEURAL_RESOLUTION
    testing.fill_random(generator, 11)
    encoder = preim3d.WPlusEncoder().eval()
    latent_avg = torch.randn(1, 14, 512) * 0.5
    return preim3d.Editor(
        generator.eval().requires_grad_(False),
        encoder,
        latent_avg,
        testing.tiny_directions(),
        device=device,
        precision="fast",
    )


ASTRONAUT = Path(__file__).resolve().parent.parent / "examples" / "astronaut.png"


def make_clip(path: Path, size, seconds: float, fps: float, face_width: float) -> None:
    from PIL import Image

    from preim3d.testing import make_face_video

    face = Image.open(ASTRONAUT).convert("RGB").crop((120, 40, 360, 280))  # the face is ~1/3 of it
    frames = round(seconds * fps)
    make_face_video(path, face, size=size, frames=frames, fps=fps, face_width=face_width, motion=0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random weights and a 320x240 clip")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--seconds", type=float, help="clip length (default 10, tiny 1)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--size", help="WIDTHxHEIGHT (default 1280x720, tiny 320x240)")
    parser.add_argument("--workers", type=int, help="dlib processes (default: half the CPU cores)")
    parser.add_argument("--models", type=Path, help="folder of dlib's model files (sets PREIM3D_DLIB_MODELS)")
    args = parser.parse_args()
    if args.models is not None:
        os.environ["PREIM3D_DLIB_MODELS"] = str(args.models.resolve())  # the workers inherit it

    import torch

    import preim3d

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    seconds = args.seconds or (1.0 if args.tiny else 10.0)
    width, height = map(int, (args.size or ("320x240" if args.tiny else "1280x720")).split("x"))
    face_width = 0.75 if args.tiny else 0.35  # of the frame's width: a face of ~80 and ~160 px
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clock = time.perf_counter()
        editor = build_editor(args.tiny, device, tmp)
        clip, warm = tmp / "clip.mp4", tmp / "warm.mp4"
        make_clip(clip, (width, height), seconds, args.fps, face_width)
        make_clip(warm, (width, height), min(1.0, seconds), args.fps, face_width)
        print(f"editor and clips ready in {time.perf_counter() - clock:.1f} s; warming up")
        clock = time.perf_counter()
        editor.edit_video(warm, tmp / "warm-out.mp4", {"smile": 2}, workers=args.workers)
        warm_s = time.perf_counter() - clock
        report = editor.edit_video(clip, tmp / "out.mp4", {"smile": 2}, workers=args.workers)

    frames = report.frames
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    result = {
        "device": name,
        "weights": "tiny random" if args.tiny else "ffhq512-128 + IR-SE50, random, fast mode",
        "clip": f"{width}x{height}, {args.fps:g} fps, {frames} frames ({seconds:g} s)",
        "cpus": os.cpu_count(),
        "workers": args.workers,
        "torch": torch.__version__,
        "warm-up run (s)": round(warm_s, 2),
        "seconds": round(report.seconds, 2),
        "frames per second": round(frames / report.seconds, 2),
        "seconds per frame": round(report.seconds / frames, 4),
        "faces edited": report.faces,
        "stage busy seconds": {k: round(v, 3) for k, v in report.stage_seconds.items()},
        "jitter input / output (px of a 512 crop)": [report.jitter_input, report.jitter_output],
        "flicker input / output (0-255)": [report.flicker_input, report.flicker_output],
        "preim3d": preim3d.__version__,
    }
    print(f"\n{result['weights']} on {name}; clip {result['clip']}; {os.cpu_count()} CPUs")
    print("| stage | busy s | ms per frame |\n|---|---|---|")
    for stage, busy in report.stage_seconds.items():
        print(f"| {stage} | {busy:.2f} | {1000 * busy / frames:.1f} |")
    print(f"| **end to end** | {report.seconds:.2f} | {1000 * report.seconds / frames:.1f} |")
    print(
        f"\n{frames / report.seconds:.1f} frames/s end to end "
        f"({frames / report.seconds / args.fps:.2f}x real time); {report.summary()}"
    )
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "bench_video.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
