"""Schedules, denoiser adapters, the ancestral sampler and the MimicDiffusion guidance."""

from mimicfast.sampling.ancestral import StepCoefficients, sample
from mimicfast.sampling.denoisers import Denoiser, EpsTimestepDenoiser, SigmaDenoiser, as_denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.noise import PerSampleNoise, expand_seeds
from mimicfast.sampling.schedules import (
    alphas_cumprod,
    linear_betas,
    sigma_grid,
    space_timesteps,
    window_mask,
)

__all__ = [
    "Denoiser",
    "EpsTimestepDenoiser",
    "MimicGuidance",
    "PerSampleNoise",
    "SigmaDenoiser",
    "StepCoefficients",
    "alphas_cumprod",
    "as_denoiser",
    "expand_seeds",
    "linear_betas",
    "sample",
    "sigma_grid",
    "space_timesteps",
    "window_mask",
]
