"""Editing precision: how far an edit moves its target attribute against how far it moves the others.

Latent space. Each attribute b of a DirectionBank has a score s_b(w) = <vec(w), d_b>
(`DirectionBank.scores`). An edit of target t by strength alpha turns w into w'; its leakage into
attribute b is the score change per unit of asked change,

    l_b = (s_b(w') - s_b(w)) / alpha,        target accuracy  l_t  (1 = moved exactly as asked).

A plain edit w' = w + alpha d_t gives l_t = 1 and l_b = <d_t, d_b> (the directions' cosine), the
same for every photo: leakage in latent space is a property of the directions. A precise edit that
holds the other attributes gives l_b = 0 for every held b (up to rounding). Summaries over the
other attributes B: mean |l_b| and the largest |l_b| (with its attribute).

Image space. The identity similarity (`preim3d.evaluation.identity`) between the render of w and
the render of w' from the same camera: an edit that leaks into identity-bearing attributes
(Male, Young, ...) changes the person more. There is no attribute classifier in image space
here, so the target's change in the picture is shown in the example grid, not measured.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from ..editing import CODE_DIM, DirectionBank


def other_attributes(bank: DirectionBank, target: str) -> list[str]:
    """The bank's stored names except the one `target` (a name or alias) resolves to."""
    stored = bank.resolve(target)[0]
    return [name for name in bank.names if name != stored]


def latent_leakage(
    bank: DirectionBank, ws: torch.Tensor, edited: torch.Tensor, target: str, strength: float
) -> dict:
    """Leakage of one single-attribute edit ws -> edited (module docstring).

    Returns {'target_shift': l_t, 'leakage': {b: l_b for every other attribute b},
    'mean_leak': mean |l_b|, 'max_leak': max |l_b|, 'max_leak_attribute': its b,
    'step': |vec(w') - vec(w)|}. The target's sign follows its name, so for 'age' (= -Young)
    l_t is measured along -d_Young.
    """
    if strength == 0:
        raise ValueError(f"The strength of the {target!r} edit is 0: leakage is relative to it.")
    stored, sign = bank.resolve(target)
    others = other_attributes(bank, target)
    names = [stored, *others]
    # rows are identical for a batch of codes edited the same way; the mean keeps one
    change = (bank.scores(edited, names) - bank.scores(ws, names)).reshape(-1, len(names)).mean(0) / strength
    leakage = dict(zip(others, change[1:].tolist()))
    worst = max(leakage, key=lambda b: abs(leakage[b]), default=None)
    step = (edited.double() - ws.double()).reshape(-1, CODE_DIM).norm(dim=1).mean()
    return {
        "target_shift": sign * float(change[0]),
        "leakage": leakage,
        "mean_leak": float(change[1:].abs().mean()) if others else 0.0,
        "max_leak": abs(leakage[worst]) if others else 0.0,
        "max_leak_attribute": worst,
        "step": float(step),
    }


def plain_and_precise(
    bank: DirectionBank, ws: torch.Tensor, target: str, strength: float, hold: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """{'plain': ws + strength * d_target, 'precise': the precise edit holding `hold`}.

    hold=None holds every other attribute of the bank, the strictest precise edit; the target itself
    is left out of `hold`. Raises ValueError when the target is (almost) a combination of the held
    directions, so no step can move it alone.
    """
    stored = bank.resolve(target)[0]
    hold = [
        h for h in (other_attributes(bank, target) if hold is None else hold) if bank.resolve(h)[0] != stored
    ]
    edits = {target: strength}
    return {"plain": bank.apply(ws, edits), "precise": bank.apply(ws, edits, hold=hold, precise=True)}


def available_edits(bank: DirectionBank, edits: Mapping[str, float]) -> dict[str, float]:
    """The edits whose attribute the bank has (names or aliases), in order; the others are left out."""
    return {name: float(strength) for name, strength in edits.items() if name in bank}
