"""Wall-clock time of each stage of the chain on the editor's device.

Stages, each timed as a user calls it (`preim3d.pipeline.Editor`):

    align          detect, landmark and crop the face of the photo (dlib, CPU)
    invert         one encoder pass: crop -> W+ code
    edit           one plain attribute edit of the code
    edit_precise   the same edit, precise, holding every other attribute of the bank
    render         one view from scratch (512 px for EG3D FFHQ): tri-plane backbone, volume rendering
                   and super-resolution
    render_cached  one more view of the same code: the renderer's cache skips the backbone

Every stage is run once first (lazy model loading, CUDA kernel selection), its time kept as
`cold_ms`, then `repeats` times more; `ms` is their median, `min_ms` the fastest. Each stage
returns its result on the CPU (a PIL image or a CPU tensor), which waits for the device, so the
times include the GPU's work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def time_call(function: Callable[[], object], repeats: int) -> tuple[dict[str, float], object]:
    """Call `function` 1 + `repeats` times: ({'cold_ms': the first call, 'ms': median of the others,
    'min_ms': fastest of the others, 'repeats'}, the last call's result)."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    warm = times[1:]
    return {
        "cold_ms": 1e3 * times[0],
        "ms": 1e3 * statistics.median(warm),
        "min_ms": 1e3 * min(warm),
        "repeats": repeats,
    }, result


def time_stages(
    editor, photo, edit: tuple[str, float] | None = None, repeats: int = 3
) -> dict[str, dict[str, float]]:
    """Times of the stages (module docstring) for one photo, rendered from its estimated camera.

    `edit` (name, strength) is the edit timed; the edit stages are left out without one or when the
    editor has no directions.
    """
    times = {}
    times["align"], face = time_call(lambda: editor.align(photo), repeats)
    times["invert"], ws = time_call(lambda: editor.invert(face), repeats)
    if edit is not None and editor.directions is not None:
        name, strength = edit
        stored = editor.directions.resolve(name)[0]
        others = [n for n in editor.directions.names if n != stored]
        times["edit"], _ = time_call(lambda: editor.edit(ws, {name: strength}), repeats)
        times["edit_precise"], _ = time_call(lambda: editor.edit(ws, {name: strength}, hold=others), repeats)
    pose = face.estimate_pose()

    def render_from_scratch():
        editor.renderer.clear()
        return editor.render(ws, *pose)

    times["render"], _ = time_call(render_from_scratch, repeats)
    times["render_cached"], _ = time_call(lambda: editor.render(ws, *pose), repeats)
    return times
