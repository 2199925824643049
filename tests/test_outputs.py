"""mimicfast.outputs: outputs compared with what is read by file identity, folders checked without writing,
file names kept within the file system's limit; the atomic writer keeps the old file on failure."""

from __future__ import annotations

import os

import pytest

from mimicfast.atomic import write_atomic
from mimicfast.errors import InputError
from mimicfast.outputs import check_outputs, check_writable_dir, fit_name


def test_outputs_are_compared_by_identity(tmp_path) -> None:
    source = tmp_path / "in.pt"
    source.write_bytes(b"data")
    (tmp_path / "out").mkdir()
    os.link(source, tmp_path / "out" / "hard.pt")
    (tmp_path / "out" / "soft.pt").symlink_to(source)
    for out in ("hard.pt", "soft.pt"):
        with pytest.raises(InputError, match="would overwrite"):
            check_outputs([tmp_path / "out" / out], [source])
    with pytest.raises(InputError, match="would overwrite"):
        check_outputs([tmp_path / "out" / ".." / "in.pt"], [source])
    check_outputs([tmp_path / "out" / "new.pt"], [source])


def test_writable_dir_checks_write_nothing(tmp_path, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        check_writable_dir(afile / "sub", "--out")
    check_writable_dir(tmp_path / "new" / "deeper", "--out")
    assert not (tmp_path / "new").exists()

    class ReadOnly:
        f_flag = os.ST_RDONLY

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    monkeypatch.setattr(os, "statvfs", lambda p: ReadOnly())
    with pytest.raises(InputError, match="read-only file system"):
        check_writable_dir(tmp_path / "out", "--out")


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "chunk.pt"
    target.write_bytes(b"old")

    def dies_halfway(f) -> None:
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(target, dies_halfway)
    assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["chunk.pt"]
    write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["chunk.pt"]


def test_fit_name_keeps_long_names_unique_and_short() -> None:
    a, b = "x" * 250 + "a", "x" * 250 + "b"
    fa, fb = fit_name(a, "_purified.png", 255), fit_name(b, "_purified.png", 255)
    assert fa != fb and len(fa.encode()) <= 255 and fa.endswith("_purified.png")
    assert fit_name("cat", "_purified.png", 255) == "cat_purified.png"
    assert len(fit_name("é" * 200, "_purified.png", 255).encode()) <= 255


# ------------------------------------------------------------------------------------------ fuzz
