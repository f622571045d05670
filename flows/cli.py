"""`stockpipe`: run the pipeline or one stage of it from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compute.layout import Layout
from compute.settings import SAMPLE_SOURCE, get_settings
from compute.sources import SourceError, list_files, open_source


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockpipe",
        description="Daily US stock and ETF prices: ingest -> features, orchestrated by Prefect on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, *, source: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if source:
            sub.add_argument(
                "--source",
                default=str(SAMPLE_SOURCE),
                metavar="PATH_OR_ZIP",
                help="Kaggle-layout folder (stocks/, etfs/, symbols_valid_meta.csv) or the Kaggle zip "
                "(default: the embedded 39-file sample)",
            )
        sub.add_argument(
            "--out", default="output", metavar="DIR", help="output directory (default: ./output)"
        )
        sub.add_argument(
            "--ray-address",
            default=None,
            metavar="ADDRESS",
            help="existing Ray cluster to run on (default: $RAY_ADDRESS, else start a local Ray)",
        )
        return sub

    add("run", "Run the whole pipeline: ingest, then features.")
    add("ingest", "Stage 1: read every symbol file into <out>/stage1/, bad rows into <out>/quarantine/.")
    add("features", "Stage 2: rolling features from <out>/stage1/ into <out>/stage2/.", source=False)
    return parser


def _fail(message: str) -> int:
    print(f"stockpipe: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"--out '{out}' exists and is not a directory")
    if hasattr(args, "source"):
        try:
            list_files(open_source(args.source), get_settings().max_file_bytes)
        except SourceError as exc:
            return _fail(str(exc))
    elif not Layout(out).stage1.is_dir():
        return _fail(f"no stage 1 output in '{out}': run `stockpipe ingest --out {out}` first")

    # Prefect's analytics would try to reach the internet; import it only once arguments are valid.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows import pipeline

    if args.command == "run":
        result = pipeline.stock_pipeline(source=args.source, out=str(out), ray_address=args.ray_address)
    elif args.command == "ingest":
        result = {
            "ingest": pipeline.ingest_flow(source=args.source, out=str(out), ray_address=args.ray_address)
        }
    else:
        result = {"features": pipeline.features_flow(out=str(out), ray_address=args.ray_address)}
    _print_outputs(Layout(out), result)
    return 0


def _print_outputs(layout: Layout, result: dict) -> None:
    if "ingest" in result:
        files, rows = result["ingest"]["files"], result["ingest"]["rows"]
        print(
            f"ingest: {files['ingested']}/{files['seen']} files, {rows['kept']:,} rows kept, "
            f"{rows['quarantined']:,} quarantined, {files['failed']} files failed"
        )
        print(f"  stage 1:    {layout.stage1}/")
        print(f"  quarantine: {layout.quarantine}/")
        print(f"  report:     {layout.ingest_report}")
    if "features" in result:
        f = result["features"]
        print(
            f"features: {f['rows']:,} rows, {f['symbols']} symbols, {f['rows_with_features']:,} with features"
        )
        print(f"  stage 2:    {layout.stage2}/")


if __name__ == "__main__":
    sys.exit(main())
