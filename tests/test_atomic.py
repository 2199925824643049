"""Atomic writes: a killed write leaves at most a temporary file, and its writer can remove exactly its own."""

from __future__ import annotations

from mimicfast.atomic import remove_unfinished_writes, write_text


def test_only_the_named_files_leftovers_are_removed(tmp_path):
    target = tmp_path / "rank-0.head.json"
    write_text(target, "{}\n")
    mine = [tmp_path / ".rank-0.head.json.k1ll3d.tmp", tmp_path / ".rank-0.head.json.x.tmp"]
    others = [tmp_path / ".rank-1.head.json.k1ll3d.tmp", tmp_path / ".rank-0.jsonl.k1ll3d.tmp",
              tmp_path / "rank-0.head.json.k1ll3d.tmp"]
    for path in mine + others:
        path.write_text("half")
    remove_unfinished_writes(target)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in others)
    assert target.read_text() == "{}\n"
    remove_unfinished_writes(tmp_path / "absent[1].json")  # no leftovers, glob characters in the name: no error
