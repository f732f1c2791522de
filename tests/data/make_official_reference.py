"""Regenerate eg3d_tiny_official.safetensors: outputs of the OFFICIAL EG3D generator (tiny config,
seeded random weights) that the CI tests compare our generator against.

    PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d python tests/data/make_official_reference.py
"""

import sys
from pathlib import Path

from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eg3d_reference import TINY  # noqa: E402
from official_eg3d import run_generator  # noqa: E402

from preim3d.testing import build_official_eg3d, official_eg3d_path  # noqa: E402

WEIGHT_SEED, INPUT_SEED, BATCH = 3, 5, 2

if __name__ == "__main__":
    if official_eg3d_path() is None:
        sys.exit("Set PREIM3D_OFFICIAL_EG3D to the eg3d/ folder of an official EG3D checkout.")
    out = run_generator(build_official_eg3d(*TINY, WEIGHT_SEED), TINY, INPUT_SEED, BATCH)
    save_file(
        {k: v.contiguous() for k, v in out.items()},
        str(HERE / "eg3d_tiny_official.safetensors"),
        metadata={
            "weight_seed": str(WEIGHT_SEED),
            "input_seed": str(INPUT_SEED),
            "batch": str(BATCH),
            "made_with": "NVlabs/eg3d 7cf1fd1e99e1061e8b6ba850f91c94fe56e7afe4, CPU, fp32",
        },
    )
    print({k: tuple(v.shape) for k, v in out.items()})
