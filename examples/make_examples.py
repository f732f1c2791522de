"""Write the demo's example photos from images that ship inside scikit-image (see LICENSES.md).

python examples/make_examples.py
"""

from pathlib import Path

from PIL import Image
from skimage import data

HERE = Path(__file__).resolve().parent


def main() -> None:
    astronaut = Image.fromarray(data.astronaut())
    astronaut.save(HERE / "astronaut.png")
    Image.fromarray(data.camera()).save(HERE / "cameraman.png")
    # Two faces of different sizes, to show the face choice: the astronaut and a smaller mirrored copy.
    two = Image.new("RGB", (896, 512), (255, 255, 255))
    two.paste(astronaut, (0, 0))
    two.paste(
        astronaut.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((384, 384), Image.Resampling.LANCZOS),
        (512, 128),
    )
    two.save(HERE / "two_faces.jpg", quality=92)


if __name__ == "__main__":
    main()
