"""Exceptions that name what is wrong. Both derive from ValueError so callers may catch either."""


class InputError(ValueError):
    """Bad user input: wrong rank, channel count, size, dtype, range, NaN/Inf, empty batch."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, of the wrong format, or does not match its config."""
