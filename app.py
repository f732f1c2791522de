"""Entry point of the web demo: `python app.py`, and a Hugging Face Space's app file.

Weights come from $PREIM3D_WEIGHTS (a bundle folder, a folder of the official files or a Hub repo
id), else the default folder that `preim3d download` fills. Without weights the page still starts
and offers to download them (its Download button). GRADIO_SERVER_NAME / GRADIO_SERVER_PORT choose
where it listens.
"""

from demo import build_demo, launch

demo = build_demo()  # module level, so `gradio app.py` reloads it too

if __name__ == "__main__":
    launch(demo)
