"""mimicfast.progress: bars only on a terminal unless asked for or refused."""

from __future__ import annotations

import io
import sys

from mimicfast.progress import progress_bar, show_progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_follow_the_terminal_unless_chosen(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert show_progress() is False and show_progress(True) is True
    assert list(progress_bar(range(3), desc="x")) == [0, 1, 2]
    assert sys.stderr.getvalue() == ""  # a log file gets no bar
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert show_progress() is True and show_progress(False) is False
    list(progress_bar(range(3), desc="steps"))
    assert "steps" in sys.stderr.getvalue()
