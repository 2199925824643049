"""Exceptions that name what is wrong. All derive from ValueError so callers may catch any of them."""


class InputError(ValueError):
    """Bad user input: wrong rank, channel count, size, dtype, range, NaN/Inf, empty batch."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, of the wrong format, or does not match its config."""


class NumericalError(ValueError):
    """A result that is not finite (NaN or Inf) although every input was: e.g. a denoiser that returns NaN."""
