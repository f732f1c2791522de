"""Ranger: rectified Adam (RAdam) + Lookahead + gradient centralisation, PREIM3D's encoder optimiser.

For each parameter p with gradient g, at step t = 1, 2, ...:

    gradient centralisation  g <- g - mean(g over all axes but the first)   (only when p.ndim > 1:
                                                                             conv and linear weights)
    moments                  m <- b1 m + (1 - b1) g,     v <- b2 v + (1 - b2) g^2
    rectification            rho_inf = 2 / (1 - b2) - 1,  rho_t = rho_inf - 2 t b2^t / (1 - b2^t)
    update, rho_t > 5        p <- p - lr * r_t / (1 - b1^t) * m / (sqrt(v) + eps),
                             r_t = sqrt((1 - b2^t) (rho_t - 4)(rho_t - 2) rho_inf
                                        / ((rho_inf - 4)(rho_inf - 2) rho_t))
    update, rho_t <= 5       p <- p - lr / (1 - b1^t) * m   (variance not yet trustworthy: momentum SGD)
    weight decay (if any)    p <- p - lr * wd * p  before the update
    Lookahead, every k steps slow <- slow + alpha (p - slow);  p <- slow

(v is not bias-corrected on its own; the factor (1 - b2^t) inside r_t does it.) Defaults are the
official ones: lr 1e-3 (PREIM3D passes 1e-4), alpha 0.5, k 6, betas (0.95, 0.999), eps 1e-5,
threshold 5. The arithmetic is done in float32, or float64 for float64 parameters.
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class Ranger(Optimizer):
    """RAdam with Lookahead and gradient centralisation (see the module docstring for the maths)."""

    def __init__(
        self,
        params,
        lr=1e-3,
        alpha=0.5,
        k=6,
        betas=(0.95, 0.999),
        eps=1e-5,
        weight_decay=0.0,
        rectify_threshold=5.0,
        centralize=True,
    ):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"Lookahead alpha must be in [0, 1], got {alpha}")
        if k < 1:
            raise ValueError(f"Lookahead k must be at least 1, got {k}")
        if lr <= 0 or eps <= 0:
            raise ValueError(f"lr and eps must be positive, got lr={lr}, eps={eps}")
        defaults = dict(
            lr=lr,
            alpha=alpha,
            k=k,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            rectify_threshold=rectify_threshold,
            centralize=centralize,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Ranger does not support sparse gradients")
                dtype = torch.promote_types(p.dtype, torch.float32)
                grad = p.grad.to(dtype)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype)
                    state["slow"] = p.detach().to(dtype, copy=True)
                if group["centralize"] and grad.ndim > 1:
                    grad = grad - grad.mean(dim=tuple(range(1, grad.ndim)), keepdim=True)
                state["step"] += 1
                t = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                beta2_t = beta2**t
                rho_inf = 2 / (1 - beta2) - 1
                rho_t = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
                value = p.detach().to(dtype)  # p itself when it is float32: updated in place
                if group["weight_decay"]:
                    value.mul_(1 - group["lr"] * group["weight_decay"])
                if rho_t > group["rectify_threshold"]:
                    r_t = math.sqrt(
                        (1 - beta2_t)
                        * (rho_t - 4)
                        * (rho_t - 2)
                        * rho_inf
                        / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
                    )
                    step_size = group["lr"] * r_t / (1 - beta1**t)
                    value.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
                else:
                    value.add_(exp_avg, alpha=-group["lr"] / (1 - beta1**t))
                if t % group["k"] == 0:
                    slow = state["slow"]
                    slow.add_(value - slow, alpha=group["alpha"])
                    value.copy_(slow)
                p.copy_(value)
        return loss
