"""Whole-or-nothing writes: a failure leaves the previous file or folder as it was, and no temporary behind."""

from __future__ import annotations

import pytest

from f2llm_lib.atomic import atomic_file, atomic_folder, atomic_write_csv, atomic_write_text


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_a_file_is_replaced_whole_and_a_failed_write_changes_nothing(tmp_path):
    target = atomic_write_text(tmp_path / "results.json", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and _siblings(target) == ["results.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _siblings(target) == ["results.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644", "outputs are readable like any written file"


def test_a_folder_appears_whole_and_a_failed_write_keeps_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as work:
        (work / "weights").write_text("v1")
    with pytest.raises(KeyboardInterrupt), atomic_folder(target) as work:
        (work / "weights").write_text("v2-partial")
        raise KeyboardInterrupt
    assert (target / "weights").read_text() == "v1" and _siblings(target) == ["model"]
    with atomic_folder(target) as work:
        (work / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and _siblings(target) == ["model"]


def test_a_shared_cache_keeps_the_copy_another_process_finished_first(tmp_path):
    target = tmp_path / "cache"
    with atomic_folder(target, keep_existing=True) as work:
        (work / "file").write_text("ours")
        target.mkdir()  # another process finished first
        (target / "file").write_text("theirs")
    assert (target / "file").read_text() == "theirs" and _siblings(target) == ["cache"]


def test_refusing_to_replace_writes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError), atomic_folder(tmp_path / "out", replace=False):
        pass
    assert _siblings(tmp_path / "out") == ["out"]


def test_csv_rows_with_every_column_in_order(tmp_path):
    path = atomic_write_csv(tmp_path / "t.csv", [{"a": 1, "b": 2}, {"a": 3, "c": 4}])
    assert path.read_text().splitlines() == ["a,b,c", "1,2,", "3,,4"]
