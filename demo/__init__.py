"""The preim3d web demo, a Gradio Blocks app:
`build_demo(editor_or_source)` builds it, `launch(demo)` serves it."""

from .ui import build_demo, launch

__all__ = ["build_demo", "launch"]
