"""Atomic writes: a file or a folder appears whole or not at all.

Every output of this library (results, reports, CSVs, caches, exported models, tokenized data) is written under a
temporary name beside its target and renamed into place once complete. A rename within one folder is atomic on
POSIX file systems, so a crash, a Ctrl-C or a full disk leaves the previous version (or nothing), never half a file
that a later step would read as valid.

Example::

    atomic_write_text(out / "results.json", json.dumps(results))
    with atomic_file(out / "table.parquet") as tmp:
        pq.write_table(table, tmp)            # any writer that takes a path
    with atomic_folder(out / "model") as tmp:
        model.save_pretrained(tmp)            # the folder replaces out/model only when this block succeeds
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are meant to be readable like any written file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; return ``path``."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | Path, *, replace: bool = True, keep_existing: bool = False,
                  prefix: str = "") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block succeeds it becomes ``path``.

    Args:
        path: the folder to produce.
        replace: an existing ``path`` is swapped out (renamed aside, then deleted) once the new one is in place;
            with False an existing ``path`` is an error (``FileExistsError``) before anything is written.
        keep_existing: when another process created ``path`` while this one was writing (a shared cache), keep
            theirs and drop ours instead of replacing it.
        prefix: a name part for the temporary folder (``.{name}-{prefix}...``), so leftovers say what made them.

    A folder made here is recorded as the tool's own (``ownership.FILES_RECORD``: every file it holds). Replacing
    an existing ``path`` is refused (``FileExistsError``, naming them) when it holds files its record does not list:
    someone else's work is never deleted with the tool's own.

    On an error the temporary folder is removed and ``path`` is untouched.
    """
    from .ownership import check_replaceable, record_files

    path = Path(path)
    if path.exists() and not replace and not keep_existing:
        raise FileExistsError(f"{path} exists")
    if path.exists() and replace and not keep_existing:
        check_replaceable(path)  # before any work
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}-{prefix}", dir=path.parent))
    work.chmod(0o755)  # mkdtemp makes it private; outputs and caches are meant to be readable
    try:
        yield work
        if path.exists() and keep_existing:
            return
        record_files(work)
        if path.exists():
            check_replaceable(path)  # again: files may have been added while this one was writing
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}-replaced-", dir=path.parent))
            os.rename(path, aside / "old")
            try:
                os.rename(work, path)
            except OSError:
                os.rename(aside / "old", path)  # put the previous version back
                raise
            finally:
                shutil.rmtree(aside, ignore_errors=True)
        else:
            try:
                os.rename(work, path)
            except OSError:
                if not (keep_existing and path.exists()):  # another process won the race: keep theirs
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def atomic_write_csv(path: str | Path, rows: list[dict], fields: list[str] | None = None) -> Path:
    """Rows as a CSV table with a header, atomically; ``fields`` defaults to every key of the rows, in order of first
    appearance (keys outside ``fields`` are left out)."""
    import csv

    fields = fields or list(dict.fromkeys(key for row in rows for key in row))
    with atomic_file(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
