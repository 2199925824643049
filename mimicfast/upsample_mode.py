"""The x4 upsampling H of the short-range guidance term: its factor and its modes (docs/DESIGN.md §2).

The guidance loss compares ``H(x0_hat)`` and ``H(y)``, H a x4 upsampling (paper Eq. 12). Its mode is
bicubic in the paper, nearest in the authors' released code, or absent (long-range term only). Every
implementation of the guidance ops (the reference, the Triton kernels, the C++ / CUDA kernels) speaks of the
mode through :class:`UpsampleMode`, whose integer values are also the codes of ``csrc/common/launch.h``
(``mimicfast._C.upsample_modes`` exposes them; a test checks that the two agree).
"""

from __future__ import annotations

import enum

from mimicfast.errors import InputError

SCALE = 4
"""Upsampling factor of H along each spatial axis ([B, C, H, W] -> [B, C, 4H, 4W])."""


class UpsampleMode(enum.IntEnum):
    """The operator H. The values are the codes every backend uses (Triton constexprs, C++ ``Upsample``)."""

    NONE = 0
    """No short-range term: the residual is the long-range term ``sign(d)`` only."""
    BICUBIC = 1
    """``F.interpolate(scale_factor=4, mode="bicubic", align_corners=False)`` (Keys a = -0.75, border clamp)."""
    NEAREST = 2
    """``F.interpolate(scale_factor=4, mode="nearest")``, the default mode of ``F.interpolate``."""

    @classmethod
    def parse(cls, mode: UpsampleMode | str | None) -> UpsampleMode:
        """The member for ``mode``: an :class:`UpsampleMode`, ``"bicubic"``, ``"nearest"``, or ``None`` / ``"none"``.

        Raises:
            InputError: for anything else.
        """
        if isinstance(mode, cls):
            return mode
        if mode is None:
            return cls.NONE
        if isinstance(mode, str) and mode.upper() in cls.__members__:
            return cls[mode.upper()]
        raise InputError(f"unknown upsample mode {mode!r}; expected 'bicubic', 'nearest' or None")

    @property
    def interpolate_mode(self) -> str | None:
        """The ``mode=`` of ``F.interpolate`` that realises H (``None`` for :attr:`NONE`)."""
        return None if self is UpsampleMode.NONE else self.name.lower()
