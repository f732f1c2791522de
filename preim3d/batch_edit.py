"""`preim3d edit` on a photo or a folder of photos, on one process or several (torchrun).

    photo_outputs(editor, result, options, name, single)   what one photo gets: [Output(name, save, ...)]
    edit_folder(editor, source, out, options, processes=...)  the driver: (exit status, timings)

The driver streams: photos are aligned ahead in CPU worker processes (`batch.AlignmentPool`), inverted
and rendered on the device `batch_size` at a time, and their files are written by threads while the
device goes on. It shards: the photos are cut into consecutive chunks of `batch_size`, and chunk k
goes to process k mod N, so the batches (and thus every float of every output) are the same with
any number of processes. Renders use fixed depth samples (the Editor's deterministic mode) and the
generator cuDNN's deterministic algorithms, so the same photo and options give the same files. It
reports one line per photo, goes on after a failure, and keeps a manifest (`batch.Manifest`);
`resume=True` skips the photos whose outputs are complete. The finished photos of a chunk that is
only partly done are encoded again from their aligned.png (no alignment, no writing), so that the
rest of the chunk is computed in the same batch as before.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from .batch import (
    MANIFEST_CSV,
    Aligned,
    AlignmentPool,
    Manifest,
    PhotoRecord,
    default_workers,
    describe_failure,
    failure_traceback,
    list_photos,
    out_of_memory,
    photo_folder_names,
    remove_partial_files,
    write_atomically,
)
from .distributed import Processes
from .errors import Preim3DError
from .pipeline import EditResult

ROW_YAWS = (-0.6, -0.3, 0.0, 0.3, 0.6)  # radians: the five views of views="row"


@dataclass
class EditOptions:
    """What to do with each photo; names follow the `preim3d edit` options."""

    edits: dict[str, float] = field(default_factory=dict)
    precise: bool = False
    hold: list[str] = field(default_factory=list)
    face: int | None = None  # index into preim3d.align.detect_faces' list (0-based; None: the default)
    pose: str = "photo"  # "photo" or "frontal"
    views: str | None = None  # "grid" or "row"
    video: str | None = None  # file name of the turntable video (.mp4)
    frames: int = 120
    fps: float = 60
    mesh: str | None = None  # file name of the mesh (.glb, .ply, .obj)
    mesh_resolution: int = 256
    mesh_threshold: float | str = "auto"  # the surface's density level (see preim3d.mesh)
    allow_slow: bool = False  # a 512 mesh on a CPU
    paste: bool = False
    refine: int = 0  # steps of pivotal tuning per photo (Editor.refine), 0 = none

    def summary(self) -> str:
        text = ", ".join(f"{name} {value:+g}" for name, value in self.edits.items()) or "no edit"
        text += "; precise" if self.precise or self.hold else ""
        return text + (f"; refined {self.refine} steps" if self.refine else "")


@dataclass(frozen=True)
class Output:
    """One file a photo gets."""

    name: str  # path relative to the photo's folder
    save: Callable[[Path], object]  # writes the file at the path it is given
    on_device: bool = False  # renders on the editor's device: written in the driver's thread
    required: bool = True  # without it the photo failed; without an optional one it is only partly done
    lower: str = ""  # what to lower when it runs out of memory


def photo_outputs(editor, result: EditResult, options: EditOptions, name: str, single: bool) -> list[Output]:
    """The files of one edited photo, in the order they are listed.

    name: the photo's file name (stored in the latents' metadata). single: the input was one
    photo, so --video and --mesh are paths as given; in a folder run they are file names inside
    each photo's folder. A refined photo's head (result.head) renders its views, video and mesh.
    """
    edits = ", ".join(f"{k}={v:g}" for k, v in options.edits.items())
    if result.head is not None:
        editor = result.head
    outputs = [
        Output("aligned.png", result.face.image.save),
        Output("reconstruction.png", result.reconstruction.save),
        Output("edited.png", result.image.save),
        Output("inverted.npz", lambda path: editor.save_latent(result.ws, path, {"photo": name})),
        Output(
            "edited.npz",
            lambda path: editor.save_latent(result.edited_ws, path, {"photo": name, "edits": edits}),
        ),
    ]
    if result.head is not None:
        outputs.append(Output("refined.safetensors", result.head.save))
    if options.paste:
        outputs.append(Output("pasted.png", lambda path: result.pasted().save(path), required=False))
    if options.views:
        outputs.append(
            Output("views.png", lambda path: _views(editor, result, options.views).save(path), True, False)
        )
    if options.video:
        video = options.video if single else Path(options.video).name

        def turntable(path):
            side = [result.face.image, result.ws]
            editor.turntable(
                result.edited_ws, path, frames=options.frames, fps=options.fps, side_by_side=side
            )

        outputs.append(Output(video, turntable, True, False))
    if options.mesh:
        mesh = options.mesh if single else Path(options.mesh).name
        outputs.append(
            Output(
                mesh,
                lambda path: editor.mesh(
                    result.edited_ws,
                    path,
                    resolution=options.mesh_resolution,
                    threshold=options.mesh_threshold,
                    allow_slow=options.allow_slow,
                ),
                True,
                False,
                "--mesh-resolution",
            )
        )
    return outputs


def _views(editor, result: EditResult, kind: str) -> Image.Image:
    if kind == "grid":
        return editor.grid(result.edited_ws)
    rows = [editor.grid(ws, yaws=ROW_YAWS, pitches=(0.0,)) for ws in (result.ws, result.edited_ws)]
    grid = Image.new("RGB", (rows[0].width, rows[0].height * 2))
    grid.paste(rows[0], (0, 0))
    grid.paste(rows[1], (0, rows[0].height))
    return grid


# ------------------------------------------------------------------ the driver


def edit_folder(
    editor,
    source,
    out,
    options: EditOptions,
    *,
    processes: Processes | None = None,
    resume: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    writers: int | None = None,
    debug: bool = False,
    manifest_options: dict | None = None,
    say: Callable[[str], None] = print,
    complain: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> tuple[int, dict]:
    """Edit a photo or every photo of a folder into `out`; returns (exit status, timings).

    One line per photo (done to `say`, failures to `complain`); a folder run also writes the
    manifest. The exit status is 1 when any photo or output failed, on every process. `editor`
    should render with fixed depth samples (deterministic=True) for repeatable files. workers:
    alignment processes, writers: threads writing files (default: half the CPU cores of this
    process each). manifest_options: what else decides the outputs (e.g. the weights), checked
    when resuming. timings (first process): seconds per stage of each process.
    """
    run = _FolderRun(editor, Path(source), Path(out), options, processes, batch_size, debug, say, complain)
    if not run.begin(resume, manifest_options or {}):
        return 1, {}
    workers = default_workers(run.processes.world_size) if workers is None else workers
    writers = default_workers(run.processes.world_size) if writers is None else writers
    run.process(workers, writers)
    return run.end()


@dataclass
class _Photo:
    """One photo of this process's share on its way through the driver."""

    path: Path
    folder: Path
    aligned: Aligned | None = None  # None for a photo finished before, encoded again for its batch
    crop: Image.Image | None = None  # the encoder's input
    pose: tuple[float, float] = (0.0, 0.0)
    result: EditResult | None = None
    outputs: list[Output] = field(default_factory=list)
    written: dict[str, str | None] = field(default_factory=dict)  # output name -> None, or why it failed
    started: float = field(default_factory=time.perf_counter)


class _FolderRun:
    """The state of one `edit_folder` call in one process."""

    def __init__(self, editor, source, out, options, processes, batch_size, debug, say, complain):
        self.editor, self.out, self.options = editor, out, options
        self.processes = processes or Processes(device=editor.device)
        self.batch_size, self.debug, self.say, self.complain = batch_size, debug, say, complain
        self.photos = list_photos(source)
        self.single = source.is_file()
        self.folders = [out] if self.single else [out / n for n in photo_folder_names(self.photos)]
        self.names = [p.name for p in self.photos]
        self.manifest: Manifest | None = None
        self.carried: dict[str, PhotoRecord] = {}  # records of an earlier run, when resuming
        self.records: list[PhotoRecord] = []  # this process's
        self.seconds: dict[str, float] = {}  # per stage, for the timings
        self._lock = threading.Lock()
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ start and end

    def begin(self, resume: bool, manifest_options: dict) -> bool:
        """Start the manifest (first process) and agree on what an earlier run finished."""
        if self.single:
            return True
        settings = {**vars(self.options), "batch_size": self.batch_size, **manifest_options}
        self.manifest = Manifest(self.out, "edit", settings, self.names)
        problem = None
        if self.processes.main:
            try:
                self.carried = self.manifest.previous() if resume else {}
                self.manifest.start(self.carried)
            except Preim3DError as exc:
                problem = str(exc)
        self.carried, problem = self.processes.broadcast((self.carried, problem))
        if problem:
            if self.processes.main:
                raise Preim3DError(problem)
            return False  # the first process says why
        return True

    def end(self) -> tuple[int, dict]:
        """Gather every process's records: the manifest, the closing line, the exit status."""
        self.add("total", time.perf_counter() - self.started)
        if self.manifest is not None:
            self.manifest.close_log()
        everything = [r for part in self.processes.gather(self.records) or [] for r in part]
        failed = self.processes.broadcast(any(r.status != "done" for r in everything))
        timings = self.processes.gather(
            {"rank": self.processes.rank, "photos": len(self.records), **self.seconds}
        )
        if self.processes.main and self.manifest is not None:
            self.manifest.finish(everything)
            counts = self.manifest.counts()
            text = f"{counts['done']} of {sum(counts.values())} photos edited"
            text += "".join(f", {n} {s}" for s, n in counts.items() if n and s != "done")
            text += (
                f" in {time.perf_counter() - self.started:.1f} s on {self.processes.world_size} process(es)"
            )
            self.say(f"{text}; manifest: {self.out / MANIFEST_CSV}")
        # torchrun stops every process once one exits with an error: none may leave before the manifest is out
        self.processes.barrier()
        return int(failed), {"processes": timings} if timings else {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:  # the writing threads add too
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    # ------------------------------------------------------------------ the photos

    def process(self, workers: int, writers: int) -> None:
        """This process's share: align (workers), invert and render (device, a chunk at a time), write."""
        complete = {name for name, record in self.carried.items() if record.complete(self.out)}
        if complete and self.processes.main:
            self.say(
                f"resuming: {len(complete)} of {len(self.photos)} photos were done before and are skipped"
            )
        chunks: dict[int, list[int]] = {}
        for index in self.processes.shard(range(len(self.photos)), self.batch_size):
            chunks.setdefault(index // self.batch_size, []).append(index)
        chunks = {k: v for k, v in chunks.items() if any(self.names[i] not in complete for i in v)}
        todo = [i for members in chunks.values() for i in members if self.names[i] not in complete]

        self.writing: deque[tuple[_Photo, Future]] = deque()
        pool = AlignmentPool(
            workers if len(todo) > 1 else 0,
            self.options.face,
            self.options.paste,
            self.batch_size + 2 * workers,
        )
        with pool, ThreadPoolExecutor(max(1, writers)) as self.threads:
            aligned = pool.run(self.photos[i] for i in todo)
            try:
                for members in chunks.values():
                    batch = []
                    for index in members:
                        photo = _Photo(self.photos[index], self.folders[index])
                        if self.names[index] in complete:
                            self._encode_again(photo, self.carried[self.names[index]])
                            batch.append(photo)
                        elif self._aligned(photo, *next(aligned)):
                            batch.append(photo)
                    self._run_batch(batch)
            finally:  # also when interrupted: the photos whose files are all written get their records
                self._finish_writing(0)
            self.add("waiting for alignment", pool.waited)

    def _encode_again(self, photo: _Photo, record: PhotoRecord) -> None:
        """A finished photo rejoins its batch from its aligned.png and pose: the batch stays as it was."""
        try:
            photo.crop = Image.open(photo.folder / "aligned.png").convert("RGB")
        except OSError as exc:
            raise Preim3DError(f"--resume: {photo.folder / 'aligned.png'} cannot be read ({exc}).") from exc
        photo.pose = (record.yaw, record.pitch)

    def _aligned(self, photo: _Photo, path, result) -> bool:
        """Take a photo's alignment; False (and a failed record) when it could not be aligned."""
        photo.started = time.perf_counter()
        if isinstance(result, BaseException):
            self._fail(photo, result)
            return False
        self.add("alignment (workers)", result.seconds)
        photo.aligned, photo.crop = result, result.face.image
        photo.pose = result.face.estimate_pose() if self.options.pose == "photo" else (0.0, 0.0)
        return True

    def _run_batch(self, batch: list[_Photo]) -> None:
        """Invert and render the batch on the device; then each new photo's files."""
        new = [p for p in batch if p.aligned is not None]
        if not new:
            return
        begin = time.perf_counter()
        try:
            _compute(self.editor, batch, self.options)
        except Exception as exc:
            self._forget_memory(exc)
            for photo in new:
                self._fail(photo, exc, "--batch-size")
            return
        finally:
            self.add("inversion + renders", time.perf_counter() - begin)
        for photo in new:
            photo.outputs = photo_outputs(
                self.editor, photo.result, self.options, photo.path.name, self.single
            )
            remove_partial_files(photo.folder)
            on_cpu = [o for o in photo.outputs if not o.on_device]
            self.writing.append((photo, self.threads.submit(self._write, photo, on_cpu)))
            self._write(photo, [o for o in photo.outputs if o.on_device])
            self._finish_writing(2 * self.batch_size)  # bounded: the threads may fall behind the device

    def _write(self, photo: _Photo, outputs: list[Output]) -> None:
        """Write some of a photo's outputs, each complete or not at all; a failure is noted, not raised."""
        for output in outputs:
            begin = time.perf_counter()
            try:
                write_atomically(photo.folder / output.name, output.save)
                photo.written[output.name] = None
            except Exception as exc:
                self._forget_memory(exc)
                if self.debug:
                    self.complain(failure_traceback(exc).rstrip())
                photo.written[output.name] = describe_failure(exc, output.lower)
            stage = "device outputs" if output.on_device else "writing (threads)"
            self.add(stage, time.perf_counter() - begin)

    def _finish_writing(self, limit: int) -> None:
        """Report the photos whose files are written, in order; wait until at most `limit` are left."""
        while self.writing and (len(self.writing) > limit or self.writing[0][1].done()):
            photo, future = self.writing.popleft()
            begin = time.perf_counter()
            future.result()
            self.add("waiting for writes", time.perf_counter() - begin)
            self._done(photo)

    def _forget_memory(self, exc: BaseException) -> None:
        if out_of_memory(exc) and self.editor.device.type == "cuda":
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ records and lines

    def _done(self, photo: _Photo) -> None:
        """Every output of the photo is written, failed, or was never reached: its record and its line."""
        written = [o.name for o in photo.outputs if o.name in photo.written and photo.written[o.name] is None]
        problems = {
            o.name: photo.written.get(o.name, "not written (the run was interrupted)")
            for o in photo.outputs
            if o.name not in written
        }
        if any(o.required and o.name in problems for o in photo.outputs):
            status = "failed"
        else:
            status = "partial" if problems else "done"
        folder = _relative(photo.folder, self.out)
        yaw, pitch = photo.pose
        self._record(PhotoRecord(photo.path.name, folder, status, written, problems, yaw, pitch))
        name, why = photo.path.name, "; ".join(f"{k} failed: {v}" for k, v in problems.items())
        about = (
            f"(yaw {math.degrees(yaw):+.0f}°, pitch {math.degrees(pitch):+.0f}°; {self.options.summary()})"
        )
        where = f"-> {photo.folder}: {', '.join(written)} [{time.perf_counter() - photo.started:.1f} s]"
        if status == "done":
            self.say(f"{name}: done {about} {where}")
        elif status == "partial":
            self.complain(f"{name}: partly done: {why} {about} {where}")
        else:
            self.complain(f"{name}: failed: {why}")

    def _fail(self, photo: _Photo, exc: BaseException, lower: str = "") -> None:
        if self.debug:
            self.complain(failure_traceback(exc).rstrip())
        reason = describe_failure(exc, lower)
        self._record(
            PhotoRecord(
                photo.path.name, _relative(photo.folder, self.out), "failed", failed={"photo": reason}
            )
        )
        self.complain(f"{photo.path.name}: failed: {reason}")

    def _record(self, record: PhotoRecord) -> None:
        if not self.records:  # the pipeline's start-up: worker processes, the device's first batch
            self.add("until the first photo", time.perf_counter() - self.started)
        self.records.append(record)
        if self.manifest is not None:
            self.manifest.log(record, self.processes.rank)


def _compute(editor, batch: list[_Photo], options: EditOptions) -> None:
    """Invert, edit and render a batch of photos on the editor's device (each gets its EditResult)."""
    ws = editor.invert([p.crop for p in batch])
    if options.edits or options.hold:
        edited = editor.edit(ws, options.edits, precise=options.precise, hold=options.hold)
    else:
        edited = ws.clone()
    yaws = [p.pose[0] for p in batch] * 2
    pitches = [p.pose[1] for p in batch] * 2
    images = editor.render_each(torch.cat([ws, edited]), yaws, pitches)
    n = len(batch)
    for i, photo in enumerate(batch):
        if photo.aligned is None:  # finished before: only there to keep the batch as it was
            continue
        head = None
        if options.refine:  # one photo at a time, against its crop from its own camera
            head = editor.refine(photo.aligned.face, ws[i : i + 1], options.refine)
            pair = torch.cat([ws[i : i + 1], edited[i : i + 1]])
            images[i], images[n + i] = head.render_each(pair, [photo.pose[0]] * 2, [photo.pose[1]] * 2)
        photo.result = EditResult(
            photo=photo.aligned.photo,
            face=photo.aligned.face,
            ws=ws[i : i + 1],
            edited_ws=edited[i : i + 1],
            edits=dict(options.edits),
            pose=photo.pose,
            reconstruction=images[i],
            image=images[n + i],
            head=head,
        )


def _relative(folder: Path, out: Path) -> str:
    return "." if folder == out else folder.relative_to(out).as_posix()
