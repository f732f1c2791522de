"""Direction bank, plain and precise edits, fitting directions, and the entanglement picture."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import preim3d
from preim3d.editing import (
    ATTRIBUTE_GROUPS,
    CELEBA_ATTRIBUTES,
    DirectionBank,
    attribute_label,
    fit_direction,
    fit_directions_from_photos,
    friendly_name,
    read_label_table,
    similarity_heatmap,
)
from preim3d.errors import InputImageError, NoFaceError, UnknownAttributeError, WeightsError
from preim3d.plots import diverging_colour

D = 14 * 512


def unit(v):
    return v / v.norm()


def entangled_directions(names, seed=0, shared=0.8):
    """Unit [1, 7168] directions that share a common component,
    like real attribute directions (|cos| ~ 0.4)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(D, generator=g, dtype=torch.float64)
    out = {}
    for i, name in enumerate(names):
        sign = 1 if i % 2 == 0 else -1
        out[name] = unit(torch.randn(D, generator=g, dtype=torch.float64) + sign * shared * common).float()[
            None
        ]
    return out


NAMES = ["Smiling", "Young", "Male", "Eyeglasses", "No_Beard", "Wearing_Lipstick", "Heavy_Makeup"]


@pytest.fixture
def official_folder(tmp_path):
    """A folder shaped like the official release: <Attribute>.pt, each a [1, 7168] float32 unit vector."""
    folder = tmp_path / "inversion"
    folder.mkdir()
    for name, d in entangled_directions(NAMES).items():
        torch.save(d, folder / f"{name}.pt")
    return folder


@pytest.fixture
def bank(official_folder):
    return DirectionBank.from_dir(official_folder)


@pytest.fixture
def ws():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 14, 512, generator=g) * 1.5 + 0.2


# ------------------------------------------------------------------ loading


def test_from_dir_loads_official_style_files_in_celeba_order(official_folder, bank):
    assert preim3d.DirectionBank is DirectionBank
    assert list(bank.names) == sorted(NAMES, key=CELEBA_ATTRIBUTES.index)
    for name in NAMES:
        stored = torch.load(official_folder / f"{name}.pt", weights_only=True)
        assert torch.equal(bank.direction(name), stored.reshape(14, 512))


def test_from_dir_refuses_files_that_need_unpickling(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):  # full unpickling would create `marker`
            return (open, (str(marker), "w"))

    folder = tmp_path / "bad"
    folder.mkdir()
    torch.save(Payload(), folder / "Smiling.pt")
    with pytest.raises(WeightsError, match="Smiling.pt.*refuses"):
        DirectionBank.from_dir(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (torch.zeros(1, 100), "7168"),
        ({"direction": torch.zeros(1, D)}, "dict"),
        (torch.zeros(1, D), "zero"),
        (b"not a torch file", "damaged"),
    ],
)
def test_from_dir_rejects_bad_contents_naming_the_file(tmp_path, content, message):
    path = tmp_path / "Young.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=message) as info:
        DirectionBank.from_dir(tmp_path)
    assert "Young.pt" in str(info.value)


def test_non_unit_directions_are_normalised():
    bank = DirectionBank({"Freckles": torch.full((14, 512), 3.0)})
    assert bank.direction("Freckles").double().norm().item() == pytest.approx(1.0, abs=1e-6)


def test_bundle_round_trip(tmp_path, bank):
    bank.save(tmp_path / "bundle")
    again = DirectionBank.from_bundle(tmp_path / "bundle")
    assert again.names == bank.names
    for name in bank.names:
        assert torch.equal(again.direction(name), bank.direction(name))
    assert DirectionBank.load(tmp_path / "bundle").names == bank.names
    assert again.provenance["folder"] == "inversion"


def test_bundle_without_directions_is_a_clear_error(tmp_path):
    from preim3d.weights.bundle import write_bundle_component

    write_bundle_component(tmp_path, "encoder", {"w": torch.zeros(2)}, {})
    with pytest.raises(WeightsError, match="no 'directions' component"):
        DirectionBank.from_bundle(tmp_path)


# ------------------------------------------------------------------ names


def test_unknown_names_list_valid_ones_and_suggest(bank, ws):
    with pytest.raises(UnknownAttributeError) as info:
        bank.apply(ws, {"Smilng": 1.0})
    text = str(info.value)
    assert "Did you mean 'Smiling'" in text
    assert all(name in text for name in NAMES)
    assert "age (= -Young)" in text
    with pytest.raises(KeyError, match="CelebA attribute"):
        bank.direction("Blurry")
    with pytest.raises(UnknownAttributeError, match="'hat' means Wearing_Hat"):
        bank.direction("hat")


def test_aliases_follow_one_sign_convention(bank, ws):
    young, no_beard = bank.direction("Young"), bank.direction("No_Beard")
    assert torch.equal(bank.apply(ws, {"age": 2.0}), ws - 2.0 * young)  # +age = older
    assert torch.equal(bank.apply(ws, {"beard": 1.5}), ws - 1.5 * no_beard)
    assert torch.equal(bank.direction("female"), -bank.direction("Male"))
    assert torch.equal(bank.direction("wearing lipstick"), bank.direction("lipstick"))
    assert torch.equal(bank.direction("SMILE"), bank.direction("Smiling"))
    # the score of the named attribute moves by +strength, whatever the sign of the alias
    moved = bank.scores(bank.apply(ws, {"age": 3.0}), ["age"]) - bank.scores(ws, ["age"])
    assert torch.allclose(moved, torch.full_like(moved, 3.0), atol=1e-5)
    assert "age" in bank and "Bald" not in bank


def test_each_official_direction_has_one_group_and_a_friendly_name_of_the_same_sense():
    grouped = [name for names in ATTRIBUTE_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(a for a in CELEBA_ATTRIBUTES if a != "Blurry")  # each once
    bank = DirectionBank({name: torch.randn(1, D) for name in grouped})
    for name in grouped:  # the friendly name means the attribute itself, not its opposite...
        assert bank.resolve(friendly_name(name)) == (name, 1) or name in ("Young", "No_Beard"), name
    # ... except where the opposite reads better, and the label says which way is positive
    assert (
        bank.resolve(friendly_name("Young")) == ("Young", -1) and attribute_label("Young") == "Age (older →)"
    )
    assert (
        bank.resolve(friendly_name("No_Beard")) == ("No_Beard", -1) and attribute_label("No_Beard") == "Beard"
    )
    assert attribute_label("Wearing_Lipstick") == "Lipstick" and attribute_label("Wavy_Hair") == "Wavy hair"


# ------------------------------------------------------------------ plain edits


def test_apply_is_the_official_additive_edit(bank, ws):
    for name in bank.names:
        for strength in (3.0, -10.0):
            assert torch.equal(bank.apply(ws, {name: strength}), ws + strength * bank.direction(name))
    two = bank.apply(ws[0], {"Smiling": 3.0, "Young": -2.0})
    assert two.shape == (14, 512)
    assert torch.equal(two, ws[0] + 3.0 * bank.direction("Smiling") + -2.0 * bank.direction("Young"))
    unchanged = bank.apply(ws, {})
    assert torch.equal(unchanged, ws) and unchanged is not ws


def test_apply_rejects_bad_inputs(bank, ws):
    with pytest.raises(ValueError, match=r"\[14, 512\]"):
        bank.apply(torch.zeros(2, 7168), {"smile": 1.0})
    with pytest.raises(ValueError, match="from -10 to 10, not nan"):
        bank.apply(ws, {"smile": math.nan})
    with pytest.raises(TypeError, match="mapping"):
        bank.apply(ws, "smile")


# ------------------------------------------------------------------ precise edits


def test_precise_edit_holds_attributes_and_moves_targets_as_asked(bank, ws):
    edits, hold = {"smile": 3.0, "age": 2.0}, ["Male", "Eyeglasses", "beard", "lipstick"]
    report = bank.report(edits, hold)
    out = bank.apply(ws, edits, hold=hold)
    assert out.dtype == torch.float32 and out.shape == ws.shape

    moved = bank.scores(out, ["smile", "age", *hold]) - bank.scores(ws, ["smile", "age", *hold])
    assert torch.allclose(moved[:, :2], torch.tensor([3.0, 2.0], dtype=torch.float64), atol=1e-5)
    assert moved[:, 2:].abs().max() <= 1e-5

    # the report says how far a plain edit would have moved the held attributes, and that is far
    plain = bank.apply(ws, edits)
    plain_moved = bank.scores(plain, bank.names) - bank.scores(ws, bank.names)
    for name, shift in report.plain_shift.items():
        assert plain_moved[:, bank.names.index(name)] == pytest.approx([shift] * len(ws), abs=1e-4)
    assert max(abs(report.plain_shift[h]) for h in report.hold) > 0.5
    assert report.hold == ("Male", "Eyeglasses", "No_Beard", "Wearing_Lipstick")
    assert report.targets == {"Smiling": 3.0, "Young": -2.0}
    assert "holding Male" in str(report)


def test_precise_step_is_the_minimum_norm_one(bank):
    edits, hold = {"Smiling": 2.5}, ["Male", "Young"]
    delta = bank.delta(edits, hold).reshape(-1)
    # it lies in span{target, held}: nothing moves that need not
    span = torch.stack([bank.direction(n).reshape(-1).double() for n in ["Smiling", *hold]]).T
    q, _ = torch.linalg.qr(span)
    assert (delta - q @ (q.T @ delta)).norm() < 1e-10
    # one target: alpha * P d / |P d|^2, longer than the plain step when the target is entangled
    report = bank.report(edits, hold)
    assert report.precise_norm == pytest.approx(2.5 / report.kept["Smiling"], rel=1e-9)
    assert report.precise_norm > report.plain_norm


def test_precise_without_hold_moves_each_target_exactly(bank, ws):
    edits = {"Smiling": 3.0, "Male": 1.0}
    plain, precise = bank.apply(ws, edits), bank.apply_precise(ws, edits)
    asked = torch.tensor([3.0, 1.0], dtype=torch.float64)
    precise_moved = bank.scores(precise, ["Smiling", "Male"]) - bank.scores(ws, ["Smiling", "Male"])
    plain_moved = bank.scores(plain, ["Smiling", "Male"]) - bank.scores(ws, ["Smiling", "Male"])
    assert torch.allclose(precise_moved, asked.expand_as(precise_moved), atol=1e-5)
    assert (plain_moved - asked).abs().max() > 0.1  # the plain edit's targets pull on each other


def test_impossible_precise_edits_are_errors(ws):
    directions = entangled_directions(["A", "B", "C"])
    directions["AB"] = unit(directions["A"] + directions["B"])
    bank = DirectionBank(directions)
    with pytest.raises(ValueError, match="AB cannot be changed on its own while A, B stay"):
        bank.apply(ws, {"AB": 1.0}, hold=["A", "B"])
    with pytest.raises(ValueError, match="both edited and held"):
        bank.apply(ws, {"A": 1.0}, hold=["a"])
    # holding a direction twice (or redundant held directions) is harmless
    out = bank.apply(ws, {"C": 1.0}, hold=["A", "A", "B", "AB"])
    assert (bank.scores(out, ["A", "B"]) - bank.scores(ws, ["A", "B"])).abs().max() <= 1e-5


# ------------------------------------------------------------------ fitting


def synthetic_codes(n, rank=64, seed=0, flip=0.0):
    """Codes like encoder outputs, and labels from a known hyperplane.

    The encoder's last layer is linear (512 -> 14x512), so its codes lie in an affine subspace of W+:
    here latent_avg + basis @ f with f ~ N(0, I) in `rank` dimensions. Label 1 when the code's
    score along `truth` (a direction inside the subspace) exceeds a threshold; `flip` of the labels
    are then flipped at random.
    """
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, rank, generator=g, dtype=torch.float64))[0]
    latent_avg = 0.3 * torch.randn(D, generator=g, dtype=torch.float64)
    codes = latent_avg + torch.randn(n, rank, generator=g, dtype=torch.float64) @ basis.T
    truth = basis @ unit(torch.randn(rank, generator=g, dtype=torch.float64))
    labels = ((codes - latent_avg) @ truth > 0.3).double()
    flipped = torch.rand(n, generator=g, dtype=torch.float64) < flip
    labels[flipped] = 1 - labels[flipped]
    return codes.float().reshape(n, 14, 512), labels, truth


@pytest.mark.parametrize("method", ["logistic", "svm"])
def test_fitted_direction_recovers_the_truth(method):
    codes, labels, truth = synthetic_codes(2000)
    result = fit_direction(codes, labels, method=method, name="Freckles")
    cosine = float(result.direction.reshape(-1).double() @ truth)
    assert cosine >= 0.99
    assert result.direction.shape == (14, 512)
    assert result.direction.double().norm().item() == pytest.approx(1.0, abs=1e-6)
    assert result.accuracy >= 0.95 and result.balanced_accuracy >= 0.95
    assert (result.n_train, result.n_test) == (1600, 400)
    assert result.n_positive == int(labels.sum()) and result.n_positive + result.n_negative == 2000
    # the threshold is the classifier's: it reproduces the reported training accuracy
    test_share = result.n_test / 2000
    scores = codes.reshape(2000, -1).double() @ result.direction.reshape(-1).double()
    overall = float(((scores > result.threshold).double() == labels).double().mean())
    expected = (1 - test_share) * result.train_accuracy + test_share * result.accuracy
    assert overall == pytest.approx(expected, abs=1e-3)
    assert result.summary()["name"] == "Freckles" and "direction" not in result.summary()


def test_fit_is_deterministic_in_its_seed_and_handles_label_formats():
    codes, labels, _ = synthetic_codes(200, rank=8, seed=3)
    a = fit_direction(codes, labels, seed=5)
    b = fit_direction(codes.reshape(200, -1), 2 * labels - 1, seed=5)  # [N, 7168] codes, -1/1 labels
    c = fit_direction(codes, labels, seed=6)
    assert torch.equal(a.direction, b.direction) and a.accuracy == b.accuracy
    assert not torch.equal(a.direction, c.direction)
    unknown = labels.clone()
    unknown[:50] = math.nan
    d = fit_direction(codes, unknown, test_fraction=0.0)
    assert d.n_train == 150 and d.n_test == 0 and d.accuracy is None


@pytest.mark.parametrize(
    "labels, message",
    [
        (torch.tensor([0.0, 1.0, 2.0] * 20), "0/1 or -1/1"),
        (torch.tensor([-1.0, 0.0, 1.0] * 20), "0/1 or -1/1"),
        (torch.ones(60), "both|each label"),
        (torch.ones(59), "59 labels"),
    ],
)
def test_fit_rejects_unusable_labels(labels, message):
    codes, _, _ = synthetic_codes(60, rank=8)
    with pytest.raises(ValueError, match=message):
        fit_direction(codes, labels)


def _photo_folder(tmp_path, n=48, seed=0):
    """Solid-colour photos; red decides 'Reddish' (0/1) and green decides 'Greenish' (-1/1)."""
    g = torch.Generator().manual_seed(seed)
    rows = ["file,Reddish,Greenish"]
    for i in range(n):
        r, gr = (int(v) for v in torch.randint(0, 256, (2,), generator=g))
        Image.new("RGB", (16, 16), (r, gr, 90)).save(tmp_path / f"p{i:02d}.png")
        rows.append(f"p{i:02d}.png,{int(r > 127)},{1 if gr > 127 else -1}")
    return rows


def _colour_encoder(red_axis, green_axis, calls):
    """A stand-in for align + encode: a code that depends linearly on the photo's colour."""

    def encode(images):
        calls.append(len(images))
        codes = []
        for image in images:
            r, g, b = (c / 255 for c in image.getpixel((0, 0)))
            if b == 0:
                raise NoFaceError("no face found")
            codes.append((r - 0.5) * red_axis + (g - 0.5) * green_axis)
        return torch.stack(codes).reshape(-1, 14, 512)

    return encode


def test_fit_directions_from_photos(tmp_path):
    rows = _photo_folder(tmp_path)
    rows[1] = rows[1].replace(",0,", ",,").replace(",1,", ",,")  # p00's Reddish label is unknown
    Image.new("RGB", (16, 16), (200, 30, 0)).save(tmp_path / "noface.png")  # encode_fn refuses it
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.insert(1, "noface.png,1,-1")
    rows.append("broken.png,0,1")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    g = torch.Generator().manual_seed(7)
    red_axis, green_axis = unit(torch.randn(D, generator=g)), unit(torch.randn(D, generator=g))
    calls = []
    fit = fit_directions_from_photos(
        tmp_path,
        tmp_path / "labels.csv",
        _colour_encoder(red_axis, green_axis, calls),
        batch_size=8,
        test_fraction=0.25,
    )
    assert fit.skipped.keys() == {"noface.png", "broken.png"}
    assert "no face" in fit.skipped["noface.png"]
    assert len(fit.files) == 48 and fit.latents.shape == (48, 14, 512)
    assert calls[:10] == [8] + [1] * 8 + [8]  # the failing batch went photo by photo
    reddish, greenish = fit.results["Reddish"], fit.results["Greenish"]
    assert reddish.n_train + reddish.n_test == 47 and greenish.n_train + greenish.n_test == 48
    assert reddish.accuracy >= 0.9 and greenish.accuracy >= 0.9
    assert float(reddish.direction.reshape(-1) @ red_axis) > 0.9
    assert float(greenish.direction.reshape(-1) @ green_axis) > 0.9  # -1/1 labels: +1 = greenish


def test_photo_fitting_reports_missing_files_and_columns(tmp_path):
    rows = _photo_folder(tmp_path, n=4)
    (tmp_path / "labels.csv").write_text("\n".join(rows + ["gone.jpg,1,1"]) + "\n")
    encode = _colour_encoder(torch.zeros(D), torch.zeros(D), [])
    with pytest.raises(InputImageError, match="gone.jpg"):
        fit_directions_from_photos(tmp_path, tmp_path / "labels.csv", encode)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputImageError, match="no column 'Bald'.*Reddish, Greenish"):
        fit_directions_from_photos(tmp_path, tmp_path / "labels.csv", encode, attributes=["Bald"])


def test_label_table_reads_celeba_style_csv(tmp_path):
    path = tmp_path / "list_attr.csv"
    path.write_text("Smiling,image_id,Young\n1,000001.jpg,-1\n,000002.jpg,1\n")
    files, table = read_label_table(path)
    assert files == ["000001.jpg", "000002.jpg"]
    assert table["Smiling"][0] == 1 and math.isnan(table["Smiling"][1])
    assert table["Young"].tolist() == [-1.0, 1.0]
    path.write_text("file,Smiling\na.jpg,yes\n")
    with pytest.raises(InputImageError, match="line 2.*'yes'"):
        read_label_table(path)


# ------------------------------------------------------------------ entanglement picture


def test_similarity_and_heatmap_colours():
    g = torch.Generator().manual_seed(0)
    a = unit(torch.randn(D, generator=g, dtype=torch.float64))
    e = torch.randn(D, generator=g, dtype=torch.float64)
    e = unit(e - (e @ a) * a)
    c = torch.randn(D, generator=g, dtype=torch.float64)
    bank = DirectionBank({"A": a, "B": -0.9 * a + math.sqrt(1 - 0.81) * e, "C": unit(c)})
    sim = bank.similarity()
    assert sim[0, 1] == pytest.approx(-0.9, abs=1e-6) and torch.allclose(
        sim.diagonal(), torch.ones(3, dtype=torch.float64)
    )
    assert bank.similarity(["A", "c"]).shape == (2, 2)

    def count(image, value):
        return int(
            (np.asarray(image) == np.array(diverging_colour(value), dtype=np.uint8)).all(axis=-1).sum()
        )

    cell = 34
    whole = similarity_heatmap(bank, cell=cell)
    assert whole.mode == "RGB"
    assert count(whole, float(sim[0, 1])) > cell * cell  # both A/B cells are filled blue
    assert count(whole, 1.0) > 2 * cell * cell  # the diagonal is red
    part = similarity_heatmap(bank, ["A", "C"], cell=cell)
    assert count(part, float(sim[0, 1])) < cell * cell / 3
    assert part.height < whole.height  # two rows of cells instead of three (the title sets a minimum width)
