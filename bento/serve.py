"""`bentoml serve`, with a folder of its own for prometheus_client's multiprocess files.

BentoML keeps those files in one folder per BENTOML_HOME ($BENTOML_HOME/prometheus_multiproc_dir)
and empties it whenever a server starts: a second server on the same machine (a built Bento beside
`stockpipe serve`, the next version during a roll-out) deleted the first's files, whose /metrics
then stood still while it kept answering. `stockpipe serve` runs BentoML through this module,
which gives each server $BENTOML_HOME/stockpipe-metrics/<pid> and removes the folders of servers
that are gone. (A container runs one server: a built Bento's image needs nothing of this.)

    python -m bento.serve ARGS...      # as `bentoml serve ARGS...`
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def own_metrics_folder(home: Path) -> Path:
    """A fresh folder for this process, beside those of live servers; gone servers' removed."""
    base = home / "stockpipe-metrics"
    base.mkdir(parents=True, exist_ok=True)
    for folder in base.iterdir():
        if folder.name.isdigit() and not _alive(int(folder.name)):
            shutil.rmtree(folder, ignore_errors=True)
    mine = base / str(os.getpid())
    shutil.rmtree(mine, ignore_errors=True)
    mine.mkdir()
    return mine


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def main(argv: list[str]) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml_cli.cli import cli

    folder = own_metrics_folder(Path(BentoMLContainer.bentoml_home.get()))
    BentoMLContainer.prometheus_multiproc_dir.set(str(folder))  # what BentoML's server start reads
    cli(["serve", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
