"""Own only what you wrote: one writer per output folder, and a record of the files each tool wrote.

Two rules keep a tool from destroying work that is not its own:

- **One writer per folder.** :func:`output_lock` creates ``.<folder>.lock`` beside the folder with ``O_EXCL`` and
  writes who holds it (process id, host, command, start time). A second writer is refused with that holder named.
  A lock left by a process that is no longer running (same host) is reported and taken over, loudly: its work
  folder can only be a leftover then. A lock from another host cannot be checked, so it is refused with the file
  to delete once the user knows that run is gone.
- **Replace only your own files.** A tool that replaces a folder as a whole writes :data:`FILES_RECORD` into it,
  listing every file it wrote. Before it replaces the folder again, :func:`foreign_files` lists anything else there
  (a user's notes, another tool's output) and the tool refuses, naming them, instead of deleting them.

Example::

    with output_lock(out_dir, "f2llm curate", DataError):
        check_replaceable(out_dir, DataError)           # refuses when out_dir holds files nobody recorded
        with atomic_folder(out_dir) as work:
            write_outputs(work)                          # atomic_folder writes the record before the swap
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

FILES_RECORD = ".f2llm-files.json"  # inside a folder a tool wrote as a whole: the files it wrote, relative paths


class OutputInUse(RuntimeError):
    """Another process writes this output folder (or left its lock behind on another host)."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    return folder.parent / f".{folder.name}.lock"


def _holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it ran elsewhere (cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _describe(holder: dict) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"
    return (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} ({str(holder.get('command', '?'))[:160]}, "
            f"started {when})")


@contextlib.contextmanager
def output_lock(folder: str | Path, what: str, error: type[Exception] = OutputInUse) -> Iterator[Path]:
    """Hold the lock of ``folder`` while the block writes it; raise ``error`` naming the holder if it is taken."""
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
            "command": " ".join(sys.argv)[:300], "started": time.time()}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            alive = _holder_alive(holder)
            if alive or (alive is None and holder):
                where = "" if alive else " (on another host: it cannot be checked from here)"
                raise error(f"{folder} is being written by {_describe(holder)}{where}: one writer per folder. Wait "
                            f"for it to finish, or choose another folder; if you know that run is gone, delete "
                            f"{path}") from None
            print(f"[lock] {folder}: taking over the lock left by {_describe(holder)}, which is no longer running "
                  "(what it was writing is a leftover)", file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as out:
            json.dump(mine, out)
        break
    else:
        raise error(f"{folder}: could not take the lock {path}; another process keeps taking it")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get("pid") == mine["pid"]:
                path.unlink()


def record_files(folder: str | Path) -> Path:
    """Write :data:`FILES_RECORD` into ``folder``: every file under it now, as relative paths."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != FILES_RECORD)
    record = folder / FILES_RECORD
    record.write_text(json.dumps({"files": files}))
    return record


def foreign_files(folder: str | Path) -> list[str]:
    """Files under an existing ``folder`` that no record lists: each file is checked against the record of the
    nearest folder above it that has one (a cache a tool wrote inside another tool's output has its own record)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    records: dict[Path, set[str]] = {}

    def written(owner: Path) -> set[str]:
        if owner not in records:
            try:
                records[owner] = set(json.loads((owner / FILES_RECORD).read_text())["files"])
            except (OSError, ValueError, KeyError, TypeError):
                records[owner] = set()
        return records[owner]

    foreign = []
    for path in sorted(folder.rglob("*")):
        if not (path.is_file() or path.is_symlink()) or path.name == FILES_RECORD:
            continue
        owner = next((p for p in path.parents if p == folder or (p / FILES_RECORD).is_file()), folder)
        if not owner.is_relative_to(folder):
            owner = folder
        if str(path.relative_to(owner)) not in written(owner):
            foreign.append(str(path.relative_to(folder)))
    return foreign


def check_replaceable(folder: str | Path, error: type[Exception] = FileExistsError, what: str = "this tool") -> None:
    """Refuse to replace ``folder`` when it holds files that the tool which wrote it did not record."""
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise error(f"{folder} holds files that {what} did not write ({shown}); it replaces its output as a whole, "
                    "so it would delete them. Move them out, or give a new or empty folder (nothing was written)")


def owned_by_a_tool(path: str | Path) -> Path | None:
    """The nearest folder at or above ``path`` that a tool wrote as a whole (and may replace), or None."""
    path = Path(path).absolute()
    return next((p for p in [path, *path.parents] if (p / FILES_RECORD).is_file()), None)
