"""The page's "Refine" step: pivotal tuning of the session's photo (`Editor.refine`), one head per session.

A refined head lives in a `HeadStore` under a random ticket that only its own session's state holds,
so no other session can reach it. The store keeps at most MAX_HEADS heads in all (the least recently
used goes first), a session's new head replaces its old one, and a head is dropped when gradio
deletes its session's state (the tab was closed or reloaded). After "Refine", every control of that
session renders with the head. The named API endpoints take `refine_steps` and refine for that call
only (nothing is kept between calls).
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import replace

import gradio as gr

from preim3d import Editor
from preim3d.evaluation.metrics import psnr
from preim3d.validation import check_refine_steps

MAX_HEADS = 8  # refined heads kept over all sessions: a few MB of deltas each, plus their tri-planes
PAGE_STEPS = 300  # the slider's default: a few seconds on a GPU
PAGE_MAX_STEPS = 500
PROGRESS = gr.Progress()  # as a default it marks the progress argument; updates reach the calling event


class HeadStore:
    """At most `capacity` refined heads by ticket, least recently used out first; thread-safe."""

    def __init__(self, capacity: int = MAX_HEADS):
        self.capacity = capacity
        self._heads: OrderedDict[str, Editor] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._heads)

    def put(self, head: Editor) -> str:
        ticket = uuid.uuid4().hex
        with self._lock:
            self._heads[ticket] = head
            while len(self._heads) > self.capacity:
                self._heads.popitem(last=False)
        return ticket

    def get(self, ticket: str | None) -> Editor | None:
        with self._lock:
            head = self._heads.get(ticket) if ticket else None
            if head is not None:
                self._heads.move_to_end(ticket)
            return head

    def release(self, ticket: str | None) -> None:
        with self._lock:
            self._heads.pop(ticket, None)


class RefineHandlers:
    """What the Refine button and the endpoints' refine_steps do; mixed into `demo.handlers.Handlers`."""

    @functools.cached_property
    def heads(self) -> HeadStore:
        return HeadStore()

    def viewer(self, session) -> Editor:
        """The editor that renders for this session: its refined head, if it has one, else the base."""
        head = self.heads.get(getattr(session, "refined", None))
        return head if head is not None else self._editor()

    def release(self, session) -> None:
        """gradio's delete callback of the session state: the session is gone, so is its head."""
        self.heads.release(getattr(session, "refined", None))

    def refine(self, session, steps, progress=PROGRESS):
        """Refine button: (state with the head's ticket, reconstruction by the head, status)."""
        session = self._need(session, photo=True)
        steps = check_refine_steps(steps)
        if steps == 0:
            self.heads.release(session.refined)
            session = replace(session, refined=None)
            return session, self._editor().render(session.ws, *session.pose), "Not refined."
        editor = self._editor()
        start = time.perf_counter()
        head = editor.refine(
            session.face,
            session.ws,
            steps,
            progress=lambda done, total: progress((done, total), desc="Refining", unit="steps"),
        )
        self.heads.release(session.refined)
        session = replace(session, refined=self.heads.put(head))
        reconstruction = head.reconstruction()
        before = psnr(session.face.image, editor.render(session.ws, *session.pose))
        after = psnr(session.face.image, reconstruction)
        status = (
            f"Refined in {time.perf_counter() - start:.1f} s ({steps} steps): the reconstruction went from "
            f"{before:.1f} to {after:.1f} dB PSNR. Every view, edit, video and mesh of this photo now uses "
            "the refined head (in this browser tab only)."
        )
        return session, reconstruction, status

    def api_viewer(self, photo, latent, face, refine_steps, progress=None) -> tuple[Editor, object, tuple]:
        """(editor or a head refined for this call, code, pose) for the stateless endpoints."""
        steps = check_refine_steps(refine_steps or 0)
        ws, pose = self._code(photo, latent, face)
        if not steps:
            return self._editor(), ws, pose
        if photo is None:
            raise ValueError("refine_steps needs a photo: a latent file has no image to refine against.")
        prepared = self._prepare(photo, int(face or 0))
        report = None if progress is None else (lambda done, total: progress((done, total), desc="Refining"))
        return self._editor().refine(prepared.face, ws, steps, progress=report), ws, pose


def refine_controls(editor: Editor | None):
    """The Refine button, its step count and status line, laid out where they are called."""
    ready = editor is not None
    cpu = ready and editor.device.type == "cpu"
    steps = gr.Slider(
        10,
        PAGE_MAX_STEPS,
        100 if cpu else PAGE_STEPS,
        step=10,
        label="Refinement steps",
        interactive=ready,
        elem_id="refine-steps",
        info="Tunes the generator to this photo, keeping its code: a more faithful head, every edit "
        + (
            "still works. On this CPU it takes minutes (the bar shows the time left)."
            if cpu
            else "still works."
        ),
    )
    button = gr.Button("Refine", interactive=ready, elem_id="refine-button")
    status = gr.Markdown(elem_id="refine-status")
    return steps, button, status


def wire_refine(refine, controls, state, reconstruction, cleared_by, then, **queue) -> None:
    """The button runs `refine` (Handlers.refine, wrapped for the GPU) → the head's reconstruction and
    status, then `then` (fn, inputs, outputs) re-renders the edited view with the head; a new photo
    or code (the `cleared_by` event listeners) clears the status."""
    steps, button, status = controls
    refined = button.click(refine, [state, steps], [state, reconstruction, status], **queue)
    refined.success(*then, **queue)
    for event in cleared_by:
        event(lambda: "", None, status, queue=False, api_visibility="private")
