"""Image and latent losses of PREIM3D's training (the identity loss lives in `identity.py`, the
adversarial one in `discriminator.py`).

    L2      = mean (y_hat - y)^2                              over every pixel and channel
    LPIPS   = mean_i sum_l mean_hw |w_l . (phi_l(y_hat_i) - phi_l(y_i))|^2   (unit-normalised
              AlexNet features phi_l, learned weights w_l; the `lpips` package, v0.1)
    L_w     = mean (codes - ws_true)^2                        on synthetic micro-batches only
    total   = l2 L2 + lpips LPIPS + id L_id + adv L_adv + lambda_w(step) L_w + mv L_id,multi-view

The latent weight grows in steps: lambda_w(step) = start + delta * min(floor(step / interval), max).
With PREIM3D's values (0, 0.1, 5000, 100) it reaches 10 at step 500,000. (The official code adds
delta on synthetic steps that are multiples of the interval; with its 1:1 alternation that is the
same schedule.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Preim3DError


def l2_loss(y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(y_hat.float(), y.float())


def latent_loss(codes: torch.Tensor, ws_true: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(codes.float(), ws_true.float())


def latent_loss_weight(step: int, start: float, delta: float, interval: int, max_increments: int) -> float:
    """lambda_w(step) = start + delta * min(floor(step / interval), max_increments)."""
    return start + delta * min(step // interval, max_increments)


class PerceptualLoss(nn.Module):
    """LPIPS distance (mean over the batch) from the optional `lpips` package, frozen.

    Use `PerceptualLoss.create(net)`: without `lpips` it stops with what to do about it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    @classmethod
    def create(cls, net: str = "alex") -> PerceptualLoss:
        try:
            import lpips
        except ModuleNotFoundError as exc:
            if exc.name != "lpips":  # lpips is there but something it needs is not: that is the error
                raise
            raise Preim3DError(
                "The LPIPS loss needs the optional package `lpips`, which is not installed: install it "
                '(pip install lpips, or pip install -e ".[train]"), or train without LPIPS by setting its '
                "weight to 0 (--lpips-lambda 0, or lpips_lambda = 0 in the config file)."
            ) from exc
        return cls(lpips.LPIPS(net=net, verbose=False))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.model(y_hat, y).mean()
