"""Measure the chain on your own photos: inversion fidelity, 3D consistency, editing precision, speed.

    from preim3d.evaluation import evaluate
    report = evaluate(editor, "photos/", out="evaluation/")     # CSV + Markdown + PNG plots
    print(report.to_markdown())

Command line: `preim3d evaluate --photos DIR [--labels CSV] [--out DIR]`. The parts can be used
alone: `metrics` (MSE, PSNR, SSIM, LPIPS), `identity` (dlib or ArcFace similarity),
`consistency` (depth-based reprojection between rendered views), `editing` (latent leakage),
`speed` (milliseconds per stage), `report` (tables and PIL plots).
"""

from .consistency import Reprojection, reproject
from .editing import latent_leakage, plain_and_precise
from .identity import ArcFaceIdentity, DlibIdentity, identity_similarity
from .metrics import image_metrics, lpips_distance, mse, psnr, ssim
from .report import EvaluationReport
from .run import evaluate
from .speed import time_stages

__all__ = [
    "ArcFaceIdentity",
    "DlibIdentity",
    "EvaluationReport",
    "Reprojection",
    "evaluate",
    "identity_similarity",
    "image_metrics",
    "latent_leakage",
    "lpips_distance",
    "mse",
    "plain_and_precise",
    "psnr",
    "reproject",
    "ssim",
    "time_stages",
]
