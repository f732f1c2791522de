"""Shared by the generator tests: configurations, and preim3d.testing's deterministic random weights
(`fill_random`), seeded inputs and PSNR.

The same weights can be put into the official EG3D classes and into ours (their state-dict names
are equal), so outputs can be compared — live against an official checkout, or against outputs
the official code produced once and stored in tests/data (see make_official_reference.py).
"""

from __future__ import annotations

from preim3d.testing import (  # noqa: F401  (fill_random, psnr and random_inputs are used through this module)
    FFHQ512_GENERATOR_KWARGS,
    FFHQ512_NEURAL_RESOLUTION,
    TINY_GENERATOR_KWARGS,
    TINY_NEURAL_RESOLUTION,
    fill_random,
    psnr,
    random_inputs,
)

# The ffhq512-128 generator: constructor kwargs and the neural rendering resolution.
FFHQ512 = (FFHQ512_GENERATOR_KWARGS, FFHQ512_NEURAL_RESOLUTION)

# A small generator of the same classes (the one preim3d.testing builds its tiny bundles from).
TINY = (TINY_GENERATOR_KWARGS, TINY_NEURAL_RESOLUTION)
