"""Parsing and validating single files: the real sample's defects and hand-made bad files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from compute.schema import PRICE_COLUMNS
from compute.stages.ingest import parse
from compute.stages.ingest.parse import FileResult, RawFile, parse_batch
from tests.conftest import SAMPLE


@dataclass
class Parsed:
    table: pa.Table
    quarantine: pa.Table
    result: FileResult


def parse_file(data: bytes, member: str, symbol: str) -> Parsed:
    """One file through the ingest's own batch parser."""
    batch = parse_batch([RawFile(member, symbol, data)], names={})
    return Parsed(batch.table, batch.quarantine, batch.results[0])


HEADER = b"Date,Open,High,Low,Close,Adj Close,Volume\n"


def parse_sample(member: str):
    return parse_file((SAMPLE / member).read_bytes(), member, member.split("/")[1][:-4])


def rows(*lines: str) -> bytes:
    return HEADER + "".join(line + "\n" for line in lines).encode()


GOOD = [f"2020-01-{d:02d},1.5,2.0,1.0,1.75,1.25,{100 * d}" for d in range(1, 6)]


# --- defects of the real files --------------------------------------------------------------------


@pytest.mark.parametrize("member", ["stocks/BAC.csv", "etfs/DEED.csv", "etfs/EDOW.csv"])
def test_empty_price_rows_are_quarantined_with_their_lines(member: str) -> None:
    text = (SAMPLE / member).read_text().splitlines()
    empty = [(i + 1, line) for i, line in enumerate(text) if line.endswith(",,,,,,")]
    parsed = parse_sample(member)
    q = parsed.quarantine.to_pylist()
    assert empty and [(r["line"], r["raw"]) for r in q] == empty
    assert {r["reason"] for r in q} == {"empty_row"}
    assert parsed.result.rows_kept + len(empty) == parsed.result.rows_read == len(text) - 1


@pytest.mark.parametrize("member", ["stocks/ACC.csv", "stocks/BPMP.csv"])
def test_empty_row_repeating_a_full_date_keeps_the_full_row(member: str) -> None:
    parsed = parse_sample(member)
    assert parsed.result.quarantined == {"empty_row": 1}
    dates = parsed.table.column("Date").to_pylist()
    assert dates[-1] == "2021-01-27" and len(dates) == len(set(dates))
    assert parsed.table.column("Volume").to_pylist()[-1] > 0


def test_volume_beyond_int32_is_kept_exactly() -> None:
    parsed = parse_sample("stocks/AAPL.csv")
    volume = parsed.table.column("Volume")
    assert str(volume.type) == "int64"
    assert 7_421_640_800 in volume.to_pylist()


@pytest.mark.parametrize("member", ["etfs/DEEP.csv", "stocks/ASYS.csv", "stocks/AXDX.csv"])
def test_zero_prices_are_kept_and_counted(member: str) -> None:
    parsed = parse_sample(member)
    raw = pd.read_csv(SAMPLE / member).dropna()
    zeros = {c: int((raw[c] == 0).sum()) for c in PRICE_COLUMNS if (raw[c] == 0).any()}
    assert zeros and parsed.result.zero_prices == zeros
    assert parsed.result.rows_kept == len(raw)


def test_short_file_keeps_all_rows() -> None:
    parsed = parse_sample("stocks/BENEU.csv")
    assert parsed.result.rows_read < 30
    assert parsed.result.rows_kept == parsed.result.rows_read


def test_float32_prices_equal_the_source_text_on_every_sample_file() -> None:
    for path in sorted(SAMPLE.glob("*/*.csv")):
        member = f"{path.parent.name}/{path.name}"
        parsed = parse_sample(member)
        raw = pd.read_csv(path, dtype={"Date": str}).dropna().drop_duplicates("Date").sort_values("Date")
        for column in PRICE_COLUMNS:
            kept = parsed.table.column(column).to_numpy().astype(np.float64)
            np.testing.assert_array_equal(kept, raw[column].to_numpy(), err_msg=f"{member} {column}")
        np.testing.assert_array_equal(
            parsed.table.column("Volume").to_numpy(), raw["Volume"].astype(np.int64)
        )


# --- hand-made bad rows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("2020-02-01,1,2,1,2,x,100", "non_numeric"),
        ("2020-02-01,1,2,1,2,,100", "missing_value"),
        ("2020-02-01,,,,,,", "empty_row"),
        ("2020-13-01,1,2,1,2,2,100", "bad_date"),
        ("01/02/2020,1,2,1,2,2,100", "bad_date"),
        ("2020-02-01,1,2,1,2,inf,100", "non_finite"),
        ("2020-02-01,1,2,1,2,nan,100", "non_finite"),
        ("2020-02-01,1,2,1,2,-2,100", "negative_price"),
        ("2020-02-01,1,2,1,2,2,-100", "negative_volume"),
        ("2020-02-01,1,2,1,2,2,100.5", "fractional_volume"),
        ("2020-02-01,1,2,1,2,2,1e17", "volume_too_large"),
        ("2020-02-01,1,2,1,2", "malformed_row"),
        ("2020-02-01,1,2,1,2,2,100,7", "malformed_row"),
        ("", "blank_line"),
    ],
)
def test_bad_row_is_quarantined_with_reason_and_line(line: str, reason: str) -> None:
    data = rows(GOOD[0], GOOD[1], line, GOOD[2])
    parsed = parse_file(data, "stocks/T.csv", "T")
    assert parsed.quarantine.to_pylist() == [
        {"source_file": "stocks/T.csv", "line": 4, "reason": reason, "raw": line}
    ]
    assert parsed.table.column("Date").to_pylist() == ["2020-01-01", "2020-01-02", "2020-01-03"]
    assert parsed.result.rows_read == 4 and parsed.result.rows_kept == 3


def test_truncated_file_keeps_complete_rows() -> None:
    data = rows(*GOOD)[:-12]  # cut in the middle of the last line
    parsed = parse_file(data, "stocks/T.csv", "T")
    assert parsed.result.rows_kept == 4
    assert [r["reason"] for r in parsed.quarantine.to_pylist()] == ["malformed_row"]


def test_duplicate_date_keeps_the_first_line() -> None:
    dup = "2020-01-02,9,9,9,9,9,9"
    parsed = parse_file(rows(GOOD[0], GOOD[1], dup, GOOD[2]), "stocks/T.csv", "T")
    assert parsed.quarantine.column("reason").to_pylist() == ["duplicate_date"]
    assert parsed.quarantine.column("line").to_pylist() == [4]
    assert parsed.table.column("Volume").to_pylist() == [100, 200, 300]


def test_unsorted_rows_are_ordered_by_date() -> None:
    parsed = parse_file(rows(GOOD[3], GOOD[0], GOOD[2], GOOD[1]), "stocks/T.csv", "T")
    assert parsed.table.column("Date").to_pylist() == sorted(d.split(",")[0] for d in GOOD[:4])
    assert parsed.result.reordered


def test_crlf_line_endings_are_read() -> None:
    data = rows(*GOOD).replace(b"\n", b"\r\n")
    assert parse_file(data, "stocks/T.csv", "T").result.rows_kept == len(GOOD)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (b"\n\n", "empty file"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary content"),
        (b"Date,Open,High,Low,Close,Volume\n2020-01-01,1,1,1,1,1\n", "wrong header"),
        (b"date;open;high\n", "wrong header"),
        (HEADER.replace(b"Volume", b"Volume,Dividends") + b"2020-01-01,1,1,1,1,1,1,0\n", "wrong header"),
        (HEADER + b"2020-01-01,0.1,1,1,1,1,1\n", "not exactly representable as float32"),
        (HEADER + b"2020-01-01,1,1,1,1,1e39,1\n", "not exactly representable as float32"),
        (b"Date,Op", "wrong header"),
    ],
)
def test_unusable_file_is_rejected_with_a_reason(data: bytes, message: str) -> None:
    parsed = parse_file(data, "stocks/T.csv", "T")
    assert parsed.result.status == "failed" and message in (parsed.result.reason or ""), parsed.result
    assert parsed.table.num_rows == 0


# --- a batch of files read together ----------------------------------------------------------------

HAND_MADE = {
    "stocks/EMPTYROW.csv": rows(GOOD[0], "2020-02-01,,,,,,", GOOD[1]),
    "stocks/MIXED.csv": rows(
        GOOD[0], "2020-02-01,1,2,1,2,,100", "2020-13-01,1,2,1,2,2,100", "2020-02-02,1,2,1,2,-2,100"
    ),
    "stocks/NUMS.csv": rows(GOOD[1], "2020-02-01,1,2,1,2,2,100.5", "2020-02-03,1,2,1,2,2,1e17", GOOD[2])
    + b"2020-02-04,1,2,1,2,inf,100\n",
    "stocks/DUPS.csv": rows(GOOD[3], GOOD[0], "2020-01-04,9,9,9,9,9,9", GOOD[2], GOOD[1]),
    "stocks/BLANK.csv": rows(GOOD[0], "", GOOD[1], ""),
    "stocks/NOEOL.csv": rows(*GOOD)[:-1],
    "stocks/HEADONLY.csv": HEADER,
    "stocks/F32.csv": rows(GOOD[0], "2020-02-01,0.1,1,1,1,1,1"),
    "etfs/AAA.csv": rows(*GOOD),
}
NOT_PLAIN = {
    "stocks/TEXT.csv": rows(GOOD[0], "2020-02-01,1,2,1,2,x,100"),
    "stocks/CRLF.csv": rows(GOOD[0], GOOD[1]).replace(b"\n", b"\r\n"),
    "stocks/QUOTED.csv": rows(GOOD[0], '"2020-02-01",1,2,1,2,2,100'),
    "stocks/SHORT.csv": rows(GOOD[0], "2020-02-01,1,2,1,2", GOOD[1]),
    "stocks/BINARY.csv": b"\x89PNG\r\n\x1a\n\x00\x00",
}


def raw_files(extra: dict[str, bytes]) -> list[RawFile]:
    sample = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted(SAMPLE.glob("*/*.csv"))}
    return [RawFile(m, m.split("/")[1][:-4], data) for m, data in {**sample, **extra}.items()]


@pytest.mark.parametrize("extra", [HAND_MADE, {**HAND_MADE, **NOT_PLAIN}], ids=["plain", "mixed"])
def test_a_batch_gives_what_its_files_give_alone(extra: dict[str, bytes]) -> None:
    files = raw_files(extra)
    names = {f.symbol: f"{f.symbol} Inc." for f in files[::2]}
    if extra is HAND_MADE:  # every file here goes through the joint read
        assert parse._read_together(files, list(range(len(files)))) is not None
    batch = parse_batch(files, names)
    alone = [parse_batch([f], names) for f in files]
    assert batch.results == [a.results[0] for a in alone]
    assert batch.quarantine.equals(pa.concat_tables([a.quarantine for a in alone]))
    by_symbol = sorted(range(len(files)), key=lambda i: files[i].symbol)
    assert batch.table.equals(pa.concat_tables([alone[i].table for i in by_symbol]))
    failed = {r.file: r.reason for r in batch.results if r.status == "failed"}
    assert set(failed) == {"stocks/F32.csv"} | ({"stocks/BINARY.csv"} if extra is not HAND_MADE else set())
    assert failed["stocks/F32.csv"].startswith("Open value 0.1 on line 3 is not exactly")
    dups = next(r for r in batch.results if r.file == "stocks/DUPS.csv")
    assert dups.reordered and dups.quarantined == {"duplicate_date": 1} and dups.rows_kept == 4
