"""Stage 1's work: parse, validate and downcast symbol files; bad rows go to quarantine with a reason.

Row rules, first match wins (a row's line number is its 1-based line in the file):
  malformed_row      wrong number of fields (truncated or garbled line)
  blank_line         an empty line
  bad_date           Date is not a valid YYYY-MM-DD date
  empty_row          a date with every value empty (Yahoo's mid-day row)
  non_numeric        a value that is not a number
  missing_value      some, not all, values empty
  non_finite         NaN or infinity
  negative_price     a price below zero
  negative_volume    Volume below zero
  fractional_volume  Volume not a whole number
  volume_too_large   Volume above 2**53, where it can no longer be read exactly
  duplicate_date     a date already kept from an earlier line of the same file
Zero prices are kept (Yahoo writes 0.0 for an Open or Low it did not record; Volume and
Adj Close on those rows are sound) and counted in the report as warnings.
A whole file fails (listed in the report with its reason) when it is empty, binary, not UTF-8,
has the wrong header, or holds a price that float32 cannot represent exactly.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from compute.layout import part_name
from compute.schema import CSV_COLUMNS, PRICE_COLUMNS, QUARANTINE, STAGE1
from compute.stages.ingest.results import FileResult
from compute.stages.ingest.sources import Source, SourceFile
from compute.storage import join, write_parquet

VALUE_COLUMNS = CSV_COLUMNS[1:]
EXPECTED_HEADER = ",".join(CSV_COLUMNS)
MAX_EXACT_VOLUME = 2**53
DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
# Row rules in the order they are applied (see the module docstring); malformed_row is decided
# by the CSV reader, before these.
ROW_RULES = (
    "blank_line",
    "bad_date",
    "empty_row",
    "non_numeric",
    "missing_value",
    "non_finite",
    "negative_price",
    "negative_volume",
    "fractional_volume",
    "volume_too_large",
    "duplicate_date",
)


class FileRejected(Exception):
    """The whole file cannot be used; the message is the reason."""


class RawFile(NamedTuple):
    member: str
    symbol: str
    data: bytes


@dataclass
class ParsedBatch:
    table: pa.Table  # STAGE1 rows of every usable file, ordered by Symbol, then Date
    quarantine: pa.Table  # QUARANTINE rows, by file, then line
    results: list[FileResult]  # one per input file, in input order


@dataclass
class _Rows:
    """What the CSV reader made of some files of a batch: every column as numbers, plus where
    each row came from. Rows are in file order, then line order."""

    dates: pa.Array  # Date as text
    num: dict[str, np.ndarray]  # per value column: the number, NaN where there is none
    null: dict[str, np.ndarray]  # per value column: the cell is empty
    non_numeric: dict[str, np.ndarray]  # per value column: the cell is text that is not a number
    file: np.ndarray  # index of the row's file in the batch
    line: np.ndarray  # the row's 1-based line in its file
    invalid: list[tuple[int, int, str]]  # (file, line, text) of lines with the wrong field count

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(
            dates=pa.concat_arrays([p.dates for p in parts]),
            **{
                name: {c: np.concatenate([getattr(p, name)[c] for p in parts]) for c in VALUE_COLUMNS}
                for name in ("num", "null", "non_numeric")
            },
            file=np.concatenate([p.file for p in parts]),
            line=np.concatenate([p.line for p in parts]),
            invalid=[row for p in parts for row in p.invalid],
        )


def count_rows(data: bytes) -> int:
    """Data lines after the header, the way the CSV reader counts them."""
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return max(lines - 1, 0)


def parse_batch(files: list[RawFile], names: dict[str, str]) -> ParsedBatch:
    """Parse and validate a batch of files together; a file that cannot be used is reported failed.

    Files that are plain CSV (no quotes or CRs) are read in one CSV call, and the row rules run
    once over the whole batch: done file by file, the calls cost as much again as the parse. Any
    file that the joint read cannot take as it is (a malformed line, a value that is not a
    number, invalid UTF-8) sends the whole batch back to being read file by file; the same rules
    then apply to the same rows, so both ways give the same output."""
    results = [FileResult(file=f.member, symbol=f.symbol, has_metadata=f.symbol in names) for f in files]

    def fail(i: int, reason: str) -> None:
        results[i] = FileResult(
            file=files[i].member,
            symbol=files[i].symbol,
            status="failed",
            reason=reason,
            rows_read=count_rows(files[i].data),
        )

    usable = []
    for i, f in enumerate(files):
        try:
            _check_is_csv_text(f.data)
            usable.append(i)
        except FileRejected as exc:
            fail(i, str(exc))
    plain = [i for i in usable if _is_plain(files[i].data)]
    together = _read_together(files, plain) if plain else None
    parts = [together] if together else []
    for i in sorted(set(usable) - set(plain)) if together else usable:
        try:
            parts.append(_read_alone(files[i].data, i))
        except FileRejected as exc:
            fail(i, str(exc))
    rows = _Rows.concat(parts) if parts else None
    if rows is not None:
        malformed = np.array([i for i, _, _ in rows.invalid], dtype=np.int64)
        read = np.bincount(rows.file, minlength=len(files)) + np.bincount(malformed, minlength=len(files))
        for r, count in zip(results, read, strict=True):
            r.rows_read = r.rows_read if r.status == "failed" else int(count)
    return _split(rows, files, names, results, fail)


def _is_plain(data: bytes) -> bool:
    """A file whose newlines alone end its rows (what the joint read relies on): no quotes, no CRs.
    Blank lines are rows to the reader (all empty), in the joint read as in a file's own."""
    return b'"' not in data and b"\r" not in data


def _read_together(files: list[RawFile], members: list[int]) -> _Rows | None:
    """One CSV read over the files' data lines, or None if any of them needs reading on its own."""
    bodies = [memoryview(EXPECTED_HEADER.encode() + b"\n")]  # _read_csv skips a header line
    counts = np.zeros(len(members), dtype=np.int64)
    for k, i in enumerate(members):
        data = files[i].data
        start = data.find(b"\n") + 1 or len(data)  # after the header line
        if start < len(data):
            bodies.append(memoryview(data)[start:])
            if not data.endswith(b"\n"):
                bodies.append(memoryview(b"\n"))
            counts[k] = data.count(b"\n", start) + (0 if data.endswith(b"\n") else 1)
    invalid: list[tuple[int, str, int]] = []
    try:
        raw = _read_csv(b"".join(bodies), invalid, numbers_only=True)
    except FileRejected:
        return None
    if raw is None or invalid or raw.num_rows != counts.sum():
        return None
    file = np.repeat(np.array(members, dtype=np.int64), counts)
    line = np.arange(raw.num_rows, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts) + 2
    return _Rows(raw.column("Date").combine_chunks(), *_numbers(raw), file=file, line=line, invalid=[])


def _read_alone(data: bytes, index: int) -> _Rows:
    invalid: list[tuple[int, str, int]] = []
    raw = _read_csv(data, invalid)
    assert raw is not None
    rows_read = raw.num_rows + len(invalid)
    # Line numbers of the rows the reader kept: every line but the invalid ones, in order.
    bad_lines = np.array([line for line, _, _ in invalid], dtype=np.int64)
    all_lines = np.arange(2, 2 + rows_read, dtype=np.int64)
    line = all_lines[~np.isin(all_lines, bad_lines)] if invalid else all_lines
    return _Rows(
        raw.column("Date").combine_chunks(),
        *_numbers(raw),
        file=np.full(raw.num_rows, index, dtype=np.int64),
        line=line,
        invalid=[(index, number, text) for number, text, _ in invalid],
    )


def _split(
    rows: _Rows | None,
    files: list[RawFile],
    names: dict[str, str],
    results: list[FileResult],
    fail: Callable[[int, str], None],
) -> ParsedBatch:
    """Apply the row rules to every row of the batch at once; order and type the kept rows."""
    if rows is None:
        return ParsedBatch(STAGE1.empty_table(), QUARANTINE.empty_table(), results)
    reason, seconds = _row_reasons(rows)
    num = rows.num

    # Good rows by file (files in symbol order) and date; the sort is stable, so the first line
    # of a repeated date comes first and wins.
    good = np.flatnonzero(reason == 0)
    rank = np.argsort(np.argsort(np.array([f.symbol for f in files]), kind="stable"))
    order = good[np.lexsort((seconds[good], rank[rows.file[good]]))]
    same_file = rows.file[order][1:] == rows.file[order][:-1]
    dup = np.zeros(len(order), dtype=bool)
    dup[1:] = same_file & (seconds[order][1:] == seconds[order][:-1])
    for i in np.unique(rows.file[order][1:][same_file & (rows.line[order][1:] < rows.line[order][:-1])]):
        results[i].reordered = True
    reason[order[dup]] = ROW_RULES.index("duplicate_date") + 1
    keep = order[~dup]

    prices = _float32_prices(num, keep, rows, files, fail)
    usable = np.array([r.status != "failed" for r in results])
    kept = usable[rows.file[keep]]  # float32 refusals drop whole files
    keep, prices = keep[kept], {c: v[kept] for c, v in prices.items()}
    kept_file = rows.file[keep]
    table = pa.table(
        {
            "Symbol": pa.array([f.symbol for f in files], pa.string()).take(kept_file),
            "Security Name": pa.array([names.get(f.symbol) for f in files], pa.string()).take(kept_file),
            "Date": rows.dates.take(keep),
            **{c: pa.array(prices[c], pa.float32()) for c in PRICE_COLUMNS},
            "Volume": pa.array(num["Volume"][keep].astype(np.int64), pa.int64()),
        },
        schema=STAGE1,
    )
    for i, count in enumerate(np.bincount(kept_file, minlength=len(files))):
        if usable[i]:
            results[i].rows_kept = int(count)
    for c in PRICE_COLUMNS:
        zeros = np.bincount(kept_file[prices[c] == 0], minlength=len(files))
        for i in np.flatnonzero(zeros):
            results[i].zero_prices[c] = int(zeros[i])

    bad = np.flatnonzero((reason != 0) & usable[rows.file])
    quarantined: list[tuple[int, int, str, str | None]] = [
        (int(rows.file[j]), int(rows.line[j]), ROW_RULES[reason[j] - 1], None) for j in bad
    ]
    quarantined += [(i, line, "malformed_row", text) for i, line, text in rows.invalid if usable[i]]
    quarantined.sort(key=lambda row: row[:2])  # by file, then line
    for i, _, name, _ in quarantined:
        results[i].quarantined[name] = results[i].quarantined.get(name, 0) + 1
    for r in results:
        if r.status != "failed" and r.rows_kept + sum(r.quarantined.values()) != r.rows_read:
            raise AssertionError(f"{r.file}: rows do not add up")  # a bug, never bad input
    return ParsedBatch(table=table, quarantine=_quarantine_table(quarantined, files), results=results)


def _row_reasons(rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first broken rule (0: none, else 1 + its index in ROW_RULES), duplicate_date
    aside; and each row's date as seconds since 1970 (0 where it is not a valid date)."""
    num, null, non_numeric = rows.num, rows.null, rows.non_numeric
    any_non_numeric = np.logical_or.reduce([non_numeric[c] for c in VALUE_COLUMNS])
    all_null = np.logical_and.reduce([null[c] for c in VALUE_COLUMNS]) & ~any_non_numeric
    any_null = np.logical_or.reduce([null[c] & ~non_numeric[c] for c in VALUE_COLUMNS])
    blank = all_null & pc.equal(rows.dates, "").to_numpy(zero_copy_only=False)
    valid_date, seconds = _parse_dates(rows.dates)
    with np.errstate(invalid="ignore"):
        finite = np.logical_and.reduce([np.isfinite(num[c]) | null[c] for c in VALUE_COLUMNS])
        negative_price = np.logical_or.reduce([num[c] < 0 for c in PRICE_COLUMNS])
        volume = num["Volume"]
        negative_volume = volume < 0
        fractional = np.floor(volume) != volume
        too_large = volume > MAX_EXACT_VOLUME

    masks = {
        "blank_line": blank,
        "bad_date": ~valid_date,
        "empty_row": all_null,
        "non_numeric": any_non_numeric,
        "missing_value": any_null,
        "non_finite": ~finite,
        "negative_price": negative_price,
        "negative_volume": negative_volume,
        "fractional_volume": fractional,
        "volume_too_large": too_large,
    }
    reason = np.zeros(len(rows.file), dtype=np.int8)
    for code, rule in enumerate(ROW_RULES, start=1):
        if rule in masks:  # duplicate_date is decided among the good rows, once they are ordered
            reason[(reason == 0) & masks[rule]] = code
    return reason, seconds


def _check_is_csv_text(data: bytes) -> None:
    if not data or data.isspace():  # neither copies the file, unlike strip()
        raise FileRejected("empty file")
    if b"\x00" in data[:65536]:
        raise FileRejected("not a CSV text file (binary content)")
    end = data.find(b"\n")
    first = data[: end if end >= 0 else len(data)].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        header = first.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRejected("not a CSV text file (header is not UTF-8)") from None
    if header != EXPECTED_HEADER:
        shown = header if len(header) <= 80 else header[:77] + "..."
        raise FileRejected(f"wrong header {shown!r}, expected {EXPECTED_HEADER!r}")


def _read_csv(
    data: bytes, invalid: list[tuple[int, str, int]], numbers_only: bool = False
) -> pa.Table | None:
    """Typed read on the fast path; all-string read when some value is not a number (or None
    then, if numbers_only). The header line is skipped: the columns are always CSV_COLUMNS."""

    def on_invalid(row: pv.InvalidRow) -> str:
        invalid.append((row.number, row.text, row.actual_columns))
        return "skip"

    def read(types: dict[str, pa.DataType]) -> pa.Table:
        invalid.clear()
        return pv.read_csv(
            io.BytesIO(data),
            read_options=pv.ReadOptions(use_threads=False, skip_rows=1, column_names=list(CSV_COLUMNS)),
            parse_options=pv.ParseOptions(invalid_row_handler=on_invalid, ignore_empty_lines=False),
            convert_options=pv.ConvertOptions(
                column_types=types, null_values=[""], strings_can_be_null=False
            ),
        )

    try:
        try:
            return read({"Date": pa.string(), **{c: pa.float64() for c in VALUE_COLUMNS}})
        except pa.ArrowInvalid as exc:
            if "conversion error" not in str(exc).lower():
                raise
            return None if numbers_only else read({c: pa.string() for c in CSV_COLUMNS})
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0]
        if "UTF8" in message or "utf8" in message.lower():
            raise FileRejected("not a CSV text file (invalid UTF-8)") from None
        raise FileRejected(f"unreadable CSV: {message}") from None


def _numbers(raw: pa.Table) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per value column: float values (NaN where unusable), empty-cell mask, not-a-number mask."""
    num, null, non_numeric = {}, {}, {}
    for name in VALUE_COLUMNS:
        col = raw.column(name)
        if pa.types.is_string(col.type):  # the slow path, only for files with non-numeric text
            text = col.to_numpy(zero_copy_only=False)
            parsed = [_to_float(t) for t in text]
            null[name] = text == ""
            non_numeric[name] = np.array(
                [p is None and t != "" for p, t in zip(parsed, text, strict=True)], dtype=bool
            )
            num[name] = np.array([np.nan if p is None else p for p in parsed], dtype=np.float64)
        else:  # float64, NaN where empty
            values = col.combine_chunks()
            null[name] = pc.is_null(values).to_numpy(zero_copy_only=False)
            non_numeric[name] = np.zeros(raw.num_rows, dtype=bool)
            num[name] = values.to_numpy(zero_copy_only=False)
    return num, null, non_numeric


def _to_float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _parse_dates(dates: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Which dates are valid YYYY-MM-DD, and each valid one as seconds since 1970 (else 0)."""
    shaped = pc.match_substring_regex(dates, DATE_RE)
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    valid = pc.and_(shaped, pc.is_valid(parsed)).to_numpy(zero_copy_only=False)
    seconds = pc.fill_null(parsed.cast(pa.int64()), 0).to_numpy()
    return valid, seconds


def _float32_prices(
    num: dict[str, np.ndarray],
    keep: np.ndarray,
    rows: _Rows,
    files: list[RawFile],
    fail: Callable[[int, str], None],
) -> dict[str, np.ndarray]:
    """Kept prices as float32; a file holding a price float32 cannot represent exactly fails."""
    prices = {}
    for c in PRICE_COLUMNS:
        with np.errstate(over="ignore"):  # overflow to inf is caught by the comparison below
            prices[c] = num[c][keep].astype(np.float32)
    failed: set[int] = set()
    for c in PRICE_COLUMNS:
        inexact = np.flatnonzero(prices[c].astype(np.float64) != num[c][keep])
        for i in np.unique(rows.file[keep][inexact]):
            if int(i) in failed:
                continue
            mine = inexact[rows.file[keep][inexact] == i]
            first = keep[mine[0]]
            fail(
                int(i),
                f"{c} value {float(num[c][first])!r} on line {rows.line[first]} is not exactly "
                f"representable as float32 ({len(mine)} such values); refusing to round prices silently",
            )
            failed.add(int(i))
    return prices


def _quarantine_table(rows: list[tuple[int, int, str, str | None]], files: list[RawFile]) -> pa.Table:
    """(file, line, reason, text) rows, in order; a text of None is that line of the file."""
    lines_of: dict[int, list[bytes]] = {}
    raw = []
    for i, line, _, text in rows:
        if text is None:
            if i not in lines_of:  # split each file once, and only a file with bad rows
                lines_of[i] = files[i].data.split(b"\n")
            lines = lines_of[i]
            text = lines[line - 1].rstrip(b"\r").decode("utf-8", "replace")
        raw.append(text)
    return pa.table(
        {
            "source_file": pa.array([files[i].member for i, _, _, _ in rows], pa.string()),
            "line": pa.array([line for _, line, _, _ in rows], pa.int64()),
            "reason": pa.array([reason for _, _, reason, _ in rows], pa.string()),
            "raw": pa.array(raw, pa.string()),
        },
        schema=QUARANTINE,
    )


def ingest_batch(
    source: Source,
    files: list[SourceFile],
    names: dict[str, str],
    part: int,
    stage1_dir: str,
    quarantine_dir: str,
    max_file_bytes: int,
) -> list[FileResult]:
    """Parse a batch of files into one stage-1 part (and one quarantine part if any row is bad)."""
    readable: list[RawFile] = []
    unreadable: dict[int, FileResult] = {}
    with source.reader(max_file_bytes) as read:
        for i, f in enumerate(files):
            try:
                readable.append(RawFile(f.member, f.symbol, read(f.member)))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                unreadable[i] = FileResult(
                    file=f.member, symbol=f.symbol, status="failed", reason=f"cannot read: {exc}"
                )
    batch = parse_batch(readable, names)
    if batch.table.num_rows:  # sorted by (Symbol, Date), so stage 2 need not sort it
        write_parquet(batch.table, join(stage1_dir, part_name(part)))
    if batch.quarantine.num_rows:
        write_parquet(batch.quarantine, join(quarantine_dir, part_name(part)))
    parsed = iter(batch.results)
    return [unreadable[i] if i in unreadable else next(parsed) for i in range(len(files))]
