"""`stockpipe`: run the pipeline or one stage of it from the command line.

Every command is one row of COMMANDS: its options, the published output it needs, and what it
runs, either an action of flows/commands.py or a flow of flows/pipeline.py, both named. `_parser`
builds argparse's parser from the rows and `main` runs the chosen row; neither knows a command by
name. This module imports nothing heavy: `--help` and a bad argument answer before Ray, pyarrow,
Prefect or XGBoost are imported (2 s), which happens once the arguments are valid.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compute.download import DEFAULT_DATASET
from flows.stages import NAMES


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

    stage: str  # a name in flows/stages.py
    what: str
    folder: str  # a Layout attribute (tests/unit/test_cli.py: the stage's output, or beside it)


@dataclass(frozen=True)
class Command:
    help: str
    options: tuple[Option, ...]
    # What it runs: a function of flows/commands.py, or a flow of flows/pipeline.py (imported
    # only once the arguments are valid, while Prefect's server and Ray start), by name.
    action: str | None = None
    flow: str | None = None
    description: str | None = None  # --help's text, when longer than `help`
    needs: Needs | None = None
    # Its first stage: when that stage's output is missing (or --force), the stage surely has
    # work, so Ray starts up front, beside Prefect's temporary server.
    first_stage: str | None = None


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
    choices=list(NAMES)[1:],
    default=NAMES[-1],
    help=f"last stage to run (default: {NAMES[-1]}, i.e. everything)",
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
STAGE1 = Needs("ingest", "stage 1 output", "stage1")
STAGE2 = Needs("features", "stage 2 output", "stage2")
MODEL = Needs("train", "champion model", "model")
MODELS = Needs("train", "trained model", "models")

COMMANDS: dict[str, Command] = {
    "run": Command(
        "Run the whole pipeline: ingest, features, forecast, train, then build the Bento.",
        (SOURCE, OUT, *STAGE, *TRAINING, STOP_AFTER),
        flow="stock_pipeline", first_stage="ingest",
    ),
    "ingest": Command(
        "Stage 1: read every symbol file into <out>/stage1/, bad rows into <out>/quarantine/.",
        (SOURCE, OUT, *STAGE),
        flow="ingest_flow", first_stage="ingest",
    ),
    "features": Command(
        "Stage 2: rolling features from <out>/stage1/ into <out>/stage2/.",
        (OUT, *STAGE),
        flow="features_flow", needs=STAGE1, first_stage="features",
    ),
    "forecast": Command(
        "The forecast, after features: each symbol's volume in the next NYSE session, with a 10-90% "
        "range, from <out>/stage1/ into <out>/forecast/, walked forward against the naive forecasts.",
        (OUT, *STAGE, DEVICE),
        flow="forecast_flow", needs=STAGE1, first_stage="forecast",
    ),
    "train": Command(
        "Stage 3: train XGBoost on Ray from <out>/stage2/ into a new version in <out>/models/; the "
        "gate makes it the champion, <out>/model/, only when it is not worse than the champion.",
        (OUT, *STAGE, *TRAINING),
        flow="train_flow", needs=STAGE2, first_stage="train",
    ),
    "models": Command(
        "List the model versions in <out>/models/: trained when, on how many rows, their holdout "
        "scores, which is the champion, and the latest changes of champion.",
        (OUT,),
        action="models", needs=MODELS,
    ),
    "promote": Command(
        "Make a model version the champion: what serve and package read (under the output's lock).",
        (VERSION, OUT, NO_WAIT),
        action="promote", needs=MODELS,
    ),
    "rollback": Command(
        "Return to the previous champion (under the output's lock).",
        (OUT, NO_WAIT),
        action="rollback", needs=MODEL,
    ),
    "serve": Command(
        "Serve the champion, <out>/model/, with BentoML (GET/POST /predict, POST /predict_batch, GET "
        "/model), following it: a promotion or a rollback is served within seconds.",
        (OUT, HOST, PORT, ACCESS_LOG),
        action="serve", needs=MODEL,
    ),
    "containerize": Command(
        "Build an OCI image of the Bento for the champion in <out>/model/ with buildah (no Docker needed; "
        "the base image is made locally from Debian packages). With Docker, `bentoml containerize` "
        "is the usual way.",
        (OUT, IMAGE),
        action="containerize", needs=MODEL,
    ),
    "up": Command(
        "Start a lasting local Prefect server (with its UI) and Ray cluster (with its dashboard) "
        "that every later command on this machine uses until `stockpipe down`; list them if up.",
        (),
        action="up",
        description="Start a lasting local Prefect server (`prefect server start`, with its UI) and Ray "
        "cluster (`ray start --head`, with its dashboard) that every later command on this machine "
        "uses instead of starting its own (a command that starts its own spends about 7 s on two "
        "cores before its first stage). A configured PREFECT_API_URL or RAY_ADDRESS still comes "
        "first. Already up: list them. `stockpipe down` stops them.",
    ),
    "down": Command(
        "Stop the Prefect server and Ray cluster that `stockpipe up` started.", (), action="down"
    ),
    "download": Command(
        "Download the Kaggle dataset zip (skipped when a verified copy is there) and verify it.",
        (DATASET, DEST, REFETCH),
        action="download",
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flows import commands

    return commands.run(COMMANDS[args.command], args)


def entry() -> None:
    """The `stockpipe` command: `main` (Ctrl-C and SIGTERM stop it in order from here on, the
    imports included: flows/stopping.py), then a quick exit that still stops what it started."""
    args = _parser().parse_args()
    from flows import stopping

    with stopping.handled():
        from flows import commands

        code = commands.run(COMMANDS[args.command], args)
    commands.exit_now(code)


if __name__ == "__main__":
    # `python -m flows.cli` runs this file as __main__; flows/commands.py imports flows.cli, whose
    # rows must be the ones parsed here: one module, not two copies.
    import flows.cli

    flows.cli.entry()
