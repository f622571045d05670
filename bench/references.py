"""Reference implementations of ingest + features for bench/etl.py, each run as its own process so
its wall time and peak memory are its own. Same input folder, same outputs (stage 1 and stage 2
Parquet), none of stockpipe's validation or quarantine.

    python -m bench.references {floor,pandas,polars} --source FOLDER --out DIR
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WINDOW = 30


def csv_files(source: Path) -> list[Path]:
    return sorted([*source.glob("stocks/*.csv"), *source.glob("etfs/*.csv")])


def floor(source: Path, out: Path) -> None:
    """pyarrow parsing every file, nothing else: the least any ETL over these files can cost."""
    import pyarrow.csv as pv

    def parse(path: Path) -> int:
        return pv.read_csv(path, read_options=pv.ReadOptions(use_threads=False)).num_rows

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        rows = sum(pool.map(parse, csv_files(source)))
    print(f"rows {rows}")


def pandas_seed(source: Path, out: Path) -> None:
    """The seed's way: thread-pool reads, one concat, one groupby().rolling()."""
    import pandas as pd

    def read(path: Path) -> pd.DataFrame:
        frame = pd.read_csv(path, dtype={"Date": str})
        frame.insert(0, "Symbol", path.stem)
        return frame

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        frames = list(pool.map(read, csv_files(source)))
    meta = pd.read_csv(source / "symbols_valid_meta.csv", usecols=["NASDAQ Symbol", "Security Name"])
    data = pd.concat(frames, ignore_index=True).dropna()
    data = data.merge(meta.rename(columns={"NASDAQ Symbol": "Symbol"}), on="Symbol", how="left")
    data["Volume"] = data["Volume"].astype("int64")
    data = data.sort_values(["Symbol", "Date"], ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    data.to_parquet(out / "stage1.parquet", index=False)
    grouped = data.groupby("Symbol", sort=False)
    data["vol_moving_avg"] = grouped["Volume"].rolling(WINDOW).mean().reset_index(level=0, drop=True)
    data["adj_close_rolling_med"] = (
        grouped["Adj Close"].rolling(WINDOW).median().reset_index(level=0, drop=True)
    )
    data.to_parquet(out / "stage2.parquet", index=False)
    print(f"rows {len(data)}")


def polars_lazy(source: Path, out: Path) -> None:
    """One Polars lazy query over every file."""
    import polars as pl

    files = [str(p) for p in csv_files(source)]
    meta = pl.scan_csv(source / "symbols_valid_meta.csv").select(
        pl.col("NASDAQ Symbol").alias("Symbol"), pl.col("Security Name")
    )
    frame = (
        pl.scan_csv(
            files, include_file_paths="path", schema_overrides={"Volume": pl.Float64, "Date": pl.String}
        )
        .drop_nulls()
        .with_columns(
            pl.col("path").str.extract(r"([^/]+)\.csv$").alias("Symbol"), pl.col("Volume").cast(pl.Int64)
        )
        .drop("path")
        .join(meta, on="Symbol", how="left")
        .sort("Symbol", "Date")
    )
    out.mkdir(parents=True, exist_ok=True)
    stage1 = frame.collect()
    stage1.write_parquet(out / "stage1.parquet")
    stage2 = stage1.lazy().with_columns(
        pl.col("Volume").rolling_mean(WINDOW).over("Symbol").alias("vol_moving_avg"),
        pl.col("Adj Close").rolling_median(WINDOW).over("Symbol").alias("adj_close_rolling_med"),
    )
    stage2.sink_parquet(out / "stage2.parquet")
    print(f"rows {stage1.height}")


IMPLEMENTATIONS = {"floor": floor, "pandas": pandas_seed, "polars": polars_lazy}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(IMPLEMENTATIONS))
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    IMPLEMENTATIONS[args.name](args.source, args.out)
