"""What the commands of flows/cli.py do once their arguments parse: check them against what is
there, then run an action of this module (named by the command's row) or a flow of
flows/pipeline.py, with Prefect's server and Ray started for it (flows/services.py)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from compute import download, locations, lock, publish, stop, storage, timeline
from compute.download import DownloadError
from compute.layout import MODEL_FILE, Layout
from compute.settings import PROJECT_ROOT, Settings, environment_variables, get_settings
from compute.stages.ingest.sources import SourceError, list_files, open_source
from flows import lasting
from flows.cli import OUT, SOURCE, Command, Needs
from flows.services import exit_now
from flows.stages import stage, stages

__all__ = ["exit_now", "run"]

Action = Callable[[argparse.Namespace, Layout], int]


def present(needs: Needs, layout: Layout) -> bool:
    where = getattr(layout, needs.folder)
    if needs.folder == "model":
        return storage.is_file(storage.join(publish.data_dir(where), MODEL_FILE))
    return storage.is_dir(where)


def _fail(message: str, code: int = 2) -> int:
    """One line and an exit status: 2 for bad arguments (the default), 1 for what cannot be done."""
    print(f"stockpipe: error: {message}", file=sys.stderr)
    return code


def run(command: Command, args: argparse.Namespace) -> int:
    """Check the arguments against what is there (the output, the source, what the command needs),
    then run the command's action or flow."""
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
    if command.needs and layout and not present(command.needs, layout):
        needs, root = command.needs, layout.root
        where = getattr(layout, needs.folder) if needs.folder == "model" else root
        return _fail(f"no {needs.what} in '{where}': run `stockpipe {needs.stage} --out {root}` first")
    if command.action:
        return ACTIONS[command.action](args, layout or Layout("."))
    assert layout is not None, "a flow command takes --out"
    return _run_flow(command, args, layout)


def _run_flow(command: Command, args: argparse.Namespace, layout: Layout) -> int:
    # Prefect's analytics would try to reach the internet; import it only once arguments are valid.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # `stockpipe up`'s Ray cluster, unless one is given: as if RAY_ADDRESS named it.
    environment = get_settings()
    up = lasting.found(environment.home)
    if up is not None and not (args.ray_address or environment.ray_address):
        os.environ["RAY_ADDRESS"] = up.ray_address
    settings = get_settings(
        ray_address=args.ray_address, force=args.force or None, wait=False if args.no_wait else None
    )
    try:
        with lock.hold(
            layout.root, wait=settings.wait, say=lambda line: print(line, file=sys.stderr, flush=True)
        ):
            return _start_and_run(command, args, layout, settings, up)
    except lock.OutputBusy as exc:
        return _fail(f"{exc}; wait for it to finish, or leave out --no-wait to wait for it")


def _start_and_run(
    command: Command,
    args: argparse.Namespace,
    layout: Layout,
    settings: Settings,
    up: lasting.Services | None,
) -> int:
    from compute.cluster import AuthenticationFailed
    from flows import services, stopping

    timeline.mark("imports")
    # Ray is started up front only when the first stage surely has work (nothing published yet,
    # or --force); otherwise a stage starts it if it finds work, and an unchanged re-run never does.
    first = command.first_stage
    ray_too = settings.force or not (first and stage(first).is_published(layout))
    # The flows are imported while Prefect's server and Ray start, instead of after.
    imports = ("flows.pipeline",)
    try:
        with stopping.starting(layout):  # a stop meanwhile ends the process at once
            services.start(settings, ray_too=ray_too, imports=imports, up=up)
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
        flow = getattr(pipeline, command.flow)
        state = flow(**flow_parameters(command, args, layout), return_state=True)
    timeline.mark("flow-end")
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
        for line in stages()[name](settings).describe(stage_result):
            print(line)


def _stage_of(result: BaseModel) -> str:
    return next(name for name, stage in stages().items() if isinstance(result, stage.result_type))


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


def _up(_args: argparse.Namespace, _layout: Layout) -> int:
    settings = get_settings()
    return lasting.up(settings.home, settings.dashboard_host, settings.dashboard_port)


def _down(_args: argparse.Namespace, _layout: Layout) -> int:
    return lasting.down(get_settings().home)


ACTIONS: dict[str, Action] = {
    "up": _up,
    "down": _down,
    "models": _models,
    "promote": _promote,
    "rollback": _rollback,
    "serve": _serve,
    "containerize": _containerize,
    "download": _download,
}
