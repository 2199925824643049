"""Denoiser adapters, THE reverse step, the eager loop over it and the MimicDiffusion guidance."""

from mimicfast.sampling.ancestral import sample
from mimicfast.sampling.denoisers import Denoiser, EpsTimestepDenoiser, SigmaDenoiser, as_denoiser
from mimicfast.sampling.guidance import MimicGuidance
from mimicfast.sampling.noise import PerSampleNoise
from mimicfast.sampling.step import Guidance, StepCoefficients, denoise, reverse_step

__all__ = [
    "Denoiser",
    "EpsTimestepDenoiser",
    "Guidance",
    "MimicGuidance",
    "PerSampleNoise",
    "SigmaDenoiser",
    "StepCoefficients",
    "as_denoiser",
    "denoise",
    "reverse_step",
    "sample",
]
