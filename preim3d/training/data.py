"""Training data: EG3D-style face crops with their camera labels, in a reproducible, resumable order.

A dataset folder holds the 512 x 512 crops (any sub-folders) and EG3D's `dataset.json`:

    {"labels": [["00000/img00000000.png", [c_0, ..., c_24]], ...]}

c = cam2world 4x4 (row-major, OpenCV convention) followed by the normalised intrinsics 3x3. A label
is found by the image's path relative to the folder, else by its file name alone (PREIM3D keys
labels by base name). Images without a label are left out, with one warning naming them.

Each image is resized to the training resolution with PIL's bilinear filter and mapped to [-1, 1]
by v/255 * 2 - 1, exactly as `preim3d.inversion.preprocess_for_encoder` does at 256.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import Preim3DError

log = logging.getLogger("preim3d.training")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_camera_labels(path) -> dict[str, list[float]]:
    """{file name as written in the labels file: 25 floats} from an EG3D dataset.json."""
    path = Path(path)
    if not path.is_file():
        raise Preim3DError(f"Camera labels {path} do not exist: give EG3D's dataset.json (--labels).")
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (ValueError, AttributeError) as exc:
        raise Preim3DError(f"{path} is not an EG3D dataset.json (a JSON object with 'labels').") from exc
    if not isinstance(labels, list):
        raise Preim3DError(
            f"{path} has no camera labels ('labels' is {labels!r}); PREIM3D needs one camera per image."
        )
    out = {}
    for entry in labels:
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
        if not ok or not isinstance(entry[1], (list, tuple)) or len(entry[1]) != 25:
            raise Preim3DError(
                f"{path}: every label must be [file name, 25 numbers]; found {str(entry)[:80]}."
            )
        out[entry[0].replace("\\", "/")] = [float(v) for v in entry[1]]
    return out


class CameraLabelledImages(Dataset):
    """(image [3, R, R] in [-1, 1], camera c [25]) pairs of the images in `folder` that have a label."""

    def __init__(self, folder, resolution: int = 256, labels=None):
        folder = Path(folder)
        if not folder.is_dir():
            raise Preim3DError(f"Training data folder {folder} does not exist.")
        table = read_camera_labels(labels or folder / "dataset.json")
        by_name = {}
        for key, c in table.items():
            by_name.setdefault(key.rsplit("/", 1)[-1], []).append(c)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        self.resolution = resolution
        self.items: list[tuple[Path, list[float]]] = []
        unlabelled = []
        for file in files:
            rel = file.relative_to(folder).as_posix()
            c = table.get(rel)
            if c is None and len(by_name.get(file.name, ())) == 1:
                c = by_name[file.name][0]
            if c is None:
                unlabelled.append(rel)
            else:
                self.items.append((file, c))
        if unlabelled:
            log.warning(
                "%d image(s) in %s have no camera label and are left out: %s%s",
                len(unlabelled),
                folder,
                ", ".join(unlabelled[:5]),
                " ..." if len(unlabelled) > 5 else "",
            )
        if not self.items:
            raise Preim3DError(
                f"No image in {folder} has a camera label in {labels or folder / 'dataset.json'}."
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        file, c = self.items[index]
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("RGB").resize((self.resolution,) * 2, Image.BILINEAR))
        x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
        return x, torch.tensor(c, dtype=torch.float32)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> list:
    """This process's batches of one epoch: a seeded permutation of range(n), cut to a multiple of
    world_size * batch_size (so that every process gets as many batches), dealt round-robin to the
    processes and cut into batches. Same arguments, same batches."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    used = n // (world_size * batch_size) * world_size * batch_size
    mine = order[:used][rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


class BatchStream:
    """An endless, resumable stream of real batches (x, c) for one process.

    `position` = (epoch, batches taken in that epoch) is all that is needed to continue exactly where
    a checkpoint left off.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        position=(0, 0),
        pin_memory: bool = False,
    ):
        if len(dataset) < world_size * batch_size:
            raise Preim3DError(
                f"The dataset has {len(dataset)} labelled images: too few for batches of {batch_size} on "
                f"{world_size} process(es)."
            )
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size, self.workers, self.pin_memory = rank, world_size, workers, pin_memory
        self.epoch, self.taken = position
        self._iterator: Iterator | None = None

    @property
    def position(self) -> tuple[int, int]:
        return self.epoch, self.taken

    def __next__(self):
        while True:
            if self._iterator is None:
                batches = epoch_batches(
                    len(self.dataset), self.batch_size, self.epoch, self.seed, self.rank, self.world_size
                )[self.taken :]
                # An own generator: starting a loader must not draw from the global random stream,
                # or a resumed run (which starts one mid-epoch) would drift from an uninterrupted one.
                seeds = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
                loader = DataLoader(
                    self.dataset,
                    batch_sampler=batches,
                    num_workers=self.workers,
                    generator=seeds,
                    pin_memory=self.pin_memory,
                )
                self._iterator = iter(loader)
            try:
                batch = next(self._iterator)
            except StopIteration:
                self._iterator = None
                self.epoch, self.taken = self.epoch + 1, 0
                continue
            self.taken += 1
            return batch
