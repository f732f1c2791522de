"""Identity similarity between face images: dlib's face-recognition ResNet, or ArcFace IR-SE50 if given.

Both models map a face image to an embedding e; the similarity of two images is the cosine

    sim(a, b) = <e_a, e_b> / (|e_a| |e_b|)          1 = the same embedding; higher = more alike.

* dlib (default, no download): `dlib_face_recognition_resnet_model_v1.dat` from the
  `face-recognition-models` package, 128-d descriptors. The image is scaled to 256 px on its
  long side; dlib's HOG detector finds the face (the largest box); the 5-point shape predictor
  places eyes and nose; dlib cuts the aligned 150 px chip (padding 0.25) and embeds it. When HOG
  finds no face (a render at a large yaw, a random generator's blob), the box an EG3D-style crop
  puts the face in is used instead (`CROP_FACE_BOX`), and `Embedding.detected` is False: the
  number then only says how face-like the image is there. dlib's own rule, Euclidean distance of
  the raw descriptors < 0.6 = same person, corresponds to a cosine of about 0.9 (descriptor
  norms are ~1.4).
* ArcFace IR-SE50 (`model_ir_se50.pth`, as PREIM3D's identity loss; pass its path): the network
  of `preim3d.training.identity`. As in that loss, the whole aligned crop is average-pooled to
  112 x 112 without a face detection, so it suits EG3D-style crops only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..align import dlib_model_path
from .metrics import to_float

DLIB_SIZE = 256  # long side the dlib model looks at: faces in crops become ~150 px, HOG needs >= 80
# Where dlib's HOG box falls in an EG3D-style crop (fractions of the side: left, top, right, bottom),
# measured on the aligned astronaut: used when HOG finds no face.
CROP_FACE_BOX = (0.19, 0.26, 0.81, 0.88)
_DLIB_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
_DLIB_LANDMARKS = "shape_predictor_5_face_landmarks.dat"


@dataclass(frozen=True)
class Embedding:
    """An image's identity embedding (unit length) and whether a face detector found the face."""

    vector: np.ndarray
    detected: bool


def cosine(a: Embedding | np.ndarray, b: Embedding | np.ndarray) -> float:
    """Cosine similarity of two embeddings (unit vectors, so their dot product)."""
    a, b = getattr(a, "vector", a), getattr(b, "vector", b)
    return float(np.dot(a, b))


def similarity_matrix(embeddings: list[Embedding]) -> np.ndarray:
    """[K, K] cosine similarities of K embeddings."""
    stacked = np.stack([e.vector for e in embeddings])
    return stacked @ stacked.T


class DlibIdentity:
    """dlib's face-recognition ResNet on the 5-point aligned chip (module docstring)."""

    name = "dlib face-recognition ResNet (dlib_face_recognition_resnet_model_v1, 128-d)"

    def __init__(self):
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(dlib_model_path(_DLIB_LANDMARKS))
        self._network = dlib.face_recognition_model_v1(dlib_model_path(_DLIB_RECOGNITION))
        self._rectangle = dlib.rectangle

    def embed(self, image) -> Embedding:
        """The unit 128-d descriptor of the largest face in `image` (PIL or HxWx3 array)."""
        pixels = np.round(to_float(image) * 255).astype(np.uint8)
        height, width = pixels.shape[:2]
        scale = DLIB_SIZE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
        boxes = self._detector(pixels, 0)
        if boxes:
            box = max(boxes, key=lambda r: r.area())
        else:
            left, top, right, bottom = CROP_FACE_BOX
            box = self._rectangle(
                round(left * size[0]), round(top * size[1]), round(right * size[0]), round(bottom * size[1])
            )
        shape = self._landmarks(pixels, box)
        vector = np.asarray(self._network.compute_face_descriptor(pixels, shape, 0, 0.25), dtype=np.float64)
        return Embedding(vector / np.linalg.norm(vector), bool(boxes))


class ArcFaceIdentity:
    """ArcFace IR-SE50 on the whole crop pooled to 112 px (module docstring)."""

    name = "ArcFace IR-SE50 (whole crop pooled to 112 px)"

    def __init__(self, weights, device="cpu"):
        from ..training.identity import load_arcface

        self.network = (
            load_arcface(weights, device=device) if isinstance(weights, (str, Path)) else weights.eval()
        )
        self.weights = str(weights) if isinstance(weights, (str, Path)) else "given module"

    def embed(self, image) -> Embedding:
        import torch
        import torch.nn.functional as F

        device = next(self.network.parameters()).device
        x = torch.from_numpy(to_float(image)).permute(2, 0, 1)[None].float().to(device) * 2 - 1
        size = self.network.input_size
        with torch.no_grad():
            vector = self.network(F.adaptive_avg_pool2d(x, (size, size)))[0].double().cpu().numpy()
        return Embedding(vector / np.linalg.norm(vector), True)


@functools.cache
def _default_dlib() -> DlibIdentity:
    return DlibIdentity()


def identity_model(arcface=None, device="cpu"):
    """ArcFaceIdentity for an ArcFace weights file (or module), else the shared DlibIdentity."""
    return _default_dlib() if arcface is None else ArcFaceIdentity(arcface, device=device)


def identity_similarity(a, b, model=None) -> float:
    """Cosine identity similarity of two face images with `model` (default dlib)."""
    model = model or _default_dlib()
    return cosine(model.embed(a), model.embed(b))
