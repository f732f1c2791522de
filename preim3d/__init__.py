"""preim3d: edit a face photo in 3D with the PREIM3D encoder and the EG3D generator, in plain PyTorch.

The public API is imported lazily, so `import preim3d` stays fast and does not load dlib or
gradio until they are needed. Type checkers and IDEs read the same names from the imports under
TYPE_CHECKING below, which a test keeps in step with `_PUBLIC`.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "load_generator": "preim3d.weights.generator",
    "save_generator": "preim3d.weights.generator",
    "TriPlaneGenerator": "preim3d.networks.triplane",
    "set_kernels": "preim3d.networks.fused",
    "load_encoder": "preim3d.weights.encoder",
    "save_encoder": "preim3d.weights.encoder",
    "WPlusEncoder": "preim3d.networks.encoder",
    "compute_latent_avg": "preim3d.inversion",
    "preprocess_for_encoder": "preim3d.inversion",
    "invert": "preim3d.inversion",
    "Editor": "preim3d.pipeline",
    "EditResult": "preim3d.pipeline",
    "RefinedHead": "preim3d.pipeline",
    "RefineSettings": "preim3d.refine",
    "save_latent": "preim3d.pipeline",
    "load_latent": "preim3d.pipeline",
    "default_device": "preim3d.distributed",
    "resolve_weights": "preim3d.weights.resolve",
    "download_official": "preim3d.weights.download",
    "convert_official": "preim3d.weights.convert",
    "describe": "preim3d.weights.info",
    "load_latent_avg": "preim3d.weights.encoder",
    "save_latent_avg": "preim3d.weights.encoder",
    "convert_encoder": "preim3d.weights.encoder",
    "TriPlaneRenderer": "preim3d.rendering",
    "render_turntable": "preim3d.turntable",
    "multiview_grid": "preim3d.rendering",
    "extract_mesh": "preim3d.mesh",
    "export_mesh": "preim3d.mesh",
    "turntable_path": "preim3d.cameras",
    "yaw_sweep": "preim3d.cameras",
    "keyframe_path": "preim3d.cameras",
    "fit_direction": "preim3d.editing",
    "fit_directions_from_photos": "preim3d.editing",
    "similarity_heatmap": "preim3d.editing",
    "CELEBA_ATTRIBUTES": "preim3d.editing",
    "load_image": "preim3d.images",
    "TrainConfig": "preim3d.training.config",
    "train": "preim3d.training.trainer",
    "align_face": "preim3d.align",
    "detect_faces": "preim3d.align",
    "paste_back": "preim3d.align",
    "AlignedFace": "preim3d.align",
    "DirectionBank": "preim3d.editing",
    "camera_vector": "preim3d.cameras",
    "Preim3DError": "preim3d.errors",
    "WeightsError": "preim3d.errors",
    "InputImageError": "preim3d.errors",
    "NoFaceError": "preim3d.errors",
    "FaceTooSmallError": "preim3d.errors",
    "UnknownAttributeError": "preim3d.errors",
    "WeightsNotFoundError": "preim3d.errors",
    "DownloadError": "preim3d.errors",
    "LatentFileError": "preim3d.errors",
    "InvalidValueError": "preim3d.errors",
    "NoSuchFaceError": "preim3d.errors",
    "Preim3DWarning": "preim3d.errors",
    "MeshLevelWarning": "preim3d.errors",
    "InputVideoError": "preim3d.errors",
    "edit_video": "preim3d.video",
    "VideoEditReport": "preim3d.video",
}

__all__ = [*sorted(_PUBLIC), "__version__"]

__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)

if TYPE_CHECKING:  # the same names, for IDEs and type checkers (`X as X` marks a re-export)
    from .align import AlignedFace as AlignedFace
    from .align import align_face as align_face
    from .align import detect_faces as detect_faces
    from .align import paste_back as paste_back
    from .cameras import camera_vector as camera_vector
    from .cameras import keyframe_path as keyframe_path
    from .cameras import turntable_path as turntable_path
    from .cameras import yaw_sweep as yaw_sweep
    from .distributed import default_device as default_device
    from .editing import CELEBA_ATTRIBUTES as CELEBA_ATTRIBUTES
    from .editing import DirectionBank as DirectionBank
    from .editing import fit_direction as fit_direction
    from .editing import fit_directions_from_photos as fit_directions_from_photos
    from .editing import similarity_heatmap as similarity_heatmap
    from .errors import DownloadError as DownloadError
    from .errors import FaceTooSmallError as FaceTooSmallError
    from .errors import InputImageError as InputImageError
    from .errors import InputVideoError as InputVideoError
    from .errors import InvalidValueError as InvalidValueError
    from .errors import LatentFileError as LatentFileError
    from .errors import MeshLevelWarning as MeshLevelWarning
    from .errors import NoFaceError as NoFaceError
    from .errors import NoSuchFaceError as NoSuchFaceError
    from .errors import Preim3DError as Preim3DError
    from .errors import Preim3DWarning as Preim3DWarning
    from .errors import UnknownAttributeError as UnknownAttributeError
    from .errors import WeightsError as WeightsError
    from .errors import WeightsNotFoundError as WeightsNotFoundError
    from .images import load_image as load_image
    from .inversion import compute_latent_avg as compute_latent_avg
    from .inversion import invert as invert
    from .inversion import preprocess_for_encoder as preprocess_for_encoder
    from .mesh import export_mesh as export_mesh
    from .mesh import extract_mesh as extract_mesh
    from .networks.encoder import WPlusEncoder as WPlusEncoder
    from .networks.fused import set_kernels as set_kernels
    from .networks.triplane import TriPlaneGenerator as TriPlaneGenerator
    from .pipeline import Editor as Editor
    from .pipeline import EditResult as EditResult
    from .pipeline import RefinedHead as RefinedHead
    from .pipeline import load_latent as load_latent
    from .pipeline import save_latent as save_latent
    from .refine import RefineSettings as RefineSettings
    from .rendering import TriPlaneRenderer as TriPlaneRenderer
    from .rendering import multiview_grid as multiview_grid
    from .training.config import TrainConfig as TrainConfig
    from .training.trainer import train as train
    from .turntable import render_turntable as render_turntable
    from .video import VideoEditReport as VideoEditReport
    from .video import edit_video as edit_video
    from .weights.convert import convert_official as convert_official
    from .weights.download import download_official as download_official
    from .weights.encoder import convert_encoder as convert_encoder
    from .weights.encoder import load_encoder as load_encoder
    from .weights.encoder import load_latent_avg as load_latent_avg
    from .weights.encoder import save_encoder as save_encoder
    from .weights.encoder import save_latent_avg as save_latent_avg
    from .weights.generator import load_generator as load_generator
    from .weights.generator import save_generator as save_generator
    from .weights.info import describe as describe
    from .weights.resolve import resolve_weights as resolve_weights
