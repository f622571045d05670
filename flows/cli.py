"""`stockpipe`: run the pipeline or one stage of it from the command line.

Every command is one row of COMMANDS: its options, the published output it needs, and what it
runs, either an action of this module or a flow of flows/pipeline.py. `_parser` builds argparse's
parser from the rows and `main` runs the chosen row; neither knows a command by name.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from compute import download, locations, lock, publish, stop, storage
from compute.cluster import AuthenticationFailed
from compute.download import DEFAULT_DATASET, DownloadError
from compute.layout import MODEL_FILE, Layout
from compute.settings import PROJECT_ROOT, Settings, environment_variables, get_settings
from compute.stage import Stage, StageResult
from compute.stages import Features, Forecast, Ingest, Train
from compute.stages.ingest.sources import SourceError, list_files, open_source
from flows.stages import STAGES


@dataclass(frozen=True)
class Option:
    """One option: argparse's flags and keywords, and the flow parameter it fills (if any)."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    parameter: str | None = None

    @property
    def dest(self) -> str:
        return self.flags[0].removeprefix("--").replace("-", "_")


def option(*flags: str, parameter: str | None = None, **kwargs: Any) -> Option:
    return Option(flags, kwargs, parameter)


@dataclass(frozen=True)
class Needs:
    """A published output a command reads, and the stage (and command) that makes it."""

    stage: type[Stage[Any, Any]]
    what: str
    folder: str | None = None  # a Layout attribute; default: the stage's output folder

    @property
    def output(self) -> str:
        return self.folder or self.stage.output_folder or ""

    @property
    def made_by(self) -> str:
        return self.stage.name

    def present(self, layout: Layout) -> bool:
        where = getattr(layout, self.output)
        if self.output == "model":
            return storage.is_file(storage.join(publish.data_dir(where), MODEL_FILE))
        return storage.is_dir(where)


Action = Callable[[argparse.Namespace, Layout], int]


@dataclass(frozen=True)
class Command:
    help: str
    options: tuple[Option, ...]
    # What it runs: an action of this module, or a flow picked from flows/pipeline.py (imported
    # only once the arguments are valid, while Prefect's server and Ray start).
    action: Action | None = None
    flow: Callable[[ModuleType], Callable[..., Any]] | None = None
    description: str | None = None  # --help's text, when longer than `help`
    needs: Needs | None = None
    # Its first stage: when that stage's output is missing (or --force), the stage surely has
    # work, so Ray starts up front, beside Prefect's temporary server.
    first_stage: type[Stage[Any, Any]] | None = None


def _serve(args: argparse.Namespace, layout: Layout) -> int:
    """Register the champion (<out>/model) in the BentoML model store, then become `bentoml serve`
    for it, following <out>'s champion: a promotion or a rollback is served within
    serve_follow_seconds, swapped in place."""
    from bento.package import register_model

    settings = get_settings(
        serve_host=args.host, serve_port=args.port, serve_access_log=args.access_log or None
    )
    if busy := _port_in_use(settings.serve_host, settings.serve_port):
        return _fail(
            f"cannot serve on {settings.serve_host}:{settings.serve_port}: {busy}; another server "
            f"holds it (`ss -ltnp | grep :{settings.serve_port}` shows which): stop it, or use --port",
            code=1,
        )
    tag = register_model(layout.model)
    os.environ[environment_variables("serve_follow")[0]] = layout.root  # read by bento/service.py
    print(
        f"serving {tag} on http://{settings.serve_host}:{settings.serve_port}, following the champion "
        f"of {layout.root} (checked every {settings.serve_follow_seconds:g} s)",
        flush=True,
    )
    # bento/serve.py: `bentoml serve`, with a metrics folder that another server cannot empty.
    command = [sys.executable, "-m", "bento.serve", "bento.service:VolumeService",
               "--arg", f"model_tag={tag}", "--arg", f"access_log={str(settings.serve_access_log).lower()}",
               "--host", settings.serve_host, "--port", str(settings.serve_port),
               "--working-dir", str(PROJECT_ROOT)]  # fmt: skip
    os.execv(sys.executable, command)  # replaces this process, so signals reach the server directly


def _port_in_use(host: str, port: int) -> str | None:
    """Why the server could not listen there, asked before it starts: BentoML's own answer is a
    traceback. (A server that takes the port in between still gets that.)"""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the server binds: a port whose last connections are in TIME_WAIT is free to it.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _containerize(args: argparse.Namespace, layout: Layout) -> int:
    """Register the model, build (or reuse) its Bento, and build the image with buildah."""
    from bento import image, package

    try:
        image.require_tools()  # before building a Bento that could not be containerized
        model, forecast = package.register_model(layout.model), package.register_forecast(layout.root)
        bento = package.build_bento(model, forecast)
        built = image.containerize(bento, args.image)
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


def _models(_args: argparse.Namespace, layout: Layout) -> int:
    """Every model version: when it was trained, its rows, its holdout scores, which is the champion."""
    from compute import model as contract
    from compute import registry

    try:
        current, changes = registry.champion(layout), registry.history(layout)
    except registry.RegistryDamaged as exc:
        return _fail(f"{exc}; {exc.then}", code=1)
    print(f"{'version':22} {'trained (UTC)':20} {'rows (train / test)':>22} {'holdout MAE':>12} "
          f"{'R²':>7} {'vs baseline':>12}")  # fmt: skip
    for version in registry.versions(layout):
        try:
            card = contract.read_card(publish.data_dir(layout.version(version)))
        except contract.ModelNotWhole as exc:
            print(f"{version:22} damaged: {exc}")
            continue
        model, baseline = card.metrics.time_split, card.metrics.baseline
        rows = f"{card.train_rows or 0:,} / {card.test_rows or 0:,}"
        better = f"{100 * (1 - model.mae / baseline.mae):+.1f}%" if baseline.mae else ""
        mark = "  champion" if current and current.version == version else ""
        print(f"{version:22} {card.created.replace('T', ' ').rstrip('Z'):20} {rows:>22} "
              f"{model.mae:12,.0f} {model.r2:7.3f} {better:>12}{mark}")  # fmt: skip
    if current is None:
        print("no champion: nothing is served (`stockpipe promote VERSION` makes one the champion)")
    for change in changes[-5:]:
        outcome = f"{change.before or 'none'} -> {change.after}" if change.before != change.after else "kept"
        print(f"  {change.when} {change.why:8} {change.version}: {outcome}; {change.detail}")
    return 0


def _promote(args: argparse.Namespace, layout: Layout) -> int:
    """Make a version the champion."""
    from compute import registry
    from compute.model import MODEL_NAME

    version = args.version.removeprefix(f"{MODEL_NAME}:")
    return _change_champion(
        args, layout, lambda: registry.promote(layout, version, "promote", "stockpipe promote")
    )


def _rollback(args: argparse.Namespace, layout: Layout) -> int:
    """Return to the previous champion."""
    from compute import registry

    return _change_champion(args, layout, lambda: registry.rollback(layout))


def _change_champion(args: argparse.Namespace, layout: Layout, change: Callable[[], Any]) -> int:
    """Run a change of champion under the output's lock, and say what it did."""
    from compute import registry
    from compute.model import MODEL_NAME

    settings = get_settings(wait=False if args.no_wait else None)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        with lock.hold(layout.root, wait=settings.wait, say=say):
            before = registry.champion(layout)
            chosen = change()
    except registry.RegistryDamaged as exc:
        return _fail(f"{exc}; {exc.then}", code=1)
    except registry.RegistryError as exc:
        return _fail(str(exc))
    except lock.OutputBusy as exc:
        return _fail(f"{exc}; wait for it to finish, or leave out --no-wait to wait for it")
    was = f"{MODEL_NAME}:{before.version}" if before else "none"
    print(f"champion of {layout.root}: {MODEL_NAME}:{chosen.version} (was {was}); a following "
          f"`stockpipe serve` answers with it within {settings.serve_follow_seconds:g} s")  # fmt: skip
    return 0


def _download(args: argparse.Namespace, _layout: Layout) -> int:
    settings = get_settings(download_dir=args.dest)
    try:
        download.kaggle_dataset(f"{download.KAGGLE_PREFIX}{args.dataset}")
        path, fetched = download.fetch(
            args.dataset, settings.download_dir, settings.max_file_bytes, force=args.force
        )
    except DownloadError as exc:
        return _fail(str(exc))
    info = json.loads(path.with_name(path.name + ".json").read_text())
    state = "downloaded and verified" if fetched else "already there and verified; not downloaded again"
    print(f"{path}: {state}")
    print(f"  {info['bytes']:,} bytes, sha256 {info['sha256']}, {info['symbol_files']:,} symbol files")
    print(f"  use it: stockpipe run --source {path}")
    return 0


def _port(text: str) -> int:
    port = _positive_int(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port")
    return port


def _at_least(least: int) -> Callable[[str], int]:
    """An argparse type: a whole number, at least `least`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(
                f"{value} is not {'positive' if least == 1 else f'at least {least}'}"
            )
        return value

    return parse


_positive_int, _whole_number = _at_least(1), _at_least(0)


SOURCE = option(
    "--source",
    parameter="source",
    default=None,
    metavar="PATH_OR_ZIP",
    help="Kaggle-layout folder (stocks/, etfs/, symbols_valid_meta.csv), the Kaggle zip, or "
    "kaggle:OWNER/DATASET to download it first (default: $STOCKPIPE_SOURCE, else the embedded "
    "39-file sample)",
)
OUT = option(
    "--out", default=None, metavar="DIR", help="output directory (default: $STOCKPIPE_OUT or ./output)"
)
FORCE = option(
    "--force",
    parameter="force",
    action="store_true",
    help="rebuild every stage, even those whose inputs, code and settings are unchanged",
)
RAY_ADDRESS = option(
    "--ray-address",
    parameter="ray_address",
    default=None,
    metavar="ADDRESS",
    help="existing Ray cluster to run on (default: $RAY_ADDRESS, else start a local Ray)",
)
NO_WAIT = option(
    "--no-wait",
    action="store_true",
    help="if another run is writing the same --out, fail at once instead of waiting for it",
)
DEVICE = option(
    "--device",
    parameter="train_device",
    choices=["auto", "cpu", "cuda"],
    default=None,
    help="where XGBoost trains (default auto: CUDA if the Ray cluster has a GPU, else CPU)",
)
LAYOUT = option(
    "--layout",
    parameter="train_layout",
    choices=["auto", "single", "distributed"],
    default=None,
    help="one Ray task or Ray Train's workers (default auto: Ray Train only where there are several "
    "GPUs or nodes, or more data than a node holds)",
)
ROUNDS = option(
    "--rounds",
    parameter="train_rounds",
    type=_positive_int,
    default=None,
    help="boosting rounds (default 40)",
)
BACKTEST = option(
    "--backtest-folds",
    parameter="train_backtest_folds",
    type=_whole_number,
    default=None,
    metavar="N",
    help="also score walk-forward folds over the latest N years (default 0: none)",
)
STOP_AFTER = option(
    "--stop-after",
    parameter="stop_after",
    choices=list(STAGES)[1:],
    default=list(STAGES)[-1],
    help=f"last stage to run (default: {list(STAGES)[-1]}, i.e. everything)",
)
HOST = option("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
PORT = option("--port", type=_port, default=None, help="port (default 3000)")
ACCESS_LOG = option(
    "--access-log",
    action="store_true",
    help="log every request (BentoML's access log; it costs throughput: docs/performance.md)",
)
IMAGE = option("--image", default=None, help="image name (default localhost/stockpipe:<Bento version>)")
DATASET = option("--dataset", default=DEFAULT_DATASET, help=f"OWNER/DATASET (default {DEFAULT_DATASET})")
DEST = option("--dest", default=None, metavar="DIR", help="where to keep the zip (default ./data/downloads)")
REFETCH = option("--force", action="store_true", help="download again even if a verified copy is there")
STAGE = (FORCE, RAY_ADDRESS, NO_WAIT)  # every command that runs stages
TRAINING = (DEVICE, LAYOUT, ROUNDS, BACKTEST)

VERSION = option("version", metavar="VERSION", help="the version to promote (`stockpipe models` lists them)")
STAGE1 = Needs(Ingest, "stage 1 output")
STAGE2 = Needs(Features, "stage 2 output")
MODEL = Needs(Train, "champion model")
MODELS = Needs(Train, "trained model", folder="models")

COMMANDS: dict[str, Command] = {
    "run": Command(
        "Run the whole pipeline: ingest, features, forecast, train, then build the Bento.",
        (SOURCE, OUT, *STAGE, *TRAINING, STOP_AFTER),
        flow=lambda pipeline: pipeline.stock_pipeline, first_stage=Ingest,
    ),
    "ingest": Command(
        "Stage 1: read every symbol file into <out>/stage1/, bad rows into <out>/quarantine/.",
        (SOURCE, OUT, *STAGE),
        flow=lambda pipeline: pipeline.ingest_flow, first_stage=Ingest,
    ),
    "features": Command(
        "Stage 2: rolling features from <out>/stage1/ into <out>/stage2/.",
        (OUT, *STAGE),
        flow=lambda pipeline: pipeline.features_flow, needs=STAGE1, first_stage=Features,
    ),
    "forecast": Command(
        "The forecast, after features: each symbol's volume in the next NYSE session, with a 10-90% "
        "range, from <out>/stage1/ into <out>/forecast/, walked forward against the naive forecasts.",
        (OUT, *STAGE, DEVICE),
        flow=lambda pipeline: pipeline.forecast_flow, needs=STAGE1, first_stage=Forecast,
    ),
    "train": Command(
        "Stage 3: train XGBoost on Ray from <out>/stage2/ into a new version in <out>/models/; the "
        "gate makes it the champion, <out>/model/, only when it is not worse than the champion.",
        (OUT, *STAGE, *TRAINING),
        flow=lambda pipeline: pipeline.train_flow, needs=STAGE2, first_stage=Train,
    ),
    "models": Command(
        "List the model versions in <out>/models/: trained when, on how many rows, their holdout "
        "scores, which is the champion, and the latest changes of champion.",
        (OUT,),
        action=_models, needs=MODELS,
    ),
    "promote": Command(
        "Make a model version the champion: what serve and package read (under the output's lock).",
        (VERSION, OUT, NO_WAIT),
        action=_promote, needs=MODELS,
    ),
    "rollback": Command(
        "Return to the previous champion (under the output's lock).",
        (OUT, NO_WAIT),
        action=_rollback, needs=MODEL,
    ),
    "serve": Command(
        "Serve the champion, <out>/model/, with BentoML (GET/POST /predict, POST /predict_batch, GET "
        "/model), following it: a promotion or a rollback is served within seconds.",
        (OUT, HOST, PORT, ACCESS_LOG),
        action=_serve, needs=MODEL,
    ),
    "containerize": Command(
        "Build an OCI image of the Bento for the champion in <out>/model/ with buildah (no Docker needed; "
        "the base image is made locally from Debian packages). With Docker, `bentoml containerize` "
        "is the usual way.",
        (OUT, IMAGE),
        action=_containerize, needs=MODEL,
    ),
    "download": Command(
        "Download the Kaggle dataset zip (skipped when a verified copy is there) and verify it.",
        (DATASET, DEST, REFETCH),
        action=_download,
        description="Download the Kaggle dataset zip with the kaggle package and verify it (a readable "
        "zip in the Kaggle layout; size and SHA-256 written next to it). Credentials: KAGGLE_USERNAME "
        "and KAGGLE_KEY, or ~/.kaggle/kaggle.json. Offline? Give the other commands --source with a "
        "folder or zip instead.",
    ),
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stockpipe",
        description="Daily US stock and ETF prices: ingest -> features -> train -> serve, orchestrated "
        "by Prefect on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.description or command.help)
        for opt in command.options:
            sub.add_argument(*opt.flags, **opt.kwargs)
    return parser


def _fail(message: str, code: int = 2) -> int:
    """One line and an exit status: 2 for bad arguments (the default), 1 for what cannot be done."""
    print(f"stockpipe: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = COMMANDS[args.command]
    layout = None
    if OUT in command.options:
        try:
            out = locations.normalize(args.out or get_settings().out)
            out_kind = storage.kind(out)
        except (ValueError, OSError) as exc:
            return _fail(f"cannot use --out '{args.out}': {exc}")
        if out_kind == "file":
            return _fail(f"--out '{out}' exists and is not a directory")
        layout = Layout(out)
    if SOURCE in command.options:
        try:
            _check_source(args.source or get_settings().source)
        except (SourceError, DownloadError) as exc:
            return _fail(str(exc))
    if command.needs and layout and not command.needs.present(layout):
        needs, root = command.needs, layout.root
        where = getattr(layout, needs.output) if needs.output == "model" else root
        return _fail(f"no {needs.what} in '{where}': run `stockpipe {needs.made_by} --out {root}` first")
    if command.action:
        return command.action(args, layout or Layout("."))
    assert layout is not None, "a flow command takes --out"
    return _run_flow(command, args, layout)


def _run_flow(command: Command, args: argparse.Namespace, layout: Layout) -> int:
    # Prefect's analytics would try to reach the internet; import it only once arguments are valid.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    settings = get_settings(
        ray_address=args.ray_address, force=args.force or None, wait=False if args.no_wait else None
    )
    try:
        with lock.hold(
            layout.root, wait=settings.wait, say=lambda line: print(line, file=sys.stderr, flush=True)
        ):
            return _start_and_run(command, args, layout, settings)
    except lock.OutputBusy as exc:
        return _fail(f"{exc}; wait for it to finish, or leave out --no-wait to wait for it")


def _start_and_run(command: Command, args: argparse.Namespace, layout: Layout, settings: Settings) -> int:
    from flows import services

    # Ray is started up front only when the first stage surely has work (nothing published yet,
    # or --force); otherwise a stage starts it if it finds work, and an unchanged re-run never does.
    ray_too = settings.force or not (command.first_stage and command.first_stage.is_published(layout))
    # The flows are imported while Prefect's server and Ray start, instead of after.
    imports = ("flows.pipeline",)
    try:
        services.start(settings, ray_too=ray_too, imports=imports)
        stop.checkpoint()
    except AuthenticationFailed as exc:
        return _fail(str(exc))
    except ConnectionError as exc:
        return _fail(f"cannot reach the Ray cluster at {settings.ray_address}: {exc}")
    except stop.Stopped as stopped:
        return _stopped(stopped, layout)
    from flows import pipeline

    assert command.flow is not None
    if (stopped := stop.requested()) is not None:  # between the start and the flow
        return _stopped(stopped, layout)
    services.watch_api(layout.root, settings.prefect_api_wait_seconds)
    with services.prefect_api():
        state = command.flow(pipeline)(**flow_parameters(command, args, layout), return_state=True)
    if (stopped := stop.requested()) is not None:
        return _stopped(stopped, layout, state.message)
    try:
        result = state.result()  # the flow's own exception, as a flow call raises it
    except DownloadError as exc:  # e.g. the network went away between the check and the download
        return _fail(str(exc))
    _print_outputs(settings.model_copy(update={"out": layout.root}), result)
    return 0


def flow_parameters(command: Command, args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """The flow's parameters: the options given (None where not: the environment decides) and the
    output."""
    return {
        **{o.parameter: getattr(args, o.dest) for o in command.options if o.parameter},
        "out": layout.root,
    }


def _stopped(stopped: stop.Stopped, layout: Layout, said: str | None = None) -> int:
    """The one line of a stopped run, and its exit status."""
    from flows import stopping

    print(f"stockpipe: {said or stopping.line(stopped, layout)}", file=sys.stderr, flush=True)
    return stopped.code


def _check_source(source: str) -> None:
    """Refuse a bad source before anything starts; for kaggle: sources, check access if needed."""
    settings = get_settings()
    dataset = download.kaggle_dataset(source)
    if dataset is None:
        list_files(open_source(source), settings.max_file_bytes)
    elif not download.is_verified(download.zip_path(dataset, settings.download_dir)):
        download.check_access()


def _print_outputs(settings: Settings, result: BaseModel) -> None:
    from flows.pipeline import PipelineResult

    results = result.stages() if isinstance(result, PipelineResult) else {_stage_of(result): result}
    reused = [name for name, r in results.items() if r.reused]
    if reused:
        print(f"unchanged since the last run, reused: {', '.join(reused)} (--force rebuilds)")
    for name, stage_result in results.items():
        for line in STAGES[name](settings).describe(stage_result):
            print(line)


def _stage_of(result: StageResult) -> str:
    return next(name for name, stage in STAGES.items() if isinstance(result, stage.result_type))


def entry() -> None:
    """The `stockpipe` command: `main` (Ctrl-C and SIGTERM stop it in order: flows/stopping.py),
    then a quick exit that still stops what it started."""
    from flows import services, stopping

    with stopping.handled():
        code = main()
    services.exit_now(code)


if __name__ == "__main__":
    entry()
