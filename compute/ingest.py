"""Stage 1: parse, validate and downcast symbol files; bad rows go to quarantine with a reason.

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
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from compute.layout import part_name
from compute.schema import CSV_COLUMNS, PRICE_COLUMNS, QUARANTINE, STAGE1
from compute.sources import Source, SourceFile
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


@dataclass
class FileResult:
    file: str
    symbol: str
    status: str = "ingested"  # or "failed"
    reason: str | None = None
    rows_read: int = 0
    rows_kept: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    zero_prices: dict[str, int] = field(default_factory=dict)
    reordered: bool = False  # rows were not in date order in the source
    has_metadata: bool = True


@dataclass
class ParsedFile:
    table: pa.Table  # Date, prices (float32), Volume (int64); date-ordered, unique dates
    quarantine: pa.Table  # QUARANTINE schema
    result: FileResult


def count_rows(data: bytes) -> int:
    """Data lines after the header, the way the CSV reader counts them."""
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    return max(lines - 1, 0)


def parse_file(data: bytes, member: str, symbol: str) -> ParsedFile:
    """Split one file's rows into kept (typed, date-ordered) and quarantined; raise FileRejected."""
    result = FileResult(file=member, symbol=symbol)
    _check_is_csv_text(data)
    invalid: list[tuple[int, str, int]] = []
    raw = _read_csv(data, invalid)
    n = raw.num_rows
    result.rows_read = n + len(invalid)  # the reader's own count, which the report must match

    # Line numbers of the rows the reader kept: every line but the invalid ones, in order.
    bad_lines = np.array([line for line, _, _ in invalid], dtype=np.int64)
    all_lines = np.arange(2, 2 + result.rows_read, dtype=np.int64)
    row_lines = all_lines[~np.isin(all_lines, bad_lines)] if len(invalid) else all_lines

    dates = raw.column("Date").combine_chunks()  # kept in Arrow: no Python string per row
    num, null, non_numeric = _numbers(raw)

    any_non_numeric = np.logical_or.reduce([non_numeric[c] for c in VALUE_COLUMNS])
    all_null = np.logical_and.reduce([null[c] for c in VALUE_COLUMNS]) & ~any_non_numeric
    any_null = np.logical_or.reduce([null[c] & ~non_numeric[c] for c in VALUE_COLUMNS])
    blank = all_null & pc.equal(dates, "").to_numpy(zero_copy_only=False)
    valid_date = _valid_dates(dates)
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
    reason = np.zeros(n, dtype=np.int8)  # 0 = good, else 1 + index into ROW_RULES
    for code, rule in enumerate(ROW_RULES, start=1):
        if rule in masks:  # duplicate_date is decided below, among the good rows
            reason[(reason == 0) & masks[rule]] = code

    # Order the good rows by date (a stable sort, so the first line of a repeated date wins).
    good = np.flatnonzero(reason == 0)
    good_dates = dates.take(pa.array(good))
    order = good[pc.array_sort_indices(good_dates).to_numpy()]
    result.reordered = bool(len(order)) and not np.array_equal(order, good)
    sorted_dates = dates.take(pa.array(order))
    dup = np.zeros(len(order), dtype=bool)
    if len(order) > 1:
        dup[1:] = pc.equal(sorted_dates[1:], sorted_dates[:-1]).to_numpy(zero_copy_only=False)
    reason[order[dup]] = ROW_RULES.index("duplicate_date") + 1
    keep = order[~dup]

    prices = {c: _exact_float32(num[c][keep], c, row_lines[keep]) for c in PRICE_COLUMNS}
    table = pa.table(
        {
            "Date": dates.take(pa.array(keep)),
            **{c: pa.array(prices[c], pa.float32()) for c in PRICE_COLUMNS},
            "Volume": pa.array(volume[keep].astype(np.int64), pa.int64()),
        }
    )
    result.rows_kept = table.num_rows
    result.zero_prices = {c: int(n_zero) for c in PRICE_COLUMNS if (n_zero := (prices[c] == 0).sum())}

    bad = np.flatnonzero(reason != 0)
    names = [ROW_RULES[code - 1] for code in reason[bad]]
    quarantine = _quarantine_table(member, data, row_lines[bad], names, invalid)
    counts: dict[str, int] = {}
    for r in quarantine.column("reason").to_pylist():
        counts[r] = counts.get(r, 0) + 1
    result.quarantined = counts
    if result.rows_kept + quarantine.num_rows != result.rows_read:
        raise AssertionError(f"{member}: rows do not add up")  # a bug, never bad input
    return ParsedFile(table=table, quarantine=quarantine, result=result)


def _check_is_csv_text(data: bytes) -> None:
    if not data.strip():
        raise FileRejected("empty file")
    if b"\x00" in data[:65536]:
        raise FileRejected("not a CSV text file (binary content)")
    first = data.split(b"\n", 1)[0].removeprefix(b"\xef\xbb\xbf").rstrip(b"\r")
    try:
        header = first.decode("utf-8")
    except UnicodeDecodeError:
        raise FileRejected("not a CSV text file (header is not UTF-8)") from None
    if header != EXPECTED_HEADER:
        shown = header if len(header) <= 80 else header[:77] + "..."
        raise FileRejected(f"wrong header {shown!r}, expected {EXPECTED_HEADER!r}")


def _read_csv(data: bytes, invalid: list[tuple[int, str, int]]) -> pa.Table:
    """Typed read on the fast path; all-string read when some value is not a number."""

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
            return read({c: pa.string() for c in CSV_COLUMNS})
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
        else:
            null[name] = pc.is_null(col).to_numpy(zero_copy_only=False)
            non_numeric[name] = np.zeros(raw.num_rows, dtype=bool)
            num[name] = col.to_numpy(zero_copy_only=False).astype(np.float64)
    return num, null, non_numeric


def _to_float(text: str) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _valid_dates(dates: pa.Array) -> np.ndarray:
    shaped = pc.match_substring_regex(dates, DATE_RE)
    parsed = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    return pc.and_(shaped, pc.is_valid(parsed)).to_numpy(zero_copy_only=False)


def _exact_float32(values: np.ndarray, column: str, lines: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow to inf is caught by the comparison below
        as32 = values.astype(np.float32)
    inexact = np.flatnonzero(as32.astype(np.float64) != values)
    if len(inexact):
        i = inexact[0]
        raise FileRejected(
            f"{column} value {values[i]!r} on line {lines[i]} is not exactly representable as "
            f"float32 ({len(inexact)} such values); refusing to round prices silently"
        )
    return as32


def _quarantine_table(
    member: str,
    data: bytes,
    lines: np.ndarray,
    reasons: list[str],
    invalid: list[tuple[int, str, int]],
) -> pa.Table:
    rows_line = [int(x) for x in lines]
    raw_text: list[str] = []
    if rows_line:
        text_lines = data.split(b"\n")
        raw_text = [text_lines[i - 1].rstrip(b"\r").decode("utf-8", "replace") for i in rows_line]
    for line, text, _ in invalid:
        rows_line.append(line)
        reasons.append("malformed_row")
        raw_text.append(text)
    order = np.argsort(rows_line, kind="stable")
    return pa.table(
        {
            "source_file": pa.array([member] * len(rows_line), pa.string()),
            "line": pa.array([rows_line[i] for i in order], pa.int64()),
            "reason": pa.array([reasons[i] for i in order], pa.string()),
            "raw": pa.array([raw_text[i] for i in order], pa.string()),
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
    tables: list[pa.Table] = []
    bad: list[pa.Table] = []
    results: list[FileResult] = []
    with source.reader(max_file_bytes) as read:
        for f in files:
            try:
                data = read(f.member)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                results.append(_failed(f, f"cannot read: {exc}", rows_read=0))
                continue
            try:
                parsed = parse_file(data, f.member, f.symbol)
            except FileRejected as exc:
                results.append(_failed(f, str(exc), rows_read=count_rows(data)))
                continue
            parsed.result.has_metadata = f.symbol in names
            results.append(parsed.result)
            if parsed.quarantine.num_rows:
                bad.append(parsed.quarantine)
            if parsed.table.num_rows:
                tables.append(_with_identity(parsed.table, f.symbol, names.get(f.symbol)))
    if tables:
        write_parquet(pa.concat_tables(tables), join(stage1_dir, part_name(part)))
    if bad:
        write_parquet(pa.concat_tables(bad), join(quarantine_dir, part_name(part)))
    return results


def _failed(f: SourceFile, reason: str, rows_read: int) -> FileResult:
    return FileResult(file=f.member, symbol=f.symbol, status="failed", reason=reason, rows_read=rows_read)


def _with_identity(table: pa.Table, symbol: str, name: str | None) -> pa.Table:
    n = table.num_rows
    columns = {
        "Symbol": pa.repeat(pa.scalar(symbol, pa.string()), n),
        "Security Name": pa.repeat(pa.scalar(name, pa.string()), n),
        **{c: table.column(c) for c in table.column_names},
    }
    return pa.table(columns, schema=STAGE1)
