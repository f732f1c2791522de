"""preim3d: edit a face photo in 3D with the PREIM3D encoder and the EG3D generator, in plain PyTorch.

The public API is imported lazily, so `import preim3d` stays fast and does not load dlib or
gradio until they are needed.
"""

from importlib import import_module

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
    "save_latent": "preim3d.pipeline",
    "load_latent": "preim3d.pipeline",
    "default_device": "preim3d.pipeline",
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
}

__all__ = [*sorted(_PUBLIC), "__version__"]


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'preim3d' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
