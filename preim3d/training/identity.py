"""The ArcFace identity network and the identity losses built on it.

ArcFace IR-SE50 (the TreB1eN `Backbone(112, 50, mode='ir_se')` layout, whose released weights
`model_ir_se50.pth` PREIM3D uses), read top to bottom:

    input_layer   conv3x3(3 -> 64) -> BN -> PReLU                                   112 x 112
    body.0 .. 23  the same IR-SE units as the W+ encoder (4 stages, 3/4/14/3 units)  ->  7 x 7
    output_layer  BN2d -> Dropout -> flatten -> Linear(512*7*7 -> 512) -> BN1d
    embedding     f(x) = out / |out|                                                 (unit length)

Its `input_layer` and `body` have the W+ encoder's parameter names and shapes: PREIM3D initialises
the encoder from these weights.

Identity loss of reconstructions y_hat against targets y (images in [-1, 1], any size; each is
average-pooled to the network's input size, without a face crop, as the official loss):

    L_id = mean_i (1 - <f(y_hat_i), f(y_i)>)            with f(y_i) treated as a constant
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..networks.encoder import IRSEUnit
from ..weights.checks import load_state_strict, state_dict_mismatch

ARCFACE_UNITS = (3, 4, 14, 3)
ARCFACE_CHANNELS = (64, 128, 256, 512)


class ArcFaceBackbone(nn.Module):
    """IR-SE ArcFace embedding network: image [N,3,S,S] in [-1,1] -> unit embedding [N, embedding_dim].

    Defaults are IR-SE50 at S = 112 (7 x 7 after four halvings). The sizes are configurable so that
    tests can use a tiny network of the same structure; `input_size` must be a multiple of 16.
    """

    def __init__(
        self,
        input_size: int = 112,
        stage_units=ARCFACE_UNITS,
        stage_channels=ARCFACE_CHANNELS,
        stem_channels: int = 64,
        embedding_dim: int = 512,
        se_reduction: int = 16,
        drop_ratio: float = 0.6,
    ):
        super().__init__()
        if input_size % 2 ** len(stage_units):
            raise ValueError(f"input_size {input_size} is not divisible by 2^{len(stage_units)}")
        self.input_size = input_size
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.PReLU(stem_channels),
        )
        units, in_channels = [], stem_channels
        for count, depth in zip(stage_units, stage_channels):
            for i in range(count):
                units.append(IRSEUnit(in_channels, depth, 2 if i == 0 else 1, se_reduction))
                in_channels = depth
        self.body = nn.Sequential(*units)
        side = input_size // 2 ** len(stage_units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Dropout(drop_ratio),
            nn.Flatten(),
            nn.Linear(in_channels * side * side, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return F.normalize(x.float(), dim=1)


def read_arcface_weights(path) -> dict[str, torch.Tensor]:
    """The state dict in an ArcFace weights file, loaded with torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"ArcFace weights not found: {path} does not exist. Give the IR-SE50 ArcFace weights "
            "(model_ir_se50.pth of TreB1eN/InsightFace_Pytorch, as PREIM3D uses)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or pickled-object files
        raise WeightsError(
            f"{path} could not be read as a weights file with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {str(exc)[:200]})."
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors (an ArcFace IR-SE50 backbone).")
    return state


def load_arcface(path, device="cpu") -> ArcFaceBackbone:
    """IR-SE50 ArcFace from a weights file (strict key and shape match), frozen and in eval mode."""
    return arcface_from_state(read_arcface_weights(path), origin=path).to(device)


def arcface_from_state(state: dict[str, torch.Tensor], origin="the given state dict") -> ArcFaceBackbone:
    """IR-SE50 ArcFace holding `state` (keys and shapes checked), frozen and in eval mode."""
    net = ArcFaceBackbone()
    load_state_strict(net, state, origin, "an IR-SE50 ArcFace backbone (TreB1eN layout)")
    return net.eval().requires_grad_(False)


def init_encoder_from_arcface(
    encoder: nn.Module, state: dict[str, torch.Tensor], origin="ArcFace weights"
) -> int:
    """Copy the ArcFace `input_layer.*` and `body.*` tensors into the encoder; returns how many were copied.

    The encoder's head (`output_layer_2`, `linear`) keeps its initialisation, as in PREIM3D. Every
    stem and body tensor of the encoder must be present with the same shape.
    """
    target = {k: v for k, v in encoder.state_dict().items() if k.startswith(("input_layer.", "body."))}
    mismatch = state_dict_mismatch(target, {k: v for k, v in state.items() if k in target})
    if mismatch:
        raise WeightsError(
            f"{origin} do not fit the encoder's stem and body ({mismatch}): use IR-SE50 ArcFace weights "
            "with the full-size encoder."
        )
    encoder.load_state_dict({k: state[k] for k in target}, strict=False)
    return len(target)


class IdentityLoss(nn.Module):
    """L_id = mean_i (1 - <f(y_hat_i), f(y_i)>) with a frozen ArcFace f (see the module docstring)."""

    def __init__(self, backbone: ArcFaceBackbone):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        size = self.backbone.input_size
        return self.backbone(F.adaptive_avg_pool2d(images, (size, size)))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, per-sample cosine similarity [N], detached)."""
        with torch.no_grad():
            target = self.embed(y)
        similarity = (self.embed(y_hat) * target).sum(1)
        return (1 - similarity).mean(), similarity.detach()
