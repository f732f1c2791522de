"""Training settings: one flat dataclass, read from a JSON or TOML file and overridden on the command line.

Defaults are PREIM3D's published recipe (its `train.sh` and option defaults): batch 2, Ranger at
lr 1e-4, L2 1.0 + LPIPS 0.8 + ArcFace identity 0.4 + latent discriminator 0.1, generated and real
batches alternating 1:1, latent reconstruction weight ramped by 0.1 every 5000 steps, multi-view
identity loss (weight 0.1, 3 views per image) after step 100,000, 2,000,000 steps.

This module imports nothing heavy, so the command line can build its parser from it at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import types
import typing
from pathlib import Path

from ..errors import Preim3DError


def _setting(default, help_text: str):
    """A dataclass field whose help text becomes the command-line help."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a training run. Lengths are in optimiser steps; angles in radians.

    One step = `accumulate` micro-batches of `batch_size` images on each of the N processes
    `torchrun --nproc_per_node=N` starts: a global batch of N * accumulate * batch_size images, whose
    gradients are averaged (the learning rate is not rescaled; to repeat a one-GPU run of batch B on
    N GPUs, give batch_size B / N). Each micro-batch is either *synthetic* (rendered by the frozen
    generator from known latents) or *real* (from the dataset): of every
    `synthetic_batches + real_batches` consecutive micro-batches, the first `synthetic_batches` are
    synthetic.
    """

    # --- inputs and outputs
    data: str | None = _setting(None, "folder of EG3D-style 512 crops with an EG3D dataset.json")
    labels: str | None = _setting(None, "camera labels file (default: <data>/dataset.json)")
    generator: str | None = _setting(None, "frozen EG3D generator: preim3d bundle folder or official file")
    arcface: str | None = _setting(
        None, "IR-SE50 ArcFace weights (TreB1eN model_ir_se50.pth): identity loss + encoder init"
    )
    encoder: str | None = _setting(
        None, "start from these encoder weights (bundle or PREIM3D checkpoint) instead"
    )
    out: str = _setting("runs/preim3d", "run folder: checkpoints, samples, log.jsonl, exported encoder")
    resume: str | None = _setting(
        None, 'training checkpoint to continue from ("latest" = newest in <out>/checkpoints)'
    )

    # --- schedule
    max_steps: int = _setting(2_000_000, "optimiser steps to train for")
    batch_size: int = _setting(
        2, "images per micro-batch and process (global batch: x accumulate x processes)"
    )
    accumulate: int = _setting(1, "micro-batches per optimiser step (the discriminator steps on each)")
    synthetic_batches: int = _setting(
        1, "generated micro-batches per alternation cycle (official inner_times)"
    )
    real_batches: int = _setting(1, "real micro-batches per alternation cycle (official outer_times)")
    resolution: int = _setting(
        256, "encoder input and loss resolution (generator output is average-pooled to it)"
    )

    # --- encoder optimiser
    optimizer: str = _setting("ranger", '"ranger" (RAdam + Lookahead + gradient centralisation) or "adam"')
    learning_rate: float = _setting(1e-4, "encoder learning rate")

    # --- image losses
    l2_lambda: float = _setting(1.0, "weight of the pixel MSE")
    lpips_lambda: float = _setting(
        0.8, "weight of LPIPS; needs the optional `lpips` package (0 trains without LPIPS)"
    )
    lpips_net: str = _setting("alex", "LPIPS backbone: alex, vgg or squeeze")
    id_lambda: float = _setting(0.4, "weight of the ArcFace identity loss")

    # --- latent discriminator (e4e style)
    w_discriminator_lambda: float = _setting(0.1, "weight of the adversarial loss (0 = no discriminator)")
    w_discriminator_lr: float = _setting(2e-5, "discriminator Adam learning rate")
    r1: float = _setting(10.0, "R1 gradient-penalty weight")
    d_reg_every: int = _setting(16, "R1 every this many discriminator updates (lazy regularisation)")
    w_pool_size: int = _setting(50, "latent pools of the discriminator (0 = no pool)")

    # --- latent reconstruction on synthetic micro-batches: weight start + delta * min(step // interval, max)
    w_rec_lambda_start: float = _setting(0.0, "latent reconstruction weight at step 0")
    w_rec_lambda_delta: float = _setting(0.1, "added every w_rec_interval steps")
    w_rec_interval: int = _setting(5000, "steps between increments of the latent weight")
    w_rec_max_increments: int = _setting(100, "the latent weight stops growing after this many")

    # --- multi-view identity loss
    id_lambda_multi_view: float = _setting(0.1, "weight of the multi-view identity loss")
    multi_view_start_step: int = _setting(100_000, "on for steps after this one")
    view_count: int = _setting(3, "novel views per image")
    multi_view_center: str = _setting(
        "random", '"random": a random base pose per step (official); "input": the input\'s pose'
    )
    multi_view_yaw_range: float = _setting(math.radians(20), 'base yaw ~ U(-range, range) ("random" centre)')
    multi_view_pitch_range: float = _setting(math.radians(5), "base pitch ~ U(-range, range)")
    multi_view_yaw_std: float = _setting(0.25, "each view ~ N(base, std), camera looking at the origin")
    multi_view_pitch_std: float = _setting(0.12, "pitch spread of the views")

    # --- synthetic micro-batches
    synthetic_yaw_range: float = _setting(
        math.radians(30), "camera yaw ~ U(-range, range) about the frontal view"
    )
    synthetic_pitch_range: float = _setting(math.radians(20), "camera pitch ~ U(-range, range)")
    truncation_psi: float = _setting(0.7, "truncation of the synthetic latents")
    truncation_cutoff: int = _setting(14, "truncate the first this many ws")

    # --- runtime
    device: str | None = _setting(
        None, "default: cuda when available (cuda:LOCAL_RANK under torchrun), else mps or cpu"
    )
    bf16: bool = _setting(False, "bfloat16 autocast for the encoder, generator and identity network (CUDA)")
    seed: int = _setting(0, "seed of weights, sampling and data order")
    workers: int = _setting(2, "data-loading processes per training process")
    log_every: int = _setting(50, "steps between lines of log.jsonl")
    image_every: int = _setting(1000, "steps between sample grids")
    save_every: int = _setting(5000, "steps between checkpoints")
    keep_checkpoints: int = _setting(2, "older step checkpoints are deleted")
    progress: bool = _setting(True, "tqdm progress bar on the first process")

    def __post_init__(self):
        _check_choice("optimizer", self.optimizer, ("ranger", "adam"))
        _check_choice("multi_view_center", self.multi_view_center, ("random", "input"))
        for name in (
            "max_steps",
            "batch_size",
            "accumulate",
            "resolution",
            "d_reg_every",
            "w_rec_interval",
            "log_every",
            "image_every",
            "save_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise Preim3DError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if (
            self.synthetic_batches < 0
            or self.real_batches < 0
            or self.synthetic_batches + self.real_batches == 0
        ):
            raise Preim3DError("synthetic_batches and real_batches must be >= 0 and not both 0.")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def uses_identity(self) -> bool:
        return self.id_lambda > 0 or (self.id_lambda_multi_view > 0 and self.view_count > 0)


def _check_choice(name, value, choices):
    if value not in choices:
        raise Preim3DError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}.")


def _field_types() -> dict[str, type]:
    """field name -> its plain type (int, float, str or bool; `str | None` counts as str)."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (
            args[0] if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else hint
        )
    return out


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _coerce(name: str, value, kind: type, origin: str):
    """value as `kind`, or a Preim3DError naming the setting and where it came from."""
    if value is None:
        if TrainConfig.__dataclass_fields__[name].default is None:
            return None
        raise Preim3DError(f"{origin}: {name} cannot be empty.")
    if kind is bool and isinstance(value, bool) or kind is str and isinstance(value, str):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Preim3DError(f"{origin}: {name} must be {_KIND_NAMES[kind]}, got {value!r}.")


def read_config_file(path) -> dict:
    """Settings from a .json or .toml file, as a dict (unknown names are an error)."""
    path = Path(path)
    if not path.is_file():
        raise Preim3DError(f"Training config {path} does not exist.")
    if path.suffix not in (".json", ".toml"):
        raise Preim3DError(f"Training config {path}: write it as .json or .toml.")
    try:
        if path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            values = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
    except ModuleNotFoundError as exc:
        raise Preim3DError(
            f"Reading {path} needs Python 3.11 or newer (tomllib); write the config as JSON."
        ) from exc
    except ValueError as exc:
        raise Preim3DError(f"Training config {path} is not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(values, dict):
        raise Preim3DError(f"Training config {path} must hold a table of settings.")
    return values


def make_config(file=None, **overrides) -> TrainConfig:
    """Defaults, then the settings of `file` (JSON or TOML), then `overrides` (None values are ignored)."""
    types_ = _field_types()
    values = {}
    for origin, source in ((str(file), read_config_file(file) if file else {}), ("override", overrides)):
        for name, value in source.items():
            if name not in types_:
                raise Preim3DError(
                    f"{origin}: unknown training setting {name!r}; known: {', '.join(types_)}."
                )
            if origin == "override" and value is None:
                continue
            values[name] = _coerce(name, value, types_[name], origin)
    return TrainConfig(**values)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per setting (--batch-size, --bf16/--no-bf16, ...), default None = keep the file's value."""
    types_ = _field_types()
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = types_[field.name]
        default = field.default
        text = field.metadata["help"] + (
            f" (default {default:.4g})"
            if isinstance(default, float)
            else f" (default {default})"
            if default is not None
            else ""
        )
        if kind is bool:
            parser.add_argument(
                flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            parser.add_argument(
                flag, dest=field.name, type=kind, default=None, metavar=field.name.upper(), help=text
            )


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config named by `args.config` (if any) with every option given on the command line applied."""
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(TrainConfig)}
    return make_config(getattr(args, "config", None), **overrides)
