"""Re-zipping a ``torch.save`` archive with another zip compression (torch.save itself stores members as is)."""

from __future__ import annotations

import zipfile
from pathlib import Path


def rezip(src: Path, dst: Path, compression: int = zipfile.ZIP_DEFLATED, extra: dict[str, bytes] | None = None) -> None:
    """Copy every member of the zip ``src`` into ``dst`` compressed with ``compression``, plus ``extra`` members
    (name under the archive's folder -> bytes)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", compression) as new:
        folder = old.namelist()[0].split("/")[0]
        for info in old.infolist():
            new.writestr(info.filename, old.read(info))
        for name, data in (extra or {}).items():
            new.writestr(f"{folder}/{name}", data)
    with zipfile.ZipFile(dst) as check:  # the rewrite really compressed what it claims
        assert all(m.compress_type == compression for m in check.infolist())
