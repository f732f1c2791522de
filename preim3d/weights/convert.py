"""Official files -> a preim3d bundle: generator, encoder with its latent average, directions.

Each official file is read safely (restricted unpickler, `torch.load(weights_only=True)`), checked
tensor by tensor, and written as one bundle component with its provenance (file name, SHA-256,
where it came from) and licence. The encoder's latent average is computed from the generator; when
the checkpoint stores one, both must agree, which catches an encoder paired with the wrong generator.
"""

from __future__ import annotations

from pathlib import Path

from ..editing import DirectionBank
from ..errors import WeightsError
from .checksum import file_sha256
from .encoder import convert_encoder
from .generator import load_generator, save_generator


def convert_official(
    out, *, generator=None, encoder=None, directions=None, device=None, provenance: dict | None = None
) -> Path:
    """Write the given official files into the bundle folder `out` (other components there are kept).

    generator: NGC network pickle or PREIM3D's eg3d_G_ema.pkl. encoder: PREIM3D's preim3d_ffhq.pt;
    it needs the generator (for the latent average). directions: a folder of <Attribute>.pt files.
    device: where the latent average is computed (default CPU). provenance: extra fields for the
    "generator" and "directions" components' provenance (where they were downloaded from, the
    directions' licence). Returns `out`.
    """
    if generator is None and encoder is None and directions is None:
        raise WeightsError("Nothing to convert: give a generator, an encoder and/or a directions folder.")
    if encoder is not None and generator is None:
        raise WeightsError(
            "Converting the encoder needs its generator too (for the latent average): give both."
        )
    provenance = provenance or {}
    out = Path(out)
    if generator is not None:
        G = load_generator(generator, device=device or "cpu")
        save_generator(
            G,
            out,
            provenance=dict(
                getattr(G, "source_info", {}),
                sha256=file_sha256(generator),
                **provenance.get("generator", {}),
            ),
        )
        if encoder is not None:
            convert_encoder(encoder, out, G, device=device)
    if directions is not None:
        bank = DirectionBank.from_dir(directions)
        bank.provenance.update(provenance.get("directions", {}))
        bank.save(out)
    return out
