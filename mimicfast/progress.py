"""Progress bars: shown only where a person watches them (stderr is a terminal), never in logs or pipes.

Every command passes its ``--progress`` / ``--no-progress`` choice (None when not given) through
:func:`show_progress`; long loops wrap their iterables in :func:`progress_bar`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def show_progress(choice: bool | None = None) -> bool:
    """Whether to draw progress bars: ``choice`` when given, else whether stderr is a terminal."""
    if choice is not None:
        return bool(choice)
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable[T], *, progress: bool | None = None, **kwargs: Any) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar on stderr when :func:`show_progress` ``(progress)`` says so; ``kwargs``
    go to tqdm (``desc``, ``total``, ``unit``, ...)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not show_progress(progress), **kwargs)
