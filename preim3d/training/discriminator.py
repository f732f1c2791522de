"""The e4e-style latent discriminator: it tells the encoder's W+ rows from the mapping network's w.

    D(w) = Linear(512->1)( LReLU(Linear(512->512)( LReLU(Linear( LReLU(Linear(w)) )) )) ),  LReLU slope 0.2

Losses (non-saturating, softplus(x) = log(1 + e^x)):

    discriminator   L_D   = mean softplus(-D(w_real)) + mean softplus(D(w_fake))
    R1 (lazy)       L_R1  = (r1 / 2) * d_reg_every * mean_i |grad_w D(w_real_i)|^2, every d_reg_every updates
    encoder         L_adv = mean over samples and the n_styles rows of softplus(-D(code_row))

Real w are mapping-network samples at the frontal camera without truncation; fake w are encoder
codes (offsets + latent average). Both pass through a `LatentPool` of past codes, which also picks
one random row of each W+ code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd, nn


class LatentDiscriminator(nn.Module):
    """w [..., w_dim] -> logit [..., 1]: `hidden_layers` x (Linear w_dim->w_dim, LeakyReLU 0.2),
    Linear w_dim->1.

    Parameter names (`mlp.0.weight`, ..., `mlp.6.bias`) are those of the official discriminator.
    """

    def __init__(self, w_dim: int = 512, hidden_layers: int = 3):
        super().__init__()
        layers = []
        for _ in range(hidden_layers):
            layers += [nn.Linear(w_dim, w_dim), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(w_dim, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(w)


def discriminator_loss(D: nn.Module, real_w: torch.Tensor, fake_w: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """L_D and its two halves (floats, for logging)."""
    real = F.softplus(-D(real_w)).mean()
    fake = F.softplus(D(fake_w)).mean()
    return real + fake, {"d_real": real.item(), "d_fake": fake.item()}


def r1_penalty(D: nn.Module, real_w: torch.Tensor) -> torch.Tensor:
    """mean_i |grad_w D(w_i)|^2 at the real codes, differentiable in D's parameters (create_graph)."""
    real_w = real_w.detach().requires_grad_(True)
    (grad,) = autograd.grad(D(real_w).sum(), real_w, create_graph=True)
    return grad.square().reshape(len(grad), -1).sum(1).mean()


def encoder_adversarial_loss(D: nn.Module, codes: torch.Tensor) -> torch.Tensor:
    """L_adv: mean of softplus(-D(row)) over every row of the codes [N, n_styles, w_dim]."""
    return F.softplus(-D(codes)).mean()


class LatentPool:
    """A history of up to `size` latent codes, so that D also sees codes of earlier encoder states.

    query(ws): each code (one random row of it, when ws is [N, n_styles, w_dim]) is stored while the
    pool is filling and returned as is. Once full, each code is, with probability 1/2, swapped for a
    random stored code (which is returned, the new one stored in its place), else returned as is.
    size 0 keeps nothing and only picks the rows. Randomness comes from torch's global CPU generator.
    """

    def __init__(self, size: int):
        self.size = size
        self.codes: list[torch.Tensor] = []

    def query(self, ws: torch.Tensor) -> torch.Tensor:
        ws = ws.detach()
        if ws.ndim == 3:
            rows = torch.randint(ws.shape[1], (len(ws),))
            ws = ws[torch.arange(len(ws)), rows.to(ws.device)]
        out = []
        for w in ws:
            if len(self.codes) < self.size:
                self.codes.append(w.clone())
                out.append(w)
            elif self.size > 0 and torch.rand(()) < 0.5:
                slot = int(torch.randint(self.size, ()))
                out.append(self.codes[slot])
                self.codes[slot] = w.clone()
            else:
                out.append(w)
        return torch.stack(out)

    def state_dict(self) -> dict:
        return {"size": self.size, "codes": torch.stack(self.codes).cpu() if self.codes else torch.empty(0)}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.size = int(state["size"])
        self.codes = [c.to(device) for c in state["codes"]] if len(state["codes"]) else []
