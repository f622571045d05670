"""Finding files in folders and zips without trusting names, paths or sizes."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from compute.stages.ingest.sources import SourceError, list_files, open_source, read_security_names
from tests.conftest import SAMPLE

LIMIT = 64 << 20


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


def test_sample_folder_lists_every_file_with_metadata() -> None:
    source = open_source(SAMPLE)
    listing = list_files(source, LIMIT)
    assert len(listing.files) == 39 and not listing.rejected and not listing.ignored
    names, warning = read_security_names(source, listing, LIMIT)
    assert warning is None
    assert names["AAPL"] == "Apple Inc. - Common Stock"
    assert {f.symbol for f in listing.files} <= set(names)


def test_zip_member_paths_are_never_trusted(tmp_path: Path) -> None:
    good = (SAMPLE / "stocks/ATAC.csv").read_bytes()
    archive = make_zip(
        tmp_path / "evil.zip",
        {
            "stocks/ATAC.csv": good,
            "../stocks/EVIL.csv": good,
            "stocks/../../EVIL2.csv": good,
            "/etc/stocks/ABS.csv": good,
            "C:/stocks/WIN.csv": good,
            "stocks\\..\\BACK.csv": good,
            "stocks/lower case.csv": good,
            "stocks/NOTES.txt": b"hello",
            "README.md": b"hello",
        },
    )
    listing = list_files(open_source(archive), LIMIT)
    assert [f.member for f in listing.files] == ["stocks/ATAC.csv"]
    rejected = dict(listing.rejected)
    for name in ["../stocks/EVIL.csv", "stocks/../../EVIL2.csv", "/etc/stocks/ABS.csv", "C:/stocks/WIN.csv"]:
        assert rejected[name].startswith("unsafe path"), name
    assert rejected["stocks\\..\\BACK.csv"].startswith("unsafe path")
    assert "not a valid ticker symbol" in rejected["stocks/lower case.csv"]
    assert rejected["stocks/NOTES.txt"] == "not a .csv file"
    assert listing.ignored == ["README.md"]


def test_kaggle_zip_under_one_top_folder_is_accepted(tmp_path: Path) -> None:
    data = (SAMPLE / "stocks/ATAC.csv").read_bytes()
    meta = b"NASDAQ Symbol,Security Name\nATAC,Atac Corp\n"
    archive = make_zip(
        tmp_path / "k.zip", {"kaggle/stocks/ATAC.csv": data, "kaggle/symbols_valid_meta.csv": meta}
    )
    source = open_source(archive)
    listing = list_files(source, LIMIT)
    assert [f.symbol for f in listing.files] == ["ATAC"]
    assert read_security_names(source, listing, LIMIT)[0] == {"ATAC": "Atac Corp"}


def test_oversized_file_is_rejected_unread(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "big.zip", {"stocks/BIG.csv": b"x" * 2000})
    listing = list_files(open_source(archive), max_file_bytes=1000)
    assert listing.files == [] and "over the 1,000-byte limit" in dict(listing.rejected)["stocks/BIG.csv"]


def test_symbols_with_class_and_unit_marks_are_valid(tmp_path: Path) -> None:
    (tmp_path / "stocks").mkdir()
    for name in ["AGM-A.csv", "BRK.B.csv", "PBI$B.csv", "ZB#.csv", "ABC.csv.bak"]:
        (tmp_path / "stocks" / name).write_text("x")
    listing = list_files(open_source(tmp_path), LIMIT)
    assert [f.symbol for f in listing.files] == ["AGM-A", "BRK.B", "PBI$B", "ZB#"]
    assert dict(listing.rejected)["stocks/ABC.csv.bak"] == "not a .csv file"


def test_same_symbol_in_stocks_and_etfs_is_read_once(tmp_path: Path) -> None:
    for kind in ("etfs", "stocks"):
        (tmp_path / kind).mkdir()
        (tmp_path / kind / "DUP.csv").write_text("x")
    listing = list_files(open_source(tmp_path), LIMIT)
    assert [f.member for f in listing.files] == ["etfs/DUP.csv"]
    assert "duplicate symbol" in dict(listing.rejected)["stocks/DUP.csv"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "neither stocks/ nor etfs/"),
        (lambda p: (p / "f.csv").write_text("a,b") and p / "f.csv", "neither a folder nor a readable zip"),
        (lambda p: make_zip(p / "empty.zip", {}), "contains no stocks/"),
        (
            lambda p: (p / "bad.zip").write_bytes(b"PK\x03\x04garbage") and p / "bad.zip",
            "neither a folder nor",
        ),
    ],
)
def test_unusable_source_fails_with_one_clear_line(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(SourceError, match=message) as info:
        list_files(open_source(make(tmp_path)), LIMIT)
    assert "\n" not in str(info.value)
