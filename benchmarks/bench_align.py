"""CPU benchmark of `preim3d.align_face` on a 1-megapixel photo, one core, one thread.

The photo is skimage's astronaut (NASA, public domain) enlarged 4x and cut to 1224x816 (1.0 MP)
around the face, as a selfie downscaled by a phone: face box ~350 px, so the crop shrinks the
photo and takes the supersampled warp path. Models are loaded before timing.
Run:  python benchmarks/bench_align.py [--repeats 30]
"""

import os

# One thread everywhere, set before numpy loads its BLAS; dlib's HOG and predictor are single-threaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage import data  # noqa: E402

from preim3d import align  # noqa: E402


def one_megapixel_photo() -> Image.Image:
    big = Image.fromarray(data.astronaut()).resize((2048, 2048), Image.Resampling.LANCZOS)
    return big.crop((300, 100, 1524, 916))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    photo = one_megapixel_photo()
    as_array = np.asarray(photo)
    align.align_face(photo)  # loads the dlib models

    stages = {
        "detect (HOG, <=640 px)": lambda: align._rank(align._detect(photo, True, thorough=False)),
        "load_image (ndarray -> RGB)": lambda: align.load_image(as_array),
    }
    face = align.align_face(photo)
    stages["68 landmarks"] = lambda: align._landmarks(photo, face.box)
    stages["warp to 512 crop"] = lambda: align._warp(photo, face.original_from_crop, "reflect")
    stages["align_face total"] = lambda: align.align_face(as_array)

    print(
        f"photo {photo.width}x{photo.height} ({photo.width * photo.height / 1e6:.2f} MP), "
        f"face box {face.box[2] - face.box[0]:.0f} px, crop side {512 * face.scale:.0f} px in the photo"
    )
    for name, fn in stages.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1000)
        print(f"{name:30s} median {statistics.median(times):7.1f} ms   min {min(times):7.1f} ms")


if __name__ == "__main__":
    main()
