"""Read source records from local jsonl / csv / tsv / parquet files (with row numbers for errors) or the hub.

Every reader streams: a file is read a line (or a parquet batch) at a time, so reading holds one record whatever the
file's size. Each format is parsed as it is defined, never by splitting lines first: CSV through the ``csv`` module
(a quoted field may hold a newline), JSON lines on ``\n`` only (a JSON string may hold U+2028, which
``str.splitlines`` would break), a UTF-8 byte-order mark (Excel's "CSV UTF-8") skipped. TSV is read unquoted, as
BEIR and MTEB write it: a ``"`` is an ordinary character (a field with a tab or a newline needs CSV or JSON lines).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from .schema import DataError

FORMATS = ("jsonl", "csv", "tsv", "parquet")


def infer_format(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    fmt = {"json": "jsonl", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "parquet": "parquet"}.get(suffix)
    if fmt is None:
        raise DataError(f"{path}: cannot tell the format from the suffix '.{suffix}'; name it with 'format:' "
                        f"(one of {FORMATS})")
    return fmt


def read_local(path: Path, fmt: str | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, record)``; ``where`` is 'file:line' (or 'file:row') for error messages."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the recipe's source.path")
    fmt = fmt or infer_format(path)
    if fmt not in FORMATS:
        raise DataError(f"{path}: unknown format {fmt!r}; use one of {FORMATS}")
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0][:120]}); check the "
                            "file, or its suffix if it is another format") from exc
        index = 0
        for group in range(parquet.num_row_groups):
            # One reader per row group: a single iter_batches over the whole file keeps allocating as it goes (526 MB
            # of Arrow memory after 82k rows of 24 negatives, pyarrow 26), one per group stays at one group's buffers.
            for batch in parquet.iter_batches(batch_size=1024, row_groups=[group]):
                for record in batch.to_pylist():
                    yield f"{path}:row {index}", record
                    index += 1
        return
    if fmt == "jsonl":
        yield from _read_json_lines(path)
        return
    yield from _read_delimited(path, fmt)


def _decode(raw: bytes, path: Path, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-encode the file as "
                        "UTF-8 (e.g. iconv -f latin1 -t utf-8)") from exc


def _read_json_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """One line at a time: a binary file splits on ``\n`` only, so a U+2028 inside a JSON string stays in its line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _decode(raw, path, number)
            if number == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark is not part of the first record
            line = line.removesuffix("\n").removesuffix("\r")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON ({exc.msg}); each line must be one object") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield f"{path}:{number}", record


class _CheckedUtf8:
    """Lines of a file as text, decoded one physical line at a time so that an invalid byte is reported with its
    line (the csv module joins lines itself when a quoted field holds a newline)."""

    def __init__(self, path: Path, handle) -> None:
        self.path, self.handle, self.number = path, handle, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        text = _decode(raw, self.path, self.number)
        return text.removeprefix("\ufeff") if self.number == 1 else text


def _read_delimited(path: Path, fmt: str) -> Iterator[tuple[str, dict]]:
    with path.open("rb") as handle:
        lines = _CheckedUtf8(path, handle)
        if fmt == "tsv":
            reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.DictReader(lines)
        try:
            for record in reader:
                where = f"{path}:{reader.line_num}"
                if None in record:
                    raise DataError(f"{where}: more fields than the header has; check the delimiter or quoting")
                missing = [key for key, value in record.items() if value is None]
                if missing:
                    raise DataError(f"{where}: fewer fields than the header has (no {', '.join(missing)}); check the "
                                    "delimiter or quoting")
                yield where, record
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid {fmt.upper()} ({exc}); check the quoting") from exc


def read_hub(dataset_id: str, config: str | None, split: str,
             data_files: str | None = None) -> Iterator[tuple[str, dict]]:
    """Records of a hub dataset, streamed (needs network access; the offline default never calls this)."""
    from datasets import load_dataset

    data = load_dataset(dataset_id, config, split=split, data_files=data_files, streaming=True)
    for index, record in enumerate(data):
        yield f"{dataset_id}[{split}]:row {index}", record
