"""The `preim3d` command line: fit-direction and directions-heatmap."""

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from preim3d import cli
from preim3d.editing import DirectionBank

D = 14 * 512


def codes_and_truth(n=400, rank=16, seed=0):
    """Codes in a `rank`-dimensional affine subspace of W+ and a known hyperplane normal `truth`."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, rank, generator=g, dtype=torch.float64))[0]
    codes = (
        0.3 * torch.randn(D, generator=g, dtype=torch.float64)
        + torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis.T
    )
    truth = basis @ torch.nn.functional.normalize(torch.randn(rank, generator=g, dtype=torch.float64), dim=0)
    return codes.float(), truth


def cosine(bank, name, truth):
    return float(bank.direction(name).reshape(-1).double() @ truth)


def test_help_lists_the_sub_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "fit-direction" in out and "directions-heatmap" in out
    assert cli.main([]) == 2


def test_importing_the_cli_stays_light():
    code = "import sys, preim3d.cli; sys.exit('torch' in sys.modules or 'PIL' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fit_direction_from_latent_files(tmp_path, capsys):
    codes, truth = codes_and_truth()
    centred = (codes.double() - codes.double().mean(0)) @ truth
    np.savez(
        tmp_path / "codes.npz",
        latents=codes.reshape(-1, 14, 512).numpy(),
        labels=(centred > 0).numpy().astype(np.int64),
    )
    out = tmp_path / "bank"
    assert (
        cli.main(
            [
                "fit-direction",
                "--latents",
                str(tmp_path / "codes.npz"),
                "--name",
                "Freckles",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Freckles" in printed and "wrote 1 direction(s)" in printed
    bank = DirectionBank.from_bundle(out)
    assert bank.names == ("Freckles",) and cosine(bank, "Freckles", truth) > 0.95
    assert bank.provenance["fitted"]["Freckles"]["n_test"] == 80

    # a second run adds to the bundle: -1/1 labels, NaN = unknown, from safetensors
    from safetensors.torch import save_file

    dimples = torch.where(centred < 0.2, -1.0, 1.0)
    dimples[:10] = float("nan")
    save_file(
        {"latents": codes, "Dimples": dimples, "Freckles": (centred > 0).double()},
        str(tmp_path / "more.safetensors"),
    )
    assert (
        cli.main(
            [
                "fit-direction",
                "--latents",
                str(tmp_path / "more.safetensors"),
                "--attributes",
                "Dimples",
                "--method",
                "svm",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    bank = DirectionBank.from_bundle(out)
    assert bank.names == ("Freckles", "Dimples")
    assert cosine(bank, "Dimples", truth) > 0.95
    assert (
        bank.provenance["fitted"]["Dimples"]["n_positive"]
        + bank.provenance["fitted"]["Dimples"]["n_negative"]
        == 390
    )


def test_fit_direction_errors_are_clear(tmp_path, capsys):
    codes, _ = codes_and_truth(n=40, rank=4)
    np.savez(tmp_path / "codes.npz", latents=codes.numpy(), labels=np.arange(40) % 2)
    np.savez(tmp_path / "ones.npz", latents=codes.numpy(), Bald=np.ones(40))
    cases = [
        (["--latents", str(tmp_path / "codes.npz")], "--name"),
        (["--latents", str(tmp_path / "ones.npz")], "each label"),
        (["--latents", str(tmp_path / "ones.npz"), "--attributes", "Hat"], "no labels 'Hat'.*Bald"),
        (["--latents", str(tmp_path / "missing.npz")], "does not exist"),
        ([], "either --latents"),
    ]
    for extra, message in cases:
        assert cli.main(["fit-direction", *extra, "--out", str(tmp_path / "bank")]) == 1
        err = capsys.readouterr().err
        assert err.startswith("preim3d fit-direction: error:")
        assert re.search(message, err), (message, err)
    assert not (tmp_path / "bank").exists()


def _labelled_photos(folder, n=40):
    rows = ["file,Reddish"]
    for i in range(n):
        red = 40 + 5 * i
        Image.new("RGB", (8, 8), (red, 100, 100)).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{int(red > 140)}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def test_fit_direction_from_photos_needs_an_encoder_bundle(tmp_path, capsys):
    _labelled_photos(tmp_path)
    DirectionBank({"A": torch.ones(D)}).save(tmp_path / "directions_only")
    assert (
        cli.main(
            [
                "fit-direction",
                "--photos",
                str(tmp_path),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--encoder",
                str(tmp_path / "directions_only"),
                "--out",
                str(tmp_path / "bank"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "needs an encoder bundle" in err and "no encoder or latent_avg (it holds: directions)" in err


def test_photo_encoding_aligns_then_inverts_with_the_bundle(tmp_path, monkeypatch):
    align = pytest.importorskip("preim3d.align")
    inversion = pytest.importorskip("preim3d.inversion")
    weights = pytest.importorskip("preim3d.weights.encoder")
    from preim3d.networks.encoder import WPlusEncoder

    torch.manual_seed(0)
    encoder = WPlusEncoder(
        stage_units=[1, 1], stage_channels=[8, 16], stem_channels=8, pool_size=2, se_reduction=4
    ).eval()
    latent_avg = torch.randn(1, 14, 512)
    weights.save_encoder(encoder, tmp_path / "bundle", latent_avg=latent_avg)
    aligned = []
    monkeypatch.setattr(align, "align_face", lambda image: aligned.append(image) or image.resize((512, 512)))
    photos = [Image.new("RGB", (64, 64), (40 * i, 90, 200 - 30 * i)) for i in range(3)]
    codes = cli._bundle_encode_fn(tmp_path / "bundle", "cpu")(photos)
    assert aligned == photos
    expected = inversion.invert(encoder, latent_avg, [p.resize((512, 512)) for p in photos])
    assert codes.shape == (3, 14, 512) and torch.equal(codes, expected)


def test_fit_direction_from_photos_through_an_encoder(tmp_path, monkeypatch, capsys):
    _labelled_photos(tmp_path)
    axis = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(0)), dim=0)

    def encode(images):
        return torch.stack([image.getpixel((0, 0))[0] / 255 * axis for image in images])

    monkeypatch.setattr(cli, "_bundle_encode_fn", lambda bundle, device: encode)
    saved = tmp_path / "codes.npz"
    assert (
        cli.main(
            [
                "fit-direction",
                "--photos",
                str(tmp_path),
                "--labels",
                str(tmp_path / "labels.csv"),
                "--encoder",
                "unused",
                "--out",
                str(tmp_path / "bank"),
                "--save-latents",
                str(saved),
            ]
        )
        == 0
    )
    bank = DirectionBank.from_bundle(tmp_path / "bank")
    assert cosine(bank, "Reddish", axis.double()) > 0.99
    # the saved codes refit to the same direction without encoding again
    assert cli.main(["fit-direction", "--latents", str(saved), "--out", str(tmp_path / "again")]) == 0
    again = DirectionBank.from_bundle(tmp_path / "again")
    assert torch.equal(again.direction("Reddish"), bank.direction("Reddish"))
    with np.load(saved) as data:
        assert list(data["files"][:2]) == ["0.png", "1.png"]


def test_directions_heatmap(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    common = torch.randn(D, generator=g)
    folder = tmp_path / "inversion"
    folder.mkdir()
    for name, sign in (("Young", 1), ("Male", -1), ("Smiling", 1)):
        torch.save(
            torch.nn.functional.normalize(torch.randn(D, generator=g) + sign * common, dim=0)[None],
            folder / f"{name}.pt",
        )
    png = tmp_path / "pictures" / "heat.png"
    assert cli.main(["directions-heatmap", str(folder), "--out", str(png)]) == 0
    printed = capsys.readouterr().out
    bank = DirectionBank.from_dir(folder)
    young_male = float(bank.similarity(["Young", "Male"])[0, 1])
    assert young_male < -0.3
    assert "3 directions" in printed and f"Male / Young: {young_male:+.2f}" in printed
    with Image.open(png) as image:
        height = image.height
    bank.save(tmp_path / "bundle")
    assert (
        cli.main(["directions-heatmap", str(tmp_path / "bundle"), "--names", "smile,age", "--out", str(png)])
        == 0
    )
    with Image.open(png) as image:
        assert image.height < height  # two rows of cells instead of three
    assert cli.main(["directions-heatmap", str(folder), "--names", "smile,Bald", "--out", str(png)]) == 1
    assert "'Bald' is a CelebA attribute but this direction bank has no direction" in capsys.readouterr().err
