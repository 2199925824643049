"""mimicfast: fast, exact MimicDiffusion adversarial purification.

    >>> import mimicfast
    >>> model = mimicfast.load_guided_diffusion("256x256_diffusion_uncond.pt", "imagenet256-uncond")
    >>> x_pur = mimicfast.purify(x_adv, model, preset="paper", seed=0)   # x_adv in [0, 1], NCHW
    >>> defended = torch.nn.Sequential(mimicfast.Purifier(model, grad="bpda", seed=None), classifier)  # attackable

Importing this package never initialises CUDA and never fails because an optional backend
(Triton, the compiled extension ``mimicfast._C``) is missing; ``mimicfast.backends()`` says what loaded.
"""

from __future__ import annotations

from mimicfast._lazy import lazy_getattr
from mimicfast.version import __version__

# Public name -> module that defines it. Resolved lazily so that `import mimicfast` stays cheap
# and independent of optional backends.
_LAZY = {
    "purify": "mimicfast.api",
    "Purifier": "mimicfast.api",
    "PurifyOptions": "mimicfast.purify_options",
    "Preset": "mimicfast.presets",
    "PRESETS": "mimicfast.presets",
    "get_preset": "mimicfast.presets",
    "backends": "mimicfast.ops",
    "load": "mimicfast.models",
    "load_guided_diffusion": "mimicfast.models",
    "load_default": "mimicfast.default",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
