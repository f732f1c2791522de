"""Attribute editing in the inversion manifold: a bank of directions, plain and precise edits, fitting.

A W+ code `w` is a [14, 512] tensor; `vec(w)` is its row-major flattening in R^7168. An attribute
`a` has a unit direction `d_a` in R^7168: the normal of a linear classifier that separates codes of
photos with and without the attribute (InterfaceGAN, fitted on encoder outputs of real photos,
i.e. in the *inversion manifold*). The attribute's score of a code is

    s_a(w) = <vec(w), d_a>        (signed distance along d_a; the classifier flips at a threshold).

Plain edit (the official PREIM3D edit):   w' = w + sum_a  alpha_a d_a.
It moves s_a by alpha_a but also every other score s_b by sum_a alpha_a <d_a, d_b>: directions are
entangled (e.g. Male and Wearing_Lipstick have cosine about -0.48).

Precise (conditional) edit, holding attributes H fixed: the smallest step that moves each target's
score exactly as asked and no held score at all,

    delta = argmin |delta|  subject to  <delta, d_t> = alpha_t (targets t),  <delta, d_h> = 0 (h in H).

With P the orthogonal projector onto the complement of span{d_h}, the solution lies in the span of
the projected targets d'_t = P d_t: delta = D' (D'^T D')^-1 alpha. For one target this is
alpha d'_t / |d'_t|^2. (InterfaceGAN's conditional manipulation instead walks alpha along
d'_t / |d'_t|, which moves the target's score by only alpha |d'_t|.)

Names and signs. A bank stores directions under their own names (the 40 CelebA attributes for the
official files: 39 of them, no Blurry). Names match case- and punctuation-insensitively
("wavy hair" = "Wavy_Hair"), and friendly aliases map onto them with a sign. One convention holds
everywhere: a positive strength moves towards what the name says. So +Young = younger but
+age = older (age = -Young), +beard = more beard (beard = -No_Beard), +female = -Male.
The official command line applies +degree to Young for "age" (younger); its web demo negates it,
as we do. A strength is a distance in W+ along a unit vector; the official examples use 10, and
strengths beyond ±10 (`preim3d.validation.STRENGTH_LIMIT`) are refused.
"""

from __future__ import annotations

import csv
import difflib
import math
import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import InputImageError, UnknownAttributeError, WeightsError
from .validation import check_strength
from .weights.bundle import is_bundle, read_bundle_component, write_bundle_component

NUM_WS = 14
W_DIM = 512
CODE_DIM = NUM_WS * W_DIM  # 7168

# The 40 CelebA attributes in the dataset's column order.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

# Friendly name -> (attribute, sign). +strength always moves towards the friendly name's meaning.
# Names that already equal an attribute up to case/punctuation ("smiling", "wavyhair", "grayhair",
# "male", "goatee" of the official command line) need no entry.
ALIASES: dict[str, tuple[str, int]] = {
    "age": ("Young", -1),
    "smile": ("Smiling", 1),
    "glasses": ("Eyeglasses", 1),
    "eyeglass": ("Eyeglasses", 1),
    "beard": ("No_Beard", -1),
    "moustache": ("Mustache", 1),
    "stubble": ("5_o_Clock_Shadow", 1),
    "female": ("Male", -1),
    "makeup": ("Heavy_Makeup", 1),
    "lipstick": ("Wearing_Lipstick", 1),
    "hat": ("Wearing_Hat", 1),
    "earrings": ("Wearing_Earrings", 1),
    "necklace": ("Wearing_Necklace", 1),
    "necktie": ("Wearing_Necktie", 1),
    "tie": ("Wearing_Necktie", 1),
    "blond": ("Blond_Hair", 1),
    "blonde": ("Blond_Hair", 1),
    "grey_hair": ("Gray_Hair", 1),
    "mouth_open": ("Mouth_Slightly_Open", 1),
    "pale": ("Pale_Skin", 1),
    "cheekbones": ("High_Cheekbones", 1),
}

# The name people use for each attribute (its alias where one reads better, with the alias's sign:
# "age" +3 is older) and how it is shown, grouped as the demo lays the sliders out. The page, the
# notebook and the messages use these names; any spelling `DirectionBank.resolve` knows still works.
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {
    "Expression": ("Smiling", "Mouth_Slightly_Open", "Narrow_Eyes"),
    "Age and gender": ("Young", "Male"),
    "Hair": (
        "Bald",
        "Bangs",
        "Black_Hair",
        "Blond_Hair",
        "Brown_Hair",
        "Gray_Hair",
        "Receding_Hairline",
        "Straight_Hair",
        "Wavy_Hair",
    ),
    "Facial hair": ("No_Beard", "5_o_Clock_Shadow", "Goatee", "Mustache", "Sideburns", "Bushy_Eyebrows"),
    "Makeup and accessories": (
        "Heavy_Makeup",
        "Wearing_Lipstick",
        "Rosy_Cheeks",
        "Eyeglasses",
        "Wearing_Earrings",
        "Wearing_Hat",
        "Wearing_Necklace",
        "Wearing_Necktie",
    ),
    "Face shape": (
        "Oval_Face",
        "Chubby",
        "Double_Chin",
        "High_Cheekbones",
        "Arched_Eyebrows",
        "Big_Lips",
        "Big_Nose",
        "Pointy_Nose",
        "Bags_Under_Eyes",
        "Pale_Skin",
        "Attractive",
    ),
}
_FRIENDLY = {  # attribute -> the alias users see instead of its CelebA name
    "Smiling": "smile",
    "Mouth_Slightly_Open": "mouth_open",
    "Young": "age",
    "No_Beard": "beard",
    "5_o_Clock_Shadow": "stubble",
    "Heavy_Makeup": "makeup",
    "Wearing_Lipstick": "lipstick",
    "Eyeglasses": "glasses",
    "Wearing_Earrings": "earrings",
    "Wearing_Hat": "hat",
    "Wearing_Necklace": "necklace",
    "Wearing_Necktie": "necktie",
}
_LABELS = {"age": "Age (older →)", "male": "Male (← female)"}


def friendly_name(attribute: str) -> str:
    """The name users see and type for an attribute: 'No_Beard' -> 'beard', 'Wavy_Hair' -> 'wavy_hair'."""
    return _FRIENDLY.get(attribute, attribute.lower())


def attribute_label(attribute: str) -> str:
    """A readable label for an attribute: 'No_Beard' -> 'Beard', 'Young' -> 'Age (older →)'."""
    name = friendly_name(attribute)
    return _LABELS.get(name, name.replace("_", " ").capitalize())


# A target whose direction keeps less than this fraction of its length once the held directions
# (and the other targets) are projected out cannot be moved without moving them.
_MIN_KEPT = 1e-4


def _key(name: str) -> str:
    """Case- and punctuation-insensitive matching key: 'Wavy_Hair', 'wavy hair' -> 'wavyhair'."""
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


_ALIAS_KEYS = {_key(alias): (alias, target, sign) for alias, (target, sign) in ALIASES.items()}
_CELEBA_INDEX = {_key(name): i for i, name in enumerate(CELEBA_ATTRIBUTES)}


def _as_direction(value, name: str) -> torch.Tensor:
    """A [14, 512] float32 unit vector from any tensor of 7168 finite numbers (rescaled if not unit)."""
    d = torch.as_tensor(value)
    if not d.is_floating_point() or d.numel() != CODE_DIM:
        raise ValueError(
            f"Direction {name!r} must be a float tensor of {CODE_DIM} numbers ([1, {CODE_DIM}] or "
            f"[{NUM_WS}, {W_DIM}]); got {d.dtype} of shape {list(d.shape)}."
        )
    d = d.detach().to("cpu", torch.float32).reshape(NUM_WS, W_DIM).clone()
    norm = d.double().norm().item()
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"Direction {name!r} is zero or not finite.")
    # Strength means distance along a unit vector; unit files (all official ones) stay bit-exact.
    if abs(norm - 1.0) > 1e-5:
        d = (d.double() / norm).float()
    return d


@dataclass(frozen=True)
class EditReport:
    """What an edit does to the named attributes' scores s_a(w) = <vec(w), d_a>.

    `targets`: the asked change of each edited attribute's score (aliases resolved, signs applied).
    `plain_shift`: the change a plain edit w + sum alpha d would cause in each target's and each
    held attribute's score (targets also move each other). A precise edit moves every target by
    exactly `targets` and every held attribute by 0. `kept`: for each target, the fraction
    |P d_t| of its direction left once the held directions are projected out (1 = independent).
    `plain_norm` / `precise_norm`: length of the step in W+.
    """

    targets: dict[str, float]
    hold: tuple[str, ...]
    plain_shift: dict[str, float]
    kept: dict[str, float]
    plain_norm: float
    precise_norm: float

    def __str__(self) -> str:
        asked = ", ".join(f"{a} {v:+.2f}" for a, v in self.targets.items())
        moved = ", ".join(f"{a} {v:+.2f}" for a, v in self.plain_shift.items())
        lines = [f"Edit: {asked}" + (f", holding {', '.join(self.hold)}" if self.hold else "")]
        lines.append(f"A plain edit moves the scores: {moved} (step length {self.plain_norm:.2f}).")
        if self.hold:
            lines.append(
                f"The precise edit moves the targets as asked and the held attributes by 0 "
                f"(step length {self.precise_norm:.2f}, "
                f"{self.precise_norm / max(self.plain_norm, 1e-12):.2f}x)."
            )
        return "\n".join(lines)


class DirectionBank:
    """Named unit directions in W+ ([14, 512] each) and the edits they define (module docstring).

    Build one from the official folder of `<Attribute>.pt` files (`from_dir`), from our bundle
    format (`from_bundle`, `save`), or from a mapping {name: tensor of 7168 numbers}.
    """

    def __init__(self, directions: Mapping[str, torch.Tensor], provenance: dict | None = None):
        if not directions:
            raise ValueError("A DirectionBank needs at least one direction.")
        self._directions: dict[str, torch.Tensor] = {}
        self._by_key: dict[str, str] = {}
        for name, value in directions.items():
            key = _key(name)
            if not key:
                raise ValueError(f"Direction name {name!r} has no letters or digits.")
            if key in self._by_key:
                raise ValueError(
                    f"Direction names {self._by_key[key]!r} and {name!r} differ only in case or punctuation."
                )
            self._by_key[key] = str(name)
            self._directions[str(name)] = _as_direction(value, name)
        self.provenance = dict(provenance or {})

    # ---------------------------------------------------------------- loading and saving

    @classmethod
    def from_dir(cls, path) -> DirectionBank:
        """Load a folder of official-style `<Attribute>.pt` files, each one tensor of 7168 numbers.

        Files are read with `torch.load(weights_only=True)`: a file that would need arbitrary
        unpickling is refused with a WeightsError naming it. CelebA attributes come in CelebA order,
        other names after them alphabetically.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise WeightsError(f"Direction folder {folder} does not exist or is not a folder.")
        files = sorted(folder.glob("*.pt"), key=lambda p: (_CELEBA_INDEX.get(_key(p.stem), 40), p.stem))
        if not files:
            raise WeightsError(f"{folder} holds no <Attribute>.pt direction files.")
        directions = {}
        for file in files:
            try:
                value = torch.load(file, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as exc:
                # torch's own message advises weights_only=False; keep only its reason
                reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
                raise WeightsError(
                    f"{file} is damaged or needs arbitrary unpickling to load, which preim3d refuses"
                    f"{f' ({reason.group(1).strip()})' if reason else ''}. Save the direction as a plain "
                    f"tensor (torch.save(tensor, path)) or in a bundle."
                ) from exc
            except Exception as exc:  # a damaged or foreign file: report which one
                raise WeightsError(f"{file} is not a readable PyTorch tensor file ({exc}).") from exc
            if not isinstance(value, torch.Tensor):
                raise WeightsError(f"{file} holds a {type(value).__name__}, not a direction tensor.")
            try:
                directions[file.stem] = _as_direction(value, file.stem)
            except ValueError as exc:
                raise WeightsError(f"{file}: {exc}") from exc
        return cls(directions, provenance={"source": "folder of <Attribute>.pt files", "folder": folder.name})

    @classmethod
    def from_bundle(cls, folder) -> DirectionBank:
        """Load the `directions` component of a preim3d bundle."""
        tensors, config = read_bundle_component(folder, "directions")
        names = config.get("names", sorted(tensors))
        missing = [n for n in names if n not in tensors]
        if missing:
            raise WeightsError(
                f"The bundle {folder} lists directions it does not hold: {', '.join(missing)}."
            )
        try:
            return cls({name: tensors[name] for name in names}, provenance=config.get("provenance"))
        except ValueError as exc:
            raise WeightsError(f"The bundle {folder} has a bad direction: {exc}") from exc

    @classmethod
    def load(cls, path) -> DirectionBank:
        """A bundle folder (with config.json) or a folder of official-style `<Attribute>.pt` files."""
        return cls.from_bundle(path) if is_bundle(path) else cls.from_dir(path)

    def save(self, folder) -> Path:
        """Write this bank as the `directions` component of a bundle (other components are kept)."""
        config = {
            "names": list(self.names),
            "shape": [NUM_WS, W_DIM],
            "convention": "unit normals of row-major flattened W+ codes; w' = w + strength * direction",
            "provenance": self.provenance,
        }
        return write_bundle_component(folder, "directions", self._directions, config)

    def with_directions(self, directions: Mapping[str, torch.Tensor], provenance: dict | None = None):
        """A new bank with `directions` added (same names, up to case and punctuation, are replaced)."""
        replaced = {_key(name) for name in directions}
        kept = {n: d for n, d in self._directions.items() if _key(n) not in replaced}
        return DirectionBank({**kept, **directions}, provenance={**self.provenance, **(provenance or {})})

    # ---------------------------------------------------------------- names

    @property
    def names(self) -> tuple[str, ...]:
        """The stored direction names, in order."""
        return tuple(self._directions)

    def __len__(self) -> int:
        return len(self._directions)

    def __contains__(self, name) -> bool:
        try:
            self.resolve(name)
        except UnknownAttributeError:
            return False
        return True

    def __repr__(self) -> str:
        return f"DirectionBank({len(self)} directions: {', '.join(self.names)})"

    def aliases(self) -> dict[str, tuple[str, int]]:
        """The friendly aliases usable with this bank: alias -> (stored name, sign)."""
        return {
            alias: (self._by_key[_key(target)], sign)
            for alias, (target, sign) in ALIASES.items()
            if _key(target) in self._by_key and _key(alias) not in self._by_key
        }

    def resolve(self, name: str) -> tuple[str, int]:
        """(stored name, sign) for a direction name or alias; UnknownAttributeError if neither."""
        key = _key(name)
        if key in self._by_key:
            return self._by_key[key], 1
        alias = _ALIAS_KEYS.get(key)
        if alias is not None and _key(alias[1]) in self._by_key:
            return self._by_key[_key(alias[1])], alias[2]
        raise UnknownAttributeError(self._unknown_message(name, alias))

    def _unknown_message(self, name, alias) -> str:
        if alias is not None:
            head = f"{name!r} means {alias[1]}, which this direction bank has no direction for."
        elif _key(name) in _CELEBA_INDEX:
            head = f"{name!r} is a CelebA attribute but this direction bank has no direction for it."
        else:
            head = f"Unknown attribute {name!r}."
        aliases = self.aliases()
        choices = {_key(n): n for n in self.names} | {_key(a): a for a in aliases}
        close = difflib.get_close_matches(_key(name), list(choices), n=3, cutoff=0.6)
        if close:
            head += f" Did you mean {' or '.join(repr(choices[c]) for c in close)}?"
        alias_text = ", ".join(f"{a} (= {'-' if s < 0 else ''}{t})" for a, (t, s) in aliases.items())
        return f"{head} Valid names: {', '.join(self.names)}." + (
            f" Aliases: {alias_text}." if aliases else ""
        )

    # ---------------------------------------------------------------- directions and scores

    def direction(self, name: str) -> torch.Tensor:
        """The [14, 512] float32 direction for `name`, sign included:
        apply(w, {name: s}) = w + s * direction(name)."""
        stored, sign = self.resolve(name)
        return self._directions[stored].clone() if sign > 0 else -self._directions[stored]

    def _matrix(self, names) -> torch.Tensor:
        """[K, 7168] float64 signed directions for `names` (all stored names when None)."""
        names = self.names if names is None else names
        return torch.stack([self.direction(n).reshape(-1) for n in names]).double()

    def scores(self, ws: torch.Tensor, names: Iterable[str] | None = None) -> torch.Tensor:
        """Scores <vec(w), d_a>, float64 on the CPU: [..., K] for ws [..., 14, 512]
        (all stored names when None)."""
        ws = _check_ws(ws)
        return ws.detach().to("cpu", torch.float64).reshape(*ws.shape[:-2], CODE_DIM) @ self._matrix(names).T

    def similarity(self, names: Iterable[str] | None = None) -> torch.Tensor:
        """[K, K] cosine similarities <d_a, d_b> of the (signed) directions: how entangled they are."""
        d = self._matrix(None if names is None else list(names))
        d = d / d.norm(dim=1, keepdim=True)
        return d @ d.T

    # ---------------------------------------------------------------- edits

    def _coefficients(self, edits: Mapping[str, float]) -> dict[str, float]:
        """Stored name -> signed strength; names meaning the same direction add up."""
        if not isinstance(edits, Mapping):
            raise TypeError(
                "edits must be a mapping {attribute: strength}, e.g. {'smile': 2.0, 'age': -1.0}."
            )
        coefficients: dict[str, float] = {}
        for name, strength in edits.items():
            stored, sign = self.resolve(name)
            coefficients[stored] = coefficients.get(stored, 0.0) + sign * check_strength(strength, name)
        return coefficients

    def _held(self, hold, coefficients) -> tuple[str, ...]:
        names = [hold] if isinstance(hold, str) else list(hold or ())
        held = tuple(dict.fromkeys(self.resolve(n)[0] for n in names))
        both = [n for n in held if n in coefficients]
        if both:
            raise ValueError(f"{', '.join(both)} cannot be both edited and held fixed.")
        return held

    def _precise_delta(self, coefficients: dict[str, float], held: tuple[str, ...]):
        """Minimum-norm step (float64, [7168]) meeting the constraints of the module docstring, and `kept`."""
        targets = torch.stack([self._directions[n].reshape(-1) for n in coefficients]).double()
        alpha = torch.tensor(list(coefficients.values()), dtype=torch.float64)
        if held:
            # Orthonormal basis of span{d_h} by SVD: exact for several held directions, even redundant ones.
            u, s, _ = torch.linalg.svd(
                torch.stack([self._directions[n].reshape(-1) for n in held]).double().T, full_matrices=False
            )
            basis = u[:, s > 1e-10 * s[0]]
            targets = targets - (targets @ basis) @ basis.T
        kept = dict(zip(coefficients, targets.norm(dim=1).tolist()))
        # delta = D'(D'^T D')^-1 alpha with D' = QR: delta = Q R^-T alpha.
        q, r = torch.linalg.qr(targets.T)
        diag = r.diagonal().abs()
        if (diag < _MIN_KEPT).any():
            bad = list(coefficients)[int(torch.argmin(diag))]
            others = [n for n in (*held, *coefficients) if n != bad]
            raise ValueError(
                f"{bad} cannot be changed on its own while {', '.join(others)} stay as asked: its direction "
                f"is (almost) a combination of theirs. Hold or edit fewer attributes."
            )
        delta = q @ torch.linalg.solve_triangular(r.T, alpha[:, None], upper=False)[:, 0]
        return delta, kept

    def delta(self, edits: Mapping[str, float], hold: Iterable[str] = (), precise: bool = False):
        """The [14, 512] float64 step an edit adds to every code (see `apply`)."""
        coefficients = self._coefficients(edits)
        held = self._held(hold, coefficients)
        if not coefficients:
            return torch.zeros(NUM_WS, W_DIM, dtype=torch.float64)
        if held or precise:
            return self._precise_delta(coefficients, held)[0].reshape(NUM_WS, W_DIM)
        return sum(a * self._directions[n].double() for n, a in coefficients.items())

    def apply(
        self, ws: torch.Tensor, edits: Mapping[str, float], hold: Iterable[str] = (), precise: bool = False
    ) -> torch.Tensor:
        """Edit W+ codes `ws` ([14, 512] or [N, 14, 512]); returns a new tensor of the same shape and dtype.

        Plain (default, the official edit): ws + sum strength * direction(name), added one by one in
        ws's dtype, exactly as the official code. With `hold` (names kept fixed) or precise=True:
        the precise edit of the module docstring (computed in float64, added in ws's dtype) — each
        target's score moves by its strength, each held score stays put. Use `report` to see how
        much a plain edit would have moved them.
        """
        ws = _check_ws(ws)
        coefficients = self._coefficients(edits)
        held = self._held(hold, coefficients)
        if coefficients and (held or precise):
            delta, _ = self._precise_delta(coefficients, held)
            return ws + delta.reshape(NUM_WS, W_DIM).to(ws.device, ws.dtype)
        out = ws
        for name, alpha in coefficients.items():
            out = out + alpha * self._directions[name].to(ws.device, ws.dtype)
        return out.clone() if out is ws else out

    def apply_precise(self, ws: torch.Tensor, edits: Mapping[str, float], hold: Iterable[str] = ()):
        """`apply(ws, edits, hold, precise=True)`: targets move exactly as asked,
        held attributes not at all."""
        return self.apply(ws, edits, hold=hold, precise=True)

    def report(self, edits: Mapping[str, float], hold: Iterable[str] = ()) -> EditReport:
        """How a plain edit would move the targets' and held attributes' scores,
        and the precise step's size."""
        coefficients = self._coefficients(edits)
        held = self._held(hold, coefficients)
        if not coefficients:
            raise ValueError("The edit is empty: give at least one {attribute: strength}.")
        plain = sum(a * self._directions[n].reshape(-1).double() for n, a in coefficients.items())
        precise, kept = self._precise_delta(coefficients, held)
        shift = {n: float(plain @ self._directions[n].reshape(-1).double()) for n in (*coefficients, *held)}
        return EditReport(
            targets=coefficients,
            hold=held,
            plain_shift=shift,
            kept=kept,
            plain_norm=float(plain.norm()),
            precise_norm=float(precise.norm()),
        )


def _check_ws(ws) -> torch.Tensor:
    ws = torch.as_tensor(ws)
    if ws.ndim not in (2, 3) or tuple(ws.shape[-2:]) != (NUM_WS, W_DIM) or not ws.is_floating_point():
        raise ValueError(
            f"ws must be a float tensor [{NUM_WS}, {W_DIM}] or [N, {NUM_WS}, {W_DIM}]; "
            f"got {ws.dtype} of shape {list(ws.shape)}."
        )
    return ws


# ==================================================================== fitting new directions


@dataclass(frozen=True)
class FitResult:
    """A direction fitted by a linear classifier on flattened W+ codes.

    `direction`: [14, 512] float32 unit normal, pointing towards label 1. The classifier says
    "label 1" when <vec(w), direction> > `threshold`. `accuracy` / `balanced_accuracy`: on the
    held-out codes (None without a held-out split); `train_accuracy`: on the codes it was fitted on.
    """

    name: str | None
    direction: torch.Tensor = field(repr=False)
    threshold: float
    accuracy: float | None
    balanced_accuracy: float | None
    train_accuracy: float
    n_train: int
    n_test: int
    n_positive: int
    n_negative: int
    method: str
    l2: float
    seed: int

    def summary(self) -> dict:
        """Everything but the direction, as plain JSON-able values."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "direction"}


def _latent_matrix(latents) -> torch.Tensor:
    x = torch.as_tensor(latents)
    if x.ndim == 3 and tuple(x.shape[1:]) == (NUM_WS, W_DIM):
        x = x.reshape(len(x), CODE_DIM)
    if x.ndim != 2 or x.shape[1] != CODE_DIM or not x.is_floating_point():
        raise ValueError(
            f"latents must be float [N, {NUM_WS}, {W_DIM}] or [N, {CODE_DIM}]; "
            f"got {x.dtype} of shape {list(x.shape)}."
        )
    return x.detach().to("cpu", torch.float32)


def _binary_labels(labels, n: int, name: str | None) -> torch.Tensor:
    """Labels as float64 {0, 1} with NaN for unknown; accepts {0, 1}, {-1, 1} (CelebA) or booleans."""
    y = torch.as_tensor(labels).detach().to("cpu", torch.float64).reshape(-1)
    if len(y) != n:
        raise ValueError(f"Got {n} latents but {len(y)} labels{f' for {name}' if name else ''}.")
    values = set(torch.unique(y[~torch.isnan(y)]).tolist())
    if values <= {0.0, 1.0}:
        return y
    if values <= {-1.0, 1.0}:
        return torch.where(y < 0, 0.0, y)
    raise ValueError(
        f"Labels{f' for {name}' if name else ''} must be 0/1 or -1/1 (NaN = unknown); "
        f"found the values {sorted(values)}."
    )


def _stratified_split(y: torch.Tensor, test_fraction: float, seed: int, what: str):
    """Train and test indices with the same share of each label in both; deterministic in `seed`."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in (0.0, 1.0):
        idx = torch.nonzero(y == label).reshape(-1)
        need = 2 if test_fraction > 0 else 1
        if len(idx) < need:
            raise ValueError(
                f"Fitting {what} needs at least {need} examples of each label; got "
                f"{int((y == 1).sum())} with label 1 and {int((y == 0).sum())} with label 0."
            )
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_test = min(max(round(test_fraction * len(idx)), 1), len(idx) - 1) if test_fraction > 0 else 0
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return torch.cat(train), torch.cat(test)


def _fit_linear(x, y, method: str, l2: float, balance: bool, max_iter: int):
    """Weights w [D] and bias b of f(x) = <w, (x - mu)/sigma> + b, by L-BFGS on the regularised loss

        sum_i c_i loss(y_i f(x_i)) / sum_i c_i + l2/2 |w|^2,    y_i in {-1, +1},

    loss = log(1 + e^-m) (logistic regression) or max(0, 1 - m)^2 (linear L2-SVM); c_i = 1, or
    N / (2 N_class) with `balance`. mu is the mean code, sigma the RMS of the centred entries (one
    scalar, so the normal keeps its direction in W+ coordinates).
    """
    mu = x.mean(0)
    sigma = float((x - mu).pow(2).mean().sqrt())
    if sigma == 0.0:
        raise ValueError("All latents are identical; there is nothing to fit.")
    signs = 2 * y.float() - 1
    weights = torch.ones_like(signs)
    if balance:
        positive = (y == 1).float()
        weights = positive * (len(y) / (2 * positive.sum())) + (1 - positive) * (
            len(y) / (2 * (1 - positive).sum())
        )
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    offset = mu / sigma
    optimizer = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure():
        optimizer.zero_grad()
        # x @ w / sigma - <mu, w> / sigma: avoids a centred copy of x
        margins = signs * (x @ w / sigma - offset @ w + b)
        losses = F.softplus(-margins) if method == "logistic" else F.relu(1 - margins).pow(2)
        loss = (weights * losses).sum() / weights.sum() + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach().double(), float(b.detach()), mu.double(), sigma


def fit_direction(
    latents,
    labels,
    *,
    name: str | None = None,
    method: str = "logistic",
    l2: float = 1e-2,
    test_fraction: float = 0.2,
    balance: bool = True,
    seed: int = 0,
    max_iter: int = 500,
) -> FitResult:
    """Fit an attribute direction: a linear classifier on flattened codes, its unit normal in W+.

    latents: [N, 14, 512] or [N, 7168] codes (e.g. encoder outputs of real photos); labels: [N]
    0/1 or -1/1, NaN = unknown (left out). A stratified `test_fraction` of the codes is held out
    (chosen with `seed`) to measure accuracy; the classifier is fitted on the rest (`_fit_linear`:
    `method` 'logistic' or 'svm', ridge penalty `l2`, classes weighted equally with `balance`).
    Deterministic for a given seed.
    """
    if method not in ("logistic", "svm"):
        raise ValueError(f"method must be 'logistic' or 'svm', not {method!r}.")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1); got {test_fraction}.")
    x = _latent_matrix(latents)
    y = _binary_labels(labels, len(x), name)
    known = ~torch.isnan(y)
    x, y = x[known], y[known]
    what = repr(name) if name else "a direction"
    train, test = _stratified_split(y, test_fraction, seed, what)
    w, b, mu, sigma = _fit_linear(x[train], y[train], method, l2, balance, max_iter)
    norm = float(w.norm())
    if norm == 0.0:
        raise ValueError(f"Fitting {what} found no direction (all weights zero): lower l2.")
    direction = w / norm
    threshold = (float(w @ mu) - b * sigma) / norm
    predicted = (x @ direction.float() > threshold).double()

    def accuracy(idx):
        return float((predicted[idx] == y[idx]).double().mean())

    def balanced(idx):
        return 0.5 * sum(float((predicted[idx][y[idx] == c] == c).double().mean()) for c in (0.0, 1.0))

    has_test = len(test) > 0
    return FitResult(
        name=name,
        direction=direction.float().reshape(NUM_WS, W_DIM),
        threshold=threshold,
        accuracy=accuracy(test) if has_test else None,
        balanced_accuracy=balanced(test) if has_test else None,
        train_accuracy=accuracy(train),
        n_train=len(train),
        n_test=len(test),
        n_positive=int((y == 1).sum()),
        n_negative=int((y == 0).sum()),
        method=method,
        l2=l2,
        seed=seed,
    )


# Column names taken for the photo file name in a labels CSV (else the first column).
_FILE_COLUMNS = ("file", "filename", "file_name", "image", "image_id", "path", "name")


def read_label_table(path) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Read a labels CSV: a header row, one column of file names, one column per attribute.

    Cells are 0/1 or -1/1 (CelebA's list_attr format); an empty cell means unknown (NaN).
    The file column is the one named file/filename/image/image_id/path/name, else the first.
    """
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise InputImageError(f"Cannot read the labels file {path} ({exc}).") from exc
    if len(rows) < 2:
        raise InputImageError(f"{path} needs a header row and at least one row of labels.")
    header = [h.strip() for h in rows[0]]
    file_col = next((i for i, h in enumerate(header) if h.lower() in _FILE_COLUMNS), 0)
    files, values = [], {h: [] for i, h in enumerate(header) if i != file_col}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputImageError(f"{path} line {line} has {len(row)} cells; the header has {len(header)}.")
        files.append(row[file_col].strip())
        for i, h in enumerate(header):
            if i == file_col:
                continue
            cell = row[i].strip()
            try:
                values[h].append(float(cell) if cell else math.nan)
            except ValueError:
                raise InputImageError(
                    f"{path} line {line}, column {h!r}: {cell!r} is not 0/1 or -1/1."
                ) from None
    duplicates = sorted({f for f in files if files.count(f) > 1})
    if duplicates:
        raise InputImageError(f"{path} lists some files twice: {', '.join(duplicates[:5])}.")
    return files, {h: torch.tensor(v, dtype=torch.float64) for h, v in values.items()}


@dataclass
class PhotoFit:
    """Directions fitted from photos: per attribute a FitResult, and the codes they were fitted on.

    `latents` [M, 14, 512] are the codes of `files` (in that order) with `labels` [M] per attribute
    (NaN = unknown), so the fit can be repeated without encoding again. `skipped`: file -> reason.
    """

    results: dict[str, FitResult]
    files: list[str]
    latents: torch.Tensor
    labels: dict[str, torch.Tensor]
    skipped: dict[str, str]


def encode_photos(paths: list[Path], encode_fn: Callable, batch_size: int = 16):
    """Codes [M, 14, 512] of the photos that could be read and encoded, their indices, and skip reasons.

    `encode_fn(list of PIL RGB images) -> [B, 14, 512]`. When it raises an InputImageError (say, no
    face in one photo) for a batch, that batch is encoded photo by photo and the failures skipped.
    Photos are opened one batch at a time, so a large folder never sits in memory at once.
    """
    from PIL import Image, UnidentifiedImageError

    codes, kept, skipped = [], [], {}

    def encode(batch):
        out = torch.as_tensor(encode_fn([image for _, image in batch])).detach().to("cpu", torch.float32)
        if out.numel() != len(batch) * CODE_DIM:
            raise ValueError(
                f"encode_fn must return [{len(batch)}, {NUM_WS}, {W_DIM}] codes; got shape {list(out.shape)}."
            )
        codes.append(out.reshape(len(batch), NUM_WS, W_DIM))
        kept.extend(i for i, _ in batch)

    for start in range(0, len(paths), batch_size):
        batch = []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                with Image.open(paths[i]) as image:
                    batch.append((i, image.convert("RGB")))
            except (OSError, UnidentifiedImageError) as exc:
                skipped[paths[i].name] = f"unreadable image ({exc})"
        if not batch:
            continue
        try:
            encode(batch)
        except InputImageError:
            for item in batch:
                try:
                    encode([item])
                except InputImageError as exc:
                    skipped[paths[item[0]].name] = str(exc)
    latents = torch.cat(codes) if codes else torch.zeros(0, NUM_WS, W_DIM)
    return latents, kept, skipped


def fit_directions_from_photos(
    folder,
    labels_csv,
    encode_fn: Callable,
    *,
    attributes: Iterable[str] | None = None,
    batch_size: int = 16,
    **fit_kwargs,
) -> PhotoFit:
    """Encode the photos a labels CSV lists (files relative to `folder`) and fit one direction per attribute.

    `encode_fn` maps a list of PIL RGB photos to W+ codes [B, 14, 512] (alignment + encoder;
    see `encode_photos`). `attributes`: the CSV columns to fit (default all). `fit_kwargs` go to
    `fit_direction`.
    """
    folder = Path(folder)
    files, table = read_label_table(labels_csv)
    names = list(table) if attributes is None else list(attributes)
    unknown = [a for a in names if a not in table]
    if unknown:
        raise InputImageError(
            f"{labels_csv} has no column {', '.join(map(repr, unknown))}; "
            f"its attribute columns: {', '.join(table)}."
        )
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise InputImageError(
            f"{len(missing)} photos listed in {labels_csv} are not in {folder}: "
            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}."
        )
    for name in names:  # fail before the slow encoding when a column can never be fitted
        _binary_labels(table[name], len(files), name)
    latents, kept, skipped = encode_photos([folder / f for f in files], encode_fn, batch_size)
    index = torch.tensor(kept, dtype=torch.long)
    labels = {name: table[name][index] for name in names}
    results = {name: fit_direction(latents, labels[name], name=name, **fit_kwargs) for name in names}
    return PhotoFit(
        results=results, files=[files[i] for i in kept], latents=latents, labels=labels, skipped=skipped
    )


# ==================================================================== entanglement picture


def similarity_heatmap(
    bank: DirectionBank,
    names: Iterable[str] | None = None,
    *,
    cell: int = 34,
    title: str | None = "Cosine similarity of the editing directions",
):
    """A PIL image of the cosine-similarity matrix of the bank's directions, labelled, values printed.

    Blue = opposite directions (-1), white = independent (0), red = the same direction (+1). Large
    off-diagonal values mean a plain edit of one attribute also changes the other.
    """
    from .plots import heatmap

    labels = list(bank.names if names is None else names)
    return heatmap(bank.similarity(labels).tolist(), labels, labels, title or "", limit=1.0, cell=cell)
