"""Regenerate tests/data/official: outputs of the OFFICIAL code that CI compares ours with.

    PREIM3D_OFFICIAL_EG3D=/path/to/eg3d/eg3d PREIM3D_OFFICIAL_PREIM3D=/path/to/Preim3D \\
        python tests/data/make_official_reference.py [name ...]

Writes, from official classes given our seeded random weights (nothing official is stored):
  <name>.safetensors     for each generator of eg3d_reference.REFERENCES: w (one row of ws, whose rows
                         are equal) and, on a grid of at most 48 x 48 pixels (eg3d_reference.pixel_grid),
                         image, image_raw and image_depth; its configuration in the metadata
  latent_avg.safetensors PREIM3D's latent average (one row) of the generators marked latent_avg
  encoder.safetensors    the narrow W+ encoder's output for its seeded input (preim3d_reference)
Names select generators (the latent averages and the encoder are then left as they are). Runs on the
CPU in float32, with the official reference PyTorch ops (no CUDA plugins); takes a few minutes.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from eg3d_reference import (  # noqa: E402
    OFFICIAL_DATA,
    REFERENCES,
    generator_kwargs_json,
    make_ours,
    one_row,
    pixel_grid,
    psnr,
)
from official_eg3d import build_official, run_generator  # noqa: E402
from official_preim3d import PREIM3D, official_encoder, official_latent_avg  # noqa: E402
from preim3d_reference import (  # noqa: E402
    ENCODER_INPUT_SEED,
    ENCODER_STAGE_UNITS,
    ENCODER_WEIGHT_SEED,
    encoder_input,
    reference_encoder,
)

from preim3d.testing import official_eg3d_path  # noqa: E402

MADE_WITH = (
    "NVlabs/eg3d 7cf1fd1e99e1061e8b6ba850f91c94fe56e7afe4 and mybabyyh/Preim3D, CPU, fp32, torch "
    + torch.__version__
)
OUTPUTS = ("image", "image_raw", "image_depth")


def official_generator(reference):
    return build_official(reference.config, reference.weight_seed, weight_scales=reference.weight_scales)


def write_generator(name, reference):
    out = run_generator(
        official_generator(reference), reference.config, reference.input_seed, reference.batch
    )
    tensors = {"w": one_row(out["ws"]), **{key: pixel_grid(out[key]) for key in OUTPUTS}}
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(OFFICIAL_DATA / f"{name}.safetensors"),
        metadata={
            "config": generator_kwargs_json(reference.config),
            "weight_seed": str(reference.weight_seed),
            "weight_scales": str(reference.weight_scales),
            "input_seed": str(reference.input_seed),
            "batch": str(reference.batch),
            "made_with": MADE_WITH,
        },
    )
    # What the test will see: ours against what was just stored, and how much each output varies.
    ours = run_generator(make_ours(reference), reference.config, reference.input_seed, reference.batch)
    report = ", ".join(
        f"{key} {psnr(pixel_grid(ours[key]), tensors[key]):.1f} dB (std {tensors[key].std():.3g})"
        for key in OUTPUTS
    )
    print(f"{name}: ws max diff {(ours['ws'] - out['ws']).abs().max():.2g}; {report}", flush=True)


def write_latent_avgs():
    averages = {
        name: one_row(official_latent_avg(official_generator(reference)))
        for name, reference in REFERENCES.items()
        if reference.latent_avg
    }
    save_file(
        {k: v.float().contiguous() for k, v in averages.items()},
        str(OFFICIAL_DATA / "latent_avg.safetensors"),
        metadata={"recipe": "models.psp.pSp.__load_latent_avg", "made_with": MADE_WITH},
    )
    print("latent_avg:", ", ".join(averages))


def write_encoder():
    official, _ = official_encoder(stage_units=ENCODER_STAGE_UNITS)
    official.load_state_dict(reference_encoder().state_dict(), strict=True)
    with torch.no_grad():
        codes = official(encoder_input())
    save_file(
        {"codes": codes.contiguous()},
        str(OFFICIAL_DATA / "encoder.safetensors"),
        metadata={
            "class": "models.encoders.psp_encoders.BackboneEncoderUsingLastLayerIntoWPlus",
            "stage_units": str(ENCODER_STAGE_UNITS),
            "weight_seed": str(ENCODER_WEIGHT_SEED),
            "input_seed": str(ENCODER_INPUT_SEED),
            "made_with": MADE_WITH,
        },
    )
    with torch.no_grad():
        diff = (reference_encoder()(encoder_input()) - codes).abs().max()
    print(f"encoder: codes std {codes.std():.3f}, ours max diff {diff:.2g}")


if __name__ == "__main__":
    if official_eg3d_path() is None or not PREIM3D:
        sys.exit(
            "Set PREIM3D_OFFICIAL_EG3D to the eg3d/ folder of an official EG3D checkout and "
            "PREIM3D_OFFICIAL_PREIM3D to an official PREIM3D checkout."
        )
    unknown = set(sys.argv[1:]) - set(REFERENCES)
    if unknown:
        sys.exit(f"unknown generators {sorted(unknown)}; known: {', '.join(REFERENCES)}")
    OFFICIAL_DATA.mkdir(exist_ok=True)
    for name in sys.argv[1:] or REFERENCES:
        write_generator(name, REFERENCES[name])
    if not sys.argv[1:]:
        write_latent_avgs()
        write_encoder()
    stale = (
        {p.stem for p in OFFICIAL_DATA.glob("*.safetensors")} - set(REFERENCES) - {"latent_avg", "encoder"}
    )
    if stale:
        print("no longer made (remove them):", ", ".join(sorted(stale)))
