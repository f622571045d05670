"""`stockpipe`: run the pipeline or one stage of it from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from compute import download, storage
from compute.download import DEFAULT_DATASET, DownloadError
from compute.layout import Layout
from compute.settings import PROJECT_ROOT, SAMPLE_SOURCE, get_settings
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
                help="Kaggle-layout folder (stocks/, etfs/, symbols_valid_meta.csv), the Kaggle zip, or "
                "kaggle:OWNER/DATASET to download it first (default: the embedded 39-file sample)",
            )
        sub.add_argument(
            "--out",
            default=None,
            metavar="DIR",
            help="output directory (default: $STOCKPIPE_OUT or ./output)",
        )
        sub.add_argument(
            "--force",
            action="store_true",
            help="rebuild every stage, even those whose inputs, code and settings are unchanged",
        )
        sub.add_argument(
            "--ray-address",
            default=None,
            metavar="ADDRESS",
            help="existing Ray cluster to run on (default: $RAY_ADDRESS, else start a local Ray)",
        )
        return sub

    def add_training(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--device",
            choices=["auto", "cpu", "cuda"],
            default=None,
            help="where XGBoost trains (default auto: CUDA if the Ray cluster has a GPU, else CPU)",
        )
        sub.add_argument("--rounds", type=_positive_int, default=None, help="boosting rounds (default 40)")

    run = add("run", "Run the whole pipeline: ingest, features, train, then build the Bento.")
    add_training(run)
    run.add_argument(
        "--stop-after",
        choices=["features", "train", "package"],
        default="package",
        help="last stage to run (default: package, i.e. everything)",
    )
    add("ingest", "Stage 1: read every symbol file into <out>/stage1/, bad rows into <out>/quarantine/.")
    add("features", "Stage 2: rolling features from <out>/stage1/ into <out>/stage2/.", source=False)
    add_training(
        add("train", "Stage 3: train XGBoost on Ray from <out>/stage2/ into <out>/model/.", source=False)
    )
    fetch = commands.add_parser(
        "download",
        help="Download the Kaggle dataset zip (skipped when a verified copy is there) and verify it.",
        description="Download the Kaggle dataset zip with the kaggle package and verify it (a readable "
        "zip in the Kaggle layout; size and SHA-256 written next to it). Credentials: KAGGLE_USERNAME "
        "and KAGGLE_KEY, or ~/.kaggle/kaggle.json. Offline? Give the other commands --source with a "
        "folder or zip instead.",
    )
    fetch.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"OWNER/DATASET (default {DEFAULT_DATASET})"
    )
    fetch.add_argument(
        "--dest", default=None, metavar="DIR", help="where to keep the zip (default ./data/downloads)"
    )
    fetch.add_argument("--force", action="store_true", help="download again even if a verified copy is there")
    serve_help = (
        "Serve the model trained into <out>/model/ with BentoML: GET/POST /predict, POST /predict_batch."
    )
    serve = commands.add_parser("serve", help=serve_help, description=serve_help)
    serve.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: $STOCKPIPE_OUT or ./output)"
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=_port, default=None, help="port (default 3000)")
    image_help = (
        "Build an OCI image of the Bento for the model in <out>/model/ with buildah (no Docker needed; "
        "the base image is made locally from Debian packages). With Docker, `bentoml containerize` "
        "is the usual way."
    )
    containerize = commands.add_parser("containerize", help=image_help, description=image_help)
    containerize.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default: $STOCKPIPE_OUT or ./output)"
    )
    containerize.add_argument(
        "--image", default=None, help="image name (default localhost/stockpipe:<Bento version>)"
    )
    return parser


def _port(text: str) -> int:
    port = _positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _fail(message: str) -> int:
    print(f"stockpipe: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "download":
        return _download(args.dataset, args.dest, args.force)
    try:
        out = storage.normalize(args.out or get_settings().out)
        out_kind = storage.kind(out)
    except (ValueError, OSError) as exc:
        return _fail(f"cannot use --out '{args.out}': {exc}")
    if out_kind == "file":
        return _fail(f"--out '{out}' exists and is not a directory")
    if hasattr(args, "source"):
        try:
            _check_source(args.source)
        except (SourceError, DownloadError) as exc:
            return _fail(str(exc))
    elif args.command == "features" and not storage.is_dir(Layout(out).stage1):
        return _fail(f"no stage 1 output in '{out}': run `stockpipe ingest --out {out}` first")
    elif args.command == "train" and not storage.is_dir(Layout(out).stage2):
        return _fail(f"no stage 2 output in '{out}': run `stockpipe features --out {out}` first")
    elif args.command in ("serve", "containerize") and not storage.is_file(Layout(out).model_file):
        return _fail(f"no trained model in '{Layout(out).model}': run `stockpipe train --out {out}` first")
    elif args.command == "serve":
        return _serve(Layout(out), args.host, args.port)
    elif args.command == "containerize":
        return _containerize(Layout(out), args.image)

    # Prefect's analytics would try to reach the internet; import it only once arguments are valid.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows import pipeline, startup

    settings = get_settings(ray_address=args.ray_address, force=args.force or None)
    if startup.first_stage_has_work(args.command, Layout(out), settings.force):
        try:
            startup.start_prefect_and_ray(settings)
        except ConnectionError as exc:
            return _fail(f"cannot reach the Ray cluster at {settings.ray_address}: {exc}")
    common = {"out": out, "ray_address": args.ray_address, "force": args.force}
    try:
        result = _run_flow(pipeline, args, common)
    except DownloadError as exc:  # e.g. the network went away between the check and the download
        return _fail(str(exc))
    _print_outputs(Layout(out), result)
    return 0


def _run_flow(pipeline: ModuleType, args: argparse.Namespace, common: dict[str, Any]) -> dict[str, Any]:
    training = {"train_device": args.device, "train_rounds": args.rounds} if hasattr(args, "device") else {}
    if args.command == "run":
        result = pipeline.stock_pipeline(source=args.source, stop_after=args.stop_after, **common, **training)
    elif args.command == "ingest":
        result = {"ingest": pipeline.ingest_flow(source=args.source, **common)}
    elif args.command == "features":
        result = {"features": pipeline.features_flow(**common)}
    else:
        result = {"train": pipeline.train_flow(**common, **training)}
    return result


def _check_source(source: str) -> None:
    """Refuse a bad source before anything starts; for kaggle: sources, check access if needed."""
    settings = get_settings()
    dataset = download.kaggle_dataset(source)
    if dataset is None:
        list_files(open_source(source), settings.max_file_bytes)
    elif not download.is_verified(download.zip_path(dataset, settings.download_dir)):
        download.check_access()


def _download(dataset: str, dest: str | None, force: bool) -> int:
    settings = get_settings(download_dir=dest)
    try:
        download.kaggle_dataset(f"{download.KAGGLE_PREFIX}{dataset}")
        path, fetched = download.fetch(dataset, settings.download_dir, settings.max_file_bytes, force=force)
    except DownloadError as exc:
        return _fail(str(exc))
    info = json.loads(path.with_name(path.name + ".json").read_text())
    state = "downloaded and verified" if fetched else "already there and verified; not downloaded again"
    print(f"{path}: {state}")
    print(f"  {info['bytes']:,} bytes, sha256 {info['sha256']}, {info['symbol_files']:,} symbol files")
    print(f"  use it: stockpipe run --source {path}")
    return 0


def _serve(layout: Layout, host: str | None, port: int | None) -> int:
    """Register <out>/model in the BentoML model store, then become `bentoml serve` for it."""
    from bento.package import register_model

    settings = get_settings(serve_host=host, serve_port=port)
    os.environ["STOCKPIPE_MODEL_TAG"] = register_model(layout.model)
    print(
        f"serving {os.environ['STOCKPIPE_MODEL_TAG']} on http://{settings.serve_host}:{settings.serve_port}",
        flush=True,
    )
    command = [sys.executable, "-m", "bentoml", "serve", "bento.service:VolumeService"]
    command += [
        "--host",
        settings.serve_host,
        "--port",
        str(settings.serve_port),
        "--working-dir",
        str(PROJECT_ROOT),
    ]
    os.execv(sys.executable, command)  # replaces this process, so signals reach the server directly


def _containerize(layout: Layout, name: str | None) -> int:
    """Register the model, build (or reuse) its Bento, and build the image with buildah."""
    from bento import image, package

    try:
        image.require_tools()  # before building a Bento that could not be containerized
        bento = package.build_bento(package.register_model(layout.model))
        built = image.containerize(bento, name)
    except image.ImageError as exc:
        return _fail(f"cannot build an image here: {exc}")
    print(f"image {built} (Bento {bento}) is in buildah's local storage")
    print(
        f"  run it here:  buildah run --network host $(buildah from {built}) -- "
        "/home/bentoml/bento/env/docker/entrypoint.sh --port 3000"
    )
    print(f"  export it:    buildah push {built} docker-archive:stockpipe.tar  (then `docker load -i`)")
    print(f"  with Docker:  docker run -p 3000:3000 {built} --host 0.0.0.0")
    return 0


def _print_outputs(layout: Layout, result: dict) -> None:
    reused = [stage for stage, r in result.items() if isinstance(r, dict) and r.get("reused")]
    if reused:
        print(f"unchanged since the last run, reused: {', '.join(reused)} (--force rebuilds)")
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
    if "train" in result:
        split = result["train"]["time_split"]
        model, base = split["model"], split["baseline"]
        print(
            f"train: time holdout from {split['cutoff']}: MAE {model['mae']:,.0f} vs baseline "
            f"{base['mae']:,.0f} ({split['mae_improvement_pct']:+.1f}%), "
            f"R² {model['r2']:.3f} vs {base['r2']:.3f}"
        )
        print(f"  model:      {layout.model}/ (model.bin, model.json, metrics.json)")
        print(f"  log:        {storage.join(layout.logs, 'training.log')}")
        print(f"  plots:      {layout.reports}/learning_curve.png, predicted_vs_actual.png")
    if "package" in result:
        bento = result["package"]["bento"]
        print(f"package: model {result['package']['model']} in the BentoML model store, Bento {bento}")
        print(f"  serve this run's model: {sys.argv[0]} serve --out {layout.root}")
        print(f"  serve the built Bento:  {Path(sys.argv[0]).parent / 'bentoml'} serve {bento}")


if __name__ == "__main__":
    sys.exit(main())
