"""Finding and reading symbol files in a Kaggle-layout folder or zip, without trusting the input.

A source is listed once on the driver (names and sizes only); workers then open it themselves
and read just their own files, so no file contents travel through the driver.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pv

from compute import locations, storage
from compute.schema import META_FILE, META_NAME_COLUMN, META_SYMBOL_COLUMN

KINDS = ("stocks", "etfs")
# NASDAQ symbols: upper-case letters and digits, with '.', '-', '$' or '#' for share classes,
# units, preferreds and warrants (e.g. AGM-A, BRK.B, PBI$B).
SYMBOL_RE = re.compile(r"[A-Z0-9][A-Z0-9.\-$#]{0,15}")


class SourceError(ValueError):
    """The source as a whole cannot be used; the message says why in one line."""


@dataclass(frozen=True)
class SourceFile:
    member: str  # path inside the source, e.g. "stocks/AAPL.csv"
    symbol: str
    size: int


@dataclass
class Listing:
    files: list[SourceFile]
    # Files that look like symbol files but are refused before reading: (member, reason).
    rejected: list[tuple[str, str]] = field(default_factory=list)
    # Anything else in the source, reported but not read.
    ignored: list[str] = field(default_factory=list)
    meta_member: str | None = None


@dataclass(frozen=True)
class Source:
    location: str
    is_zip: bool

    @contextmanager
    def reader(self, max_bytes: int) -> Iterator[Callable[[str], bytes]]:
        """Yield a function that returns one member's bytes, refusing more than max_bytes."""
        if self.is_zip:
            with storage.open_input(self.location) as raw, zipfile.ZipFile(raw) as archive:

                def read_member(member: str) -> bytes:
                    with archive.open(member) as fh:
                        return _read_capped(fh, max_bytes)

                yield read_member
        else:
            fs, root = storage.resolve(self.location)

            def read_file(member: str) -> bytes:
                with fs.open_input_stream(f"{root.rstrip('/')}/{member}") as fh:
                    return _read_capped(fh, max_bytes)

            yield read_file

    def entries(self, listing: Listing) -> list[tuple[str, int, int]]:
        """(member, size, CRC for a zip or modification time for a folder) of every file read."""
        members = {f.member for f in listing.files} | (
            {listing.meta_member} if listing.meta_member else set()
        )
        if self.is_zip:
            with storage.open_input(self.location) as raw, zipfile.ZipFile(raw) as archive:
                return sorted((m, archive.getinfo(m).file_size, archive.getinfo(m).CRC) for m in members)
        return [e for e in storage.listing(self.location, recursive=True) if e[0] in members]


def _read_capped(fh: io.BufferedIOBase, max_bytes: int) -> bytes:
    # The size in a zip header can lie, so the cap is enforced on what is actually read.
    data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"file is larger than the {max_bytes:,}-byte limit")
    return data


def open_source(location: str | Path) -> Source:
    """Check that a location (a path or a pyarrow filesystem URI) is a usable source and say which kind."""
    try:
        where = locations.normalize(location)
        kind = storage.kind(where)
    except (ValueError, OSError) as exc:
        raise SourceError(f"cannot open source '{location}': {exc}") from exc
    if kind == "missing":
        raise SourceError(f"source '{location}' does not exist")
    if kind == "dir":
        if not any(storage.is_dir(storage.join(where, k)) for k in KINDS):
            raise SourceError(f"source folder '{location}' has neither stocks/ nor etfs/ inside")
        return Source(where, is_zip=False)
    try:
        with storage.open_input(where) as raw:
            is_zip = zipfile.is_zipfile(raw)
    except OSError as exc:
        raise SourceError(f"cannot read source '{location}': {exc}") from exc
    if not is_zip:
        raise SourceError(f"source '{location}' is neither a folder nor a readable zip archive")
    return Source(where, is_zip=True)


def list_files(source: Source, max_file_bytes: int) -> Listing:
    """Every symbol file in the source, plus what was refused or ignored and why."""
    if source.is_zip:
        try:
            with storage.open_input(source.location) as raw, zipfile.ZipFile(raw) as archive:
                entries = [(i.filename, i.file_size) for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(f"cannot read zip '{source.location}': {exc}") from exc
    elif storage.is_local(source.location):
        root = Path(source.location)  # symbolic links are not followed out of the source
        entries = [
            (p.relative_to(root).as_posix(), p.stat().st_size)
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()
        ]
    else:
        entries = [(name, size) for name, size, _ in storage.listing(source.location, recursive=True)]
    listing = _classify(entries, max_file_bytes)
    if not listing.files and not listing.rejected:
        raise SourceError(f"source '{source.location}' contains no stocks/*.csv or etfs/*.csv files")
    return listing


def _classify(entries: list[tuple[str, int]], max_file_bytes: int) -> Listing:
    listing = Listing(files=[])
    seen: dict[str, str] = {}
    for name, size in sorted(entries):
        parts = PurePosixPath(name).parts
        if _unsafe(name, parts):
            listing.rejected.append((name, "unsafe path (absolute or escaping with '..')"))
            continue
        # Accept the Kaggle layout at the root or under one top-level folder.
        if len(parts) in (1, 2) and parts[-1] == META_FILE:
            listing.meta_member = listing.meta_member or name
            continue
        if len(parts) not in (2, 3) or parts[-2] not in KINDS:
            listing.ignored.append(name)
            continue
        file_name = parts[-1]
        if not file_name.endswith(".csv"):
            listing.rejected.append((name, "not a .csv file"))
            continue
        symbol = file_name[: -len(".csv")]
        if not SYMBOL_RE.fullmatch(symbol):
            listing.rejected.append((name, f"file name '{symbol}' is not a valid ticker symbol"))
        elif symbol in seen:
            listing.rejected.append((name, f"duplicate symbol, already read from {seen[symbol]}"))
        elif size > max_file_bytes:
            listing.rejected.append((name, f"{size:,} bytes is over the {max_file_bytes:,}-byte limit"))
        else:
            seen[symbol] = name
            listing.files.append(SourceFile(member=name, symbol=symbol, size=size))
    return listing


def _unsafe(name: str, parts: tuple[str, ...]) -> bool:
    return name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in parts[0]


def read_security_names(
    source: Source, listing: Listing, max_bytes: int
) -> tuple[dict[str, str], str | None]:
    """Map NASDAQ Symbol -> Security Name; also return a warning if the metadata is unusable."""
    if listing.meta_member is None:
        return {}, f"no {META_FILE} in the source: every Security Name is null"
    try:
        with source.reader(max_bytes) as read:
            data = read(listing.meta_member)
        table = pv.read_csv(
            io.BytesIO(data),
            convert_options=pv.ConvertOptions(
                include_columns=[META_SYMBOL_COLUMN, META_NAME_COLUMN],
                column_types={META_SYMBOL_COLUMN: pa.string(), META_NAME_COLUMN: pa.string()},
            ),
        )
    except (pa.ArrowInvalid, ValueError, KeyError, OSError) as exc:
        return {}, f"cannot read {listing.meta_member}: {exc}; every Security Name is null"
    names: dict[str, str] = {}
    for symbol, name in zip(
        table[META_SYMBOL_COLUMN].to_pylist(), table[META_NAME_COLUMN].to_pylist(), strict=True
    ):
        if symbol is not None and name is not None:
            names.setdefault(symbol, name)
    return names, None
