"""Network architectures that load public checkpoints, and their loaders.

* :func:`guided_diffusion_unet` -- openai/guided-diffusion ``UNetModel`` (``create_model`` kwargs).
* :func:`edm_network` -- NVlabs/edm SongUNet / DhariwalUNet inside VP/VE/EDM preconditioners.
* :func:`load`, :func:`load_guided_diffusion` -- the loader (:mod:`mimicfast.models.loader`): never executes code
  from a file, never hangs on one, refuses NaN/Inf weights; configs and their limits in
  :mod:`mimicfast.models.configs` (diffusers folders: :mod:`mimicfast.models.diffusers_config`), state-dict files
  read by :mod:`mimicfast.models.state_dict_file`, weights checked by :mod:`mimicfast.models.weight_checks`.
"""

from __future__ import annotations

from mimicfast._lazy import lazy_getattr

_LAZY = {
    "guided_diffusion_unet": "mimicfast.models.guided_diffusion",
    "GuidedDiffusionUNet": "mimicfast.models.guided_diffusion",
    "load_guided_diffusion": "mimicfast.models.loader",
    "GD_CONFIGS": "mimicfast.models.configs",
    "edm_network": "mimicfast.models.edm",
    "load": "mimicfast.models.loader",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
