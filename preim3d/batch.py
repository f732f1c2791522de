"""Work on folders of photos: listing, aligning ahead in CPU worker processes, safe writes, the manifest.

The pieces every folder command is built from (`preim3d edit FOLDER`, `preim3d evaluate`):

* `list_photos(path)`: the photos of a folder (or one photo), in a fixed order.
* `AlignmentPool`: dlib alignment of the photos in worker processes, handed back in order while the
  caller uses the GPU, never more than a bounded number ahead (memory does not grow with the folder).
* `write_atomically(path, save)`: a file appears complete or not at all (temp name, then rename).
* `Manifest`: what was done with each photo, as OUT/manifest.csv and OUT/manifest.json; each process
  appends its finished photos to OUT/.progress/ as it goes, so an interrupted run can be resumed.
* `describe_failure(exc)`: one line saying why a photo failed and, for running out of memory, what
  to lower.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

from .errors import InputImageError, Preim3DError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
MANIFEST_CSV = "manifest.csv"
MANIFEST_JSON = "manifest.json"
PROGRESS_DIR = ".progress"  # per-process logs of finished photos while a run goes on
_PARTIAL = ".partial"  # marks files being written


def list_photos(path) -> list[Path]:
    """[path] for a photo; the photos of a folder (by suffix, not recursive), sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        photos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)
        if not photos:
            raise InputImageError(f"{path} holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))}).")
        return photos
    raise InputImageError(f"{path} does not exist: give a photo or a folder of photos.")


def photo_folder_names(photos: list[Path]) -> list[str]:
    """A sub-folder name per photo: its stem, or its whole name when another photo has the same stem."""
    stems = [p.stem for p in photos]
    return [p.name if stems.count(p.stem) > 1 else p.stem for p in photos]


def default_workers(processes: int = 1) -> int:
    """Half of the CPU cores that fall to each of `processes` processes, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, processes) // 2)


# ------------------------------------------------------------------ alignment in worker processes


@dataclass
class Aligned:
    """One photo's alignment: the face, the photo itself if asked for, and the worker's seconds."""

    face: object  # preim3d.align.AlignedFace
    photo: object  # PIL image, or None when not kept
    seconds: float


def align_photo(path, face=None, keep_photo: bool = False) -> Aligned:
    """Read and align one photo (what each worker process runs)."""
    from .align import align_face
    from .images import load_image
    from .validation import MIN_PHOTO_SIDE

    start = time.perf_counter()
    photo = load_image(path, min_side=MIN_PHOTO_SIDE)
    aligned = align_face(photo, face=face)
    return Aligned(aligned, photo if keep_photo else None, time.perf_counter() - start)


class AlignmentPool:
    """Aligns photos in `workers` processes (0: in the calling process) and hands them back in order.

    `run(photos)` yields (photo, Aligned or the exception it raised) for each photo, in order. At
    most `ahead` photos are in flight, so memory stays bounded whatever the number of photos. The
    workers are started with "spawn": the caller may hold CUDA and threads, which forking copies badly.
    A worker that dies (a crash, the kernel's out-of-memory killer) fails its photo; a new pool
    takes over the rest.
    """

    def __init__(self, workers: int, face=None, keep_photo: bool = False, ahead: int | None = None):
        self.workers, self.face, self.keep_photo = workers, face, keep_photo
        self.ahead = ahead or 2 * max(1, workers)
        self.waited = 0.0  # seconds the caller spent waiting for results
        self._pool = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=get_context("spawn"))
        return self._pool

    def run(self, photos: Iterable) -> Iterator[tuple[object, Aligned | BaseException]]:
        photos = iter(photos)
        if self.workers == 0:
            for photo in photos:
                try:
                    yield photo, align_photo(photo, self.face, self.keep_photo)
                except Exception as exc:
                    yield photo, exc
            return
        pending: deque = deque()

        def submit(photo):
            pending.append((photo, self._executor().submit(align_photo, photo, self.face, self.keep_photo)))

        for photo in photos:
            submit(photo)
            if len(pending) >= self.ahead:
                yield self._next(pending, submit)
        while pending:
            yield self._next(pending, submit)

    def _next(self, pending: deque, submit: Callable) -> tuple[object, Aligned | BaseException]:
        photo, future = pending.popleft()
        start = time.perf_counter()
        try:
            result = future.result()
        except BrokenProcessPool:
            # every photo in flight went down with the pool: this one fails, the others go again
            self.close()
            redo = [p for p, _ in pending]
            pending.clear()
            for p in redo:
                submit(p)
            result = Preim3DError(
                "the alignment worker stopped (it crashed or the system ran out of memory) on this photo"
            )
        except Exception as exc:
            result = exc
        self.waited += time.perf_counter() - start
        return photo, result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __enter__(self) -> AlignmentPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ files


def write_atomically(path, save: Callable[[Path], object]) -> Path:
    """save(temp) writes a file beside `path` (same suffix), which is then renamed to `path`.

    So `path` is either the old file, or the new one complete: never half written. The temporary
    file is removed if `save` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.stem}{_PARTIAL}{path.suffix}")
    try:
        save(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def remove_partial_files(folder) -> None:
    """Delete the temporary files an interrupted `write_atomically` left in `folder`."""
    folder = Path(folder)
    if folder.is_dir():
        for leftover in folder.glob(f".*{_PARTIAL}*"):
            leftover.unlink(missing_ok=True)


# ------------------------------------------------------------------ failures


def out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def describe_failure(exc: BaseException, lower: str = "") -> str:
    """One line for a failed photo or output.

    Errors preim3d raises on purpose, and bad files, say what they say. Running out of memory says
    so, and what to lower (`lower`, e.g. "--batch-size"), or to use the CPU. Anything else is
    unexpected: its type and message, with a pointer to --debug for the traceback.
    """
    if out_of_memory(exc):
        return f"out of memory: {f'lower {lower} or ' if lower else ''}run with --device cpu"
    if isinstance(exc, (Preim3DError, OSError, ValueError)):
        return str(exc) or type(exc).__name__
    return f"unexpected error: {type(exc).__name__}: {exc} (--debug shows the traceback)"


def failure_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


# ------------------------------------------------------------------ the manifest


@dataclass
class PhotoRecord:
    """What a folder run did with one photo: a row of the manifest."""

    photo: str  # file name in the input folder
    folder: str  # its output sub-folder, relative to the output folder
    status: str  # "done", "partial" (some optional outputs failed) or "failed"
    outputs: list[str] = field(default_factory=list)  # files written, in the photo's folder
    failed: dict[str, str] = field(default_factory=dict)  # output (or "photo") -> why it failed
    yaw: float | None = None  # radians; the camera the renders were made from
    pitch: float | None = None

    @property
    def message(self) -> str:
        return "; ".join(f"{k}: {v}" if k != "photo" else v for k, v in self.failed.items())

    def complete(self, out: Path) -> bool:
        """Done, with every output still there."""
        return self.status == "done" and all((out / self.folder / name).is_file() for name in self.outputs)


class Manifest:
    """OUT/manifest.csv and OUT/manifest.json, built from the records of every process.

    The JSON holds the command, its options (a resumed run must use the same) and one record per
    photo; the CSV the same records, one row each. Records are kept in the order of the photos,
    whatever the process that made them, so N processes write the same manifest as one.
    """

    def __init__(self, out, command: str, options: dict, photos: list[str]):
        self.out, self.command, self.options = Path(out), command, options
        self.order = {name: i for i, name in enumerate(photos)}
        self.records: dict[str, PhotoRecord] = {}
        self._log = None

    # -- before the run (first process)

    def previous(self) -> dict[str, PhotoRecord]:
        """The records of an earlier run into the same folder (its manifest, then its progress logs).

        Raises a Preim3DError when that run used other options: its outputs are not what this one
        would make.
        """
        records, options = {}, None
        path = self.out / MANIFEST_JSON
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
                options = saved["options"]
                records = {r["photo"]: PhotoRecord(**r) for r in saved["records"]}
            except (ValueError, KeyError, TypeError) as exc:
                raise Preim3DError(f"--resume: {path} cannot be read ({exc}); run without --resume.") from exc
        for log in sorted((self.out / PROGRESS_DIR).glob("*.jsonl")):
            for line in log.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # the last line of a process that was killed while writing it
                    continue
                if "options" in entry:
                    options = options or entry["options"]
                else:
                    records[entry["photo"]] = PhotoRecord(**entry)
        if options is not None and options != self.options:
            changed = sorted(k for k in {**options, **self.options} if options.get(k) != self.options.get(k))
            raise Preim3DError(
                f"--resume: the run in {self.out} used other options ({', '.join(changed)} differ), so "
                "its outputs are not what this one would make. Give the same options, another --out, "
                "or leave out --resume to start again."
            )
        return records

    def start(self, carried: dict[str, PhotoRecord]) -> None:
        """Begin a run (first process): keep `carried` records, clear the progress logs, write a manifest."""
        progress = self.out / PROGRESS_DIR
        shutil.rmtree(progress, ignore_errors=True)
        progress.mkdir(parents=True)
        (progress / "options.jsonl").write_text(json.dumps({"options": self.options}) + "\n")
        self.records = {k: v for k, v in carried.items() if k in self.order}
        self.write(complete=False)

    # -- during the run (every process)

    def log(self, record: PhotoRecord, rank: int) -> None:
        """Append a finished photo to this process's progress log (flushed: it survives a kill)."""
        if self._log is None:
            self._log = open(self.out / PROGRESS_DIR / f"rank{rank}.jsonl", "a")
        self._log.write(json.dumps(asdict(record)) + "\n")
        self._log.flush()
        self.records[record.photo] = record

    def close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- after the run (first process)

    def finish(self, records: Iterable[PhotoRecord]) -> None:
        """Add every process's records, write the manifest and drop the progress logs."""
        for record in records:
            self.records[record.photo] = record
        self.write(complete=True)
        shutil.rmtree(self.out / PROGRESS_DIR, ignore_errors=True)

    def counts(self) -> dict[str, int]:
        statuses = [r.status for r in self.records.values()]
        return {s: statuses.count(s) for s in ("done", "partial", "failed")}

    def write(self, complete: bool) -> None:
        rows = sorted(self.records.values(), key=lambda r: self.order[r.photo])
        document = {
            "command": self.command,
            "options": self.options,
            "complete": complete,
            "photos": len(self.order),
            **self.counts(),
            "records": [asdict(r) for r in rows],
        }
        write_atomically(self.out / MANIFEST_JSON, lambda p: p.write_text(json.dumps(document, indent=1)))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["photo", "folder", "status", "yaw_deg", "pitch_deg", "outputs", "failed"])
        for r in rows:
            angles = ["" if a is None else f"{math.degrees(a):.1f}" for a in (r.yaw, r.pitch)]
            writer.writerow([r.photo, r.folder, r.status, *angles, " ".join(r.outputs), r.message])
        write_atomically(self.out / MANIFEST_CSV, lambda p: p.write_text(text.getvalue()))
