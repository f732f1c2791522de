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
PAGE_STEPS = 300  # the slider's default: about 10 s on an H200
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
    """What the Refine button and the endpoints' refine_steps do; mixed into `demo.handlers.Handlers`.

    A head is kept as one view per lane of the page ("short": views and edits, "long": videos and
    meshes), each rendering through its lane's own renderer, as the base editor's lanes do.
    """

    @functools.cached_property
    def heads(self) -> HeadStore:
        return HeadStore()

    def viewer(self, session, lane: str = "short") -> Editor:
        """What renders for this session in `lane`: its refined head if it has one, else the base editor."""
        head = self.heads.get(getattr(session, "refined", None))
        return head[lane] if head is not None else self._editor(lane)

    def release(self, session) -> None:
        """gradio's delete callback of the session state: the session is gone, so is its head."""
        self.heads.release(getattr(session, "refined", None))

    def _refined(self, face, ws, steps: int, progress) -> dict[str, Editor]:
        """The head (refined in the long lane) with its view for each lane."""
        report = None if progress is None else (lambda done, total: progress((done, total), desc="Refining"))
        head = self._editor("long").refine(face, ws, steps, progress=report)
        return {"long": head, "short": head.on(self._editor("short").renderer)}

    def refine(self, session, steps, progress=PROGRESS):
        """Refine button: (state with the head's ticket, reconstruction by the head, status)."""
        session = self._need(session, photo=True)
        steps = check_refine_steps(steps)
        editor = self._editor("long")
        if steps == 0:
            self.heads.release(session.refined)
            return replace(session, refined=None), editor.render(session.ws, *session.pose), "Not refined."
        start = time.perf_counter()
        head = self._refined(session.face, session.ws, steps, progress)
        self.heads.release(session.refined)
        session = replace(session, refined=self.heads.put(head))
        reconstruction = head["long"].reconstruction()
        before = psnr(session.face.image, editor.render(session.ws, *session.pose))
        after = psnr(session.face.image, reconstruction)
        status = (
            f"Refined in {time.perf_counter() - start:.1f} s ({steps} steps): the reconstruction went from "
            f"{before:.1f} to {after:.1f} dB PSNR. Every view, edit, video and mesh of this photo now uses "
            "the refined head (in this browser tab only)."
        )
        return session, reconstruction, status

    def api_viewer(self, photo, latent, face, refine_steps, lane: str = "short", progress=None):
        """(None or a head refined for this call, code, pose) for the stateless endpoints."""
        from .handlers import uploaded_path

        steps = check_refine_steps(refine_steps or 0)
        if not steps:
            return None, *self._code(photo, latent, face)
        if uploaded_path(photo) is None:
            raise ValueError("refine_steps needs a photo: a latent file has no image to refine against.")
        prepared = self._prepare(uploaded_path(photo), face)
        return self._refined(prepared.face, prepared.ws, steps, progress)[lane], prepared.ws, prepared.pose


def refine_controls(page):
    """The Refine button, its step count and status line, laid out where they are called."""
    cpu = page.device.type == "cpu"
    steps = page.control(
        gr.Slider(
            10,
            PAGE_MAX_STEPS,
            100 if cpu else PAGE_STEPS,
            step=10,
            label="Refinement steps",
            interactive=page.ready,
            elem_id="refine-steps",
            info="Tunes the generator to this photo, keeping its code: a more faithful head, every edit "
            + (
                "still works. On this CPU it takes minutes (the bar shows the time left)."
                if cpu
                else "still works."
            ),
        )
    )
    button = page.control(gr.Button("Refine", interactive=page.ready, elem_id="refine-button"))
    status = gr.Markdown(elem_id="refine-status")
    return steps, button, status


def wire_refine(page, refine, apply_edits, private: dict, long_lane: dict, short_lane: dict) -> None:
    """The button runs `refine` (Handlers.refine, wrapped for the GPU) in the long lane → the head's
    reconstruction and status; then `apply_edits` re-renders the edited view with the head. A new
    photo or code clears the status."""
    steps, button, status = page.refine
    inputs = [page.state, page.yaw, page.pitch, page.precise, page.hold, *page.sliders.values()]
    refined = button.click(
        refine, [page.state, steps], [page.state, page.reconstruction, status], **private, **long_lane
    )
    refined.success(apply_edits, inputs, [page.state, page.edited], **private, **short_lane)
    for event in (page.photo.change, page.latent_in.upload):
        event(lambda: "", None, status, queue=False, **private)
