"""The 39 official PREIM3D direction files,
from a checkout given in PREIM3D_OFFICIAL_PREIM3D (skipped without).

PREIM3D_OFFICIAL_PREIM3D is the root of a GitHub mybabyyh/Preim3D checkout; the files are
editings/interfacegan_directions/inversion/<Attribute>.pt.
"""

import os
from pathlib import Path

import pytest
import torch

from preim3d.editing import CELEBA_ATTRIBUTES, DirectionBank

ROOT = os.environ.get("PREIM3D_OFFICIAL_PREIM3D")
pytestmark = pytest.mark.skipif(not ROOT, reason="set PREIM3D_OFFICIAL_PREIM3D to a Preim3D checkout")


@pytest.fixture(scope="module")
def folder():
    return Path(ROOT) / "editings" / "interfacegan_directions" / "inversion"


@pytest.fixture(scope="module")
def bank(folder):
    return DirectionBank.from_dir(folder)


def test_the_39_files_load_as_unit_vectors(folder, bank):
    assert bank.names == tuple(a for a in CELEBA_ATTRIBUTES if a != "Blurry")
    for name in bank.names:
        stored = torch.load(folder / f"{name}.pt", weights_only=True)
        assert stored.shape == (1, 14 * 512) and stored.dtype == torch.float32
        assert stored.double().norm().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(bank.direction(name), stored.reshape(14, 512))


def test_apply_is_exactly_the_official_edit(folder, bank):
    ws = torch.randn(3, 14, 512, generator=torch.Generator().manual_seed(0))
    for name in bank.names:
        stored = torch.load(folder / f"{name}.pt", weights_only=True)
        for strength in (10.0, -3.0):
            assert torch.equal(bank.apply(ws, {name: strength}), ws + strength * stored.view(1, 14, 512))


def test_known_entanglement_and_precise_edits(bank):
    sim = bank.similarity(["Male", "Wearing_Lipstick", "Heavy_Makeup", "Young"])
    assert sim[0, 1] == pytest.approx(-0.48, abs=0.01)  # Male / Wearing_Lipstick
    assert sim[2, 1] == pytest.approx(0.52, abs=0.01)  # Heavy_Makeup / Wearing_Lipstick
    assert sim[3, 0] == pytest.approx(-0.21, abs=0.01)  # Young / Male
    ws = torch.randn(4, 14, 512, generator=torch.Generator().manual_seed(1))
    hold = ["Male", "Eyeglasses", "beard", "Heavy_Makeup", "Smiling"]
    out = bank.apply(ws, {"lipstick": 10.0, "age": 5.0}, hold=hold)
    moved = bank.scores(out, ["lipstick", "age", *hold]) - bank.scores(ws, ["lipstick", "age", *hold])
    assert torch.allclose(moved[:, :2], torch.tensor([10.0, 5.0], dtype=torch.float64), atol=1e-5)
    assert moved[:, 2:].abs().max() <= 1e-5
    # a plain edit would have made the face clearly less male: 10 * -0.48 - 5 * -0.21
    assert bank.report({"lipstick": 10.0, "age": 5.0}, hold).plain_shift["Male"] == pytest.approx(
        -3.7, abs=0.05
    )
