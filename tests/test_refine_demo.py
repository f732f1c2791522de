"""The page's Refine step and the endpoints' refine_steps, through the demo's handlers (tiny bundle)."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from demo.handlers import Handlers
from demo.refine import HeadStore
from demo.ui import build_demo
from preim3d.pipeline import Editor, save_latent


@pytest.fixture(scope="module")
def editor(tiny_bundle):
    return Editor.from_pretrained(tiny_bundle, device="cpu", deterministic=True)


def no_progress(*args, **kwargs):
    pass


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_a_refined_head_serves_its_own_session_only(editor, astronaut_png):
    h = Handlers(editor)
    mine, other = (h.load_photo(str(astronaut_png))[0] for _ in range(2))
    mine, reconstruction, status = h.refine(mine, 2, progress=no_progress)
    assert mine.refined and "Refined in" in status and "dB PSNR" in status
    assert h.viewer(mine) is not editor and h.viewer(other) is editor
    assert np.array_equal(pixels(reconstruction), pixels(h.viewer(mine).render(mine.ws, *mine.pose)))
    # every control of the refined session renders with its head, the other session's with the base
    strengths = [0.0] * len(h.attributes)
    mine, edited = h.apply_edits(mine, 10, 0, False, [], *strengths)
    other, edited_other = h.apply_edits(other, 10, 0, False, [], *strengths)
    assert mine.refined  # edits keep the head
    assert np.abs(pixels(edited) - pixels(edited_other)).mean() > 1
    assert np.array_equal(pixels(h.grid(other)), pixels(editor.grid(other.edited)))
    assert np.array_equal(pixels(h.grid(mine)), pixels(h.viewer(mine).grid(mine.edited)))
    assert not np.array_equal(pixels(h.pasted(mine)), pixels(h.pasted(other)))
    # closing the tab (gradio's delete callback) releases the head
    h.release(mine)
    assert h.viewer(mine) is editor and len(h.heads) == 0


def test_refining_again_replaces_the_head_and_zero_steps_go_back(editor, astronaut_png):
    h = Handlers(editor)
    session = h.load_photo(str(astronaut_png))[0]
    first, _, _ = h.refine(session, 1, progress=no_progress)
    second, _, _ = h.refine(first, 1, progress=no_progress)
    assert len(h.heads) == 1 and h.heads.get(first.refined) is None and h.viewer(second) is not editor
    back, reconstruction, status = h.refine(second, 0, progress=no_progress)
    assert back.refined is None and len(h.heads) == 0 and status == "Not refined."
    with pytest.raises(gr.Error, match="refine steps"):
        h.refine(back, 5000, progress=no_progress)


def test_the_store_keeps_a_bounded_number_of_heads():
    store = HeadStore(capacity=2)
    tickets = [store.put(object()) for _ in range(3)]
    assert len(store) == 2 and store.get(tickets[0]) is None
    store.get(tickets[1])  # used recently: the next one out is tickets[2]
    store.put(object())
    assert store.get(tickets[1]) is not None and store.get(tickets[2]) is None
    assert store.get(None) is None and len({*tickets}) == 3


def test_endpoints_refine_per_call(editor, astronaut_png, tmp_path):
    h = Handlers(editor)
    plain = h.api_edit(photo=str(astronaut_png))
    refined = h.api_edit(photo=str(astronaut_png), refine_steps=2)
    assert np.abs(pixels(plain) - pixels(refined)).mean() > 1
    assert len(h.heads) == 0  # nothing kept between calls
    code = save_latent(editor.latent_avg.cpu(), tmp_path / "code.npz")
    with pytest.raises(gr.Error, match="refine_steps needs a photo"):
        h.api_edit(latent=str(code), refine_steps=2)
    with pytest.raises(gr.Error, match="refine steps"):
        h.api_mesh(photo=str(astronaut_png), refine_steps=-1)


def test_the_page_has_the_refine_controls_and_releases_heads_with_the_session(editor):
    demo = build_demo(editor, examples=())
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"refine-steps", "refine-button", "refine-status"} <= ids
    states = [block for block in demo.blocks.values() if isinstance(block, gr.State)]
    assert any(getattr(state.delete_callback, "__name__", "") == "release" for state in states)
    api = {dep.get("api_name"): dep for dep in demo.config["dependencies"]}
    for name in ("edit", "turntable", "mesh"):
        labels = [demo.blocks[i].label for i in api[name]["inputs"]]
        assert "refine_steps" in labels
