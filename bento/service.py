"""BentoML service: predicted daily trading volume from the two rolling features.

    GET  /predict?vol_moving_avg=51318&adj_close_rolling_med=216   -> 200, JSON integer
    POST /predict        {"vol_moving_avg": 51318, "adj_close_rolling_med": 216}
    POST /predict_batch  {"instances": [{"vol_moving_avg": ..., "adj_close_rolling_med": ...}, ...]}
                         -> {"predictions": [int, ...]}
                         {"inputs": [[vol_moving_avg, adj_close_rolling_med], ...]} -> {"outputs": [...]}
    GET  /metrics        Prometheus: BentoML's request metrics and the service's (bento/metrics.py)
    GET  /model          which model answers: tag, features, training window, holdout metrics, ...,
                         and which forecast answers /forecast and how it did on the walk-forward
    GET  /forecast?symbol=AAPL  -> the symbol's volume in the next session, with a 10-90% range
    POST /forecast       {"symbols": ["AAPL", ...]} -> {"forecasts": [...], "not_found": [...]}

The model (booster + model card) comes from the BentoML model store. Which one is the service's
Bento argument `model_tag`: `stockpipe serve` passes it (`bentoml serve ... --arg model_tag=TAG`),
a built Bento records the one it was built with, and a plain `bentoml serve` takes the latest
`stock-volume`. Another argument, `access_log` (default false), turns BentoML's access log on.

The forecasts come from an output's forecast/ folder when the service follows one (`stockpipe
serve`), else from the BentoML model store (`forecast_tag`, which a built Bento records): a new
forecast there is served within serve_follow_seconds, swapped in place like a champion.

Every route answers bad input with one error body (ErrorBody: a message, and each problem with its
field): 400 for /predict and /predict_batch, 422 for /forecast; a symbol without a forecast is a
404 that says why. The OpenAPI document (/docs.json) describes them all; never a 500 or a
traceback for bad input.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import pydantic_core
import xgboost as xgb
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from typing_extensions import TypedDict

from bento import forecasts, timeout
from bento.connections import KeepAliveRequests
from bento.metrics import Meters, NoMeters
from bento.onerow import OneRow
from compute import model as contract
from compute import publish
from compute.layout import Layout
from compute.metrics import Metrics
from compute.schema import FEATURE_COLUMNS
from compute.settings import get_settings

# Where the champion to follow is (an --out location) and how often to look: settings, from the
# environment, so that a built Bento follows too (`STOCKPIPE_SERVE_FOLLOW=... bentoml serve
# stockpipe:...`): BentoML gives a built Bento the arguments it was built with, whatever `--arg` says.
SETTINGS = get_settings()
FOLLOW = SETTINGS.serve_follow or ""
FOLLOW_SECONDS = SETTINGS.serve_follow_seconds
log = logging.getLogger("bentoml.stockpipe")  # under BentoML's logger, whose handler prints it

# Let each worker process accept one connection at a time (libuv, under uvloop), so that
# connections opened together spread over the workers instead of piling onto whichever woke first.
os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")
timeout.install()

MAX_BATCH = 100_000  # rows per /predict_batch request
# Bounds far beyond any real value (AAPL's busiest day: 7.4e9 shares; BRK.A: ~4e5 dollars), so
# that a typo like 1e300 is refused instead of answered with a meaningless number.
MAX_VOLUME = 1e12
MAX_PRICE = 1e7

VolMovingAvg = Annotated[
    float, Field(ge=0, le=MAX_VOLUME, allow_inf_nan=False, description="30-row mean of daily Volume")
]
AdjCloseMedian = Annotated[
    float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False, description="30-row median of Adj Close")
]


class ServiceArguments(BaseModel):
    model_tag: str = f"{contract.MODEL_NAME}:latest"
    # BentoML's access log: a line per request, off by default for what it costs in throughput
    # (docs/performance.md).
    access_log: bool = False
    # The service's own Prometheus series (bento/metrics.py); BentoML's request metrics at /metrics
    # stay on either way.
    metrics: bool = True
    # The forecast table in the model store (stock-forecast:<version>), for a service that does
    # not follow an output; empty: none.
    forecast_tag: str = ""


arguments = bentoml.use_arguments(ServiceArguments)


class Features(BaseModel):
    """As query parameters: text that must read as a number."""

    vol_moving_avg: VolMovingAvg
    adj_close_rolling_med: AdjCloseMedian


# In a JSON body a number must be a JSON number: not true, not "216" (as the document says).
JsonVolMovingAvg = Annotated[VolMovingAvg, Strict()]
JsonAdjCloseMedian = Annotated[AdjCloseMedian, Strict()]


class FeaturesBody(BaseModel):
    vol_moving_avg: JsonVolMovingAvg
    adj_close_rolling_med: JsonAdjCloseMedian


class Instance(TypedDict):
    """One row of a batch. A TypedDict, not a model: pydantic validates 100,000 of them into plain
    dicts five times faster than into model objects."""

    vol_moving_avg: JsonVolMovingAvg
    adj_close_rolling_med: JsonAdjCloseMedian


class Instances(BaseModel):
    """Rows as objects: TF Serving's row format (Vertex AI's too)."""

    model_config = ConfigDict(extra="forbid")
    instances: Annotated[list[Instance], Field(min_length=1, max_length=MAX_BATCH)]


# One row as a pair, in FEATURE_COLUMNS' order.
Row = tuple[JsonVolMovingAvg, JsonAdjCloseMedian]


class Inputs(BaseModel):
    """The feature matrix as one tensor, a pair per row: TF Serving's columnar format for a model
    whose one input is that [n, 2] matrix. A third of the bytes of instances, and parsed without a
    key per number. (Named columns, {"inputs": {"vol_moving_avg": [...], ...}}, would need their
    lengths to be equal, which an OpenAPI document cannot say.)"""

    model_config = ConfigDict(extra="forbid")
    inputs: Annotated[list[Row], Field(min_length=1, max_length=MAX_BATCH)]


def _body_kind(body: Any) -> str:
    """Which of the two a body is meant to be, so that its errors are that one's alone."""
    return (
        "inputs" if isinstance(body, dict) and "inputs" in body and "instances" not in body else "instances"
    )


# The key a body starts with, when it is plainly one of the two (no escapes in it).
FIRST_KEY = re.compile(rb'\s*\{\s*"(instances|inputs)"\s*:')
Batch = TypeAdapter(
    Annotated[
        Annotated[Instances, Tag("instances")] | Annotated[Inputs, Tag("inputs")], Discriminator(_body_kind)
    ]
)


class Predictions(BaseModel):
    predictions: list[int] = Field(description="for instances: the predicted volume of each, in order")


class Outputs(BaseModel):
    outputs: list[int] = Field(description="for inputs: the predicted volume of each row, in order")


class Problem(BaseModel):
    field: str = Field(description="the input at fault: a field, an item such as vol_moving_avg[3], or body")
    problem: str


class ErrorBody(BaseModel):
    """What every route answers when it cannot answer the question."""

    error: str = Field(description="the whole message, one line")
    problems: list[Problem] = Field(
        description="each problem with the input, by field; empty for other errors"
    )


class Holdout(BaseModel):
    cutoff: str = Field(description="the first date of the time holdout")
    model: Metrics
    baseline: Metrics = Field(description="the naive prediction Volume = vol_moving_avg")


class ModelInfo(BaseModel):
    """Which model answers, from its model card (model.json)."""

    tag: str = Field(description="the model's tag in the BentoML model store")
    version: str | None = Field(description="its version in the registry (<out>/models/)")
    follows: str | None = Field(
        description="the output whose champion this service follows (swapped in place when it changes)"
    )
    features: list[str]
    target: str
    target_transform: str
    objective: str
    training_window: list[str] | None
    holdout: Holdout
    trained: str = Field(description="when it was trained (UTC)")
    model_sha256: str | None
    data_hash: str
    forecast: forecasts.ForecasterInfo | None = Field(
        None, description="which forecast answers /forecast, and why (none: no forecast is loaded)"
    )


BAD_INPUT = {"model": ErrorBody, "description": "Bad input: each problem names its field"}
# "default" covers the rest (405 for another method, 504 past the request timeout): the same body.
OTHER_ERROR = {"model": ErrorBody, "description": "Any other error, in the same shape"}
ERRORS: dict[int | str, dict[str, Any]] = {400: BAD_INPUT, "default": OTHER_ERROR}
FORECAST_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No forecast for the symbol: unknown, too little history, "
          "or its rows stopped before the data's last session (the message says which, and since when)"},
    422: BAD_INPUT,
    "default": OTHER_ERROR,
}  # fmt: skip

# Every route lives in a FastAPI app mounted on the service: @bentoml.api routes are POST only, and
# BentoML answers their validation errors in a shape of its own that its OpenAPI document does not
# describe (a list where it says a string); here one error body covers every route.
http = FastAPI(title="stockpipe")


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its $defs put in place: the OpenAPI document has no $defs to refer to."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        return [resolve(v) for v in node] if isinstance(node, list) else node

    return resolve(schema)


def _json(value: Any, status_code: int = 200) -> Response:
    return Response(pydantic_core.to_json(value), status_code=status_code, media_type="application/json")


def _error(problems: list[Problem], status_code: int = 400, message: str | None = None) -> Response:
    message = message or "; ".join(f"{p.field}: {p.problem}" for p in problems)
    return _json(ErrorBody(error=message, problems=problems).model_dump(), status_code)


def _problems(errors: list[Any], skip: int) -> list[Problem]:
    """One Problem per validation error; `skip` drops the location's prefix (FastAPI's 'body')."""
    problems = []
    for error in errors:
        loc = list(error.get("loc", ())[skip:])
        if error.get("type") == "json_invalid" or not loc:
            field = "body"
        else:
            field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
        message = "not valid JSON" if error.get("type") == "json_invalid" else error["msg"]
        problems.append(Problem(field=field, problem=message.removeprefix("Value error, ")))
    return problems


def _refuse(errors: list[Any], skip: int) -> Response:
    """The 400 for validation errors, each counted by field and problem in /metrics."""
    problems = _problems(errors, skip)
    _service().meters.refused(
        [(p.field, e.get("type", "invalid")) for p, e in zip(problems, errors, strict=True)]
    )
    return _error(problems)


@http.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    response = _refuse(list(exc.errors()), skip=1)
    if request.scope.get("path") == "/forecast":
        response.status_code = 422
    return response


@http.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's and Starlette's own errors (a body it cannot decode, another method) as ours."""
    if "parsing the body" in str(exc.detail):
        _service().meters.refused([("body", "json_invalid")])
        return _error([Problem(field="body", problem="not valid JSON")], exc.status_code)
    response = _error([], exc.status_code, message=str(exc.detail))
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:  # every method the path takes, not only its first route's
        path = request.scope.get("path", "")
        methods = {m for route in http.routes if getattr(route, "path", None) == path for m in route.methods}
        response.headers["allow"] = ", ".join(sorted(methods))
    return response


# Loopback by default, also for a plain `bentoml serve`: exposing it is an explicit --host choice.
# One worker process per CPU: with one, GET /predict at c=8 managed about 760 requests/s here.
@bentoml.service(
    name="stockpipe",
    workers="cpu_count",
    traffic={"timeout": 30},
    http={"host": "127.0.0.1", "port": 3000},
    logging={"access": {"enabled": arguments.access_log}},
    metrics={"enabled": True},
    # BentoML wraps every request in OpenTelemetry spans (a server span, one per response message)
    # whether or not a trace exporter is configured: a quarter of GET /predict's time. Unless asked
    # for, every path is excluded from tracing, which the middleware then passes straight through.
    tracing={"excluded_urls": [] if SETTINGS.serve_tracing else [".*"]},
)
@bentoml.asgi_app(http, path="/")
class VolumeService:
    model_ref = bentoml.models.BentoModel(arguments.model_tag)
    if arguments.forecast_tag:
        forecast_ref = bentoml.models.BentoModel(arguments.forecast_tag)

    def __init__(self) -> None:
        self.ready = False
        booster, card = contract.load(Path(self.model_ref.path))
        self.serving = _serving(str(self.model_ref.tag), booster, card)
        self.meters = Meters(card) if arguments.metrics else NoMeters()
        self.forecasts: forecasts.Table | None = None
        if FOLLOW:
            self.forecasts = forecasts.Table.published(FOLLOW)
        if self.forecasts is None and arguments.forecast_tag:
            ref = self.forecast_ref
            self.forecasts = forecasts.Table.read(str(ref.path), ref.tag.version or "", str(ref.tag))

    @bentoml.on_startup
    def _settle(self) -> None:
        """Answer once (the first prediction allocates XGBoost's buffers), then move everything
        loaded so far out of the garbage collector's way: a full collection then walks only what
        requests create, not the ~160,000 objects of BentoML, FastAPI and the model (at 1,000
        requests/s such collections took 60-80 ms and showed in the tail latency). Then, when
        told to, follow an output's champion."""
        self.predict_one(51318.0, 216.0)
        gc.collect()
        gc.freeze()
        if FOLLOW:
            threading.Thread(target=self._follow, name="follow-champion", daemon=True).start()
        self.ready = True

    async def __is_ready__(self) -> bool:
        """/readyz: 503 until the model is loaded and has answered once."""
        return self.ready

    def _follow(self) -> None:
        """Every FOLLOW_SECONDS, read the champion's card (model.json alone); when it names another
        model, load that one whole (SHA-256 checked), answer once with it, then swap it in: one
        attribute assignment, so a request uses the old model or the new, and none fails."""
        model_dir, said = Layout(FOLLOW).model, ""
        while True:
            time.sleep(FOLLOW_SECONDS)
            self._follow_forecast()
            try:
                card, serving = contract.read_card(publish.data_dir(model_dir)), self.serving.card
                if (card.version, card.model_sha256) == (serving.version, serving.model_sha256):
                    continue  # a retrained version can have the same model.bin: the version counts
                model, card = contract.read_published(model_dir)
                tag = f"{contract.MODEL_NAME}:{card.version}" if card.version else "unversioned"
                self.serving = _serving(tag, contract.booster(model), card)
                self.meters.serving(card)
                log.info("now serving %s, the champion of %s", tag, FOLLOW)
                said = ""
            except Exception as exc:  # unreachable store, no champion: keep serving, look again later
                if str(exc) != said:
                    log.warning(
                        "still serving %s: cannot read the champion of %s: %s",
                        self.serving.info.tag,
                        FOLLOW,
                        exc,
                    )
                    said = str(exc)

    def _follow_forecast(self) -> None:
        """A newly published forecast in the followed output: loaded whole, then swapped in."""
        current = self.forecasts.version if self.forecasts else None
        try:
            if forecasts.version_of(FOLLOW) in (None, current):
                return
            table = forecasts.Table.published(FOLLOW)
        except Exception as exc:  # keep answering with the table there is
            log.warning("still serving forecast %s: cannot read the forecast of %s: %s", current, FOLLOW, exc)
            return
        if table is not None:
            self.forecasts = table
            log.info("now serving forecast %s (%s) of %s", table.version, table.info.answers, FOLLOW)

    def answer(self, features: np.ndarray) -> list[int]:
        """A batch's predicted volumes (features: n rows in feature_matrix's order), counted in /metrics."""
        serving = self.serving
        volume = np.rint(contract.predict_volume(serving.booster, serving.card, features)).astype(np.int64)
        self.meters.many(features, volume)
        return volume.tolist()

    def answer_one(self, vol_moving_avg: float, adj_close_rolling_med: float) -> int:
        """One predicted volume, counted in /metrics."""
        volume = self.predict_one(vol_moving_avg, adj_close_rolling_med)
        self.meters.one(vol_moving_avg, adj_close_rolling_med, volume)
        return volume

    def predict_one(self, vol_moving_avg: float, adj_close_rolling_med: float) -> int:
        serving = self.serving
        raw = serving.one_row(vol_moving_avg, adj_close_rolling_med)  # feature_matrix's order
        return int(np.rint(contract.to_volume(raw, vol_moving_avg, serving.card.target_transform)))


@dataclass(frozen=True)
class Serving:
    """The model the routes use, replaced whole when a followed champion changes."""

    booster: xgb.Booster
    one_row: OneRow  # the same model on one thread, through XGBoost's C API (bento/onerow.py)
    card: contract.ModelCard
    info: ModelInfo


def _serving(tag: str, booster: xgb.Booster, card: contract.ModelCard) -> Serving:
    if card.features != list(FEATURE_COLUMNS):
        raise ValueError(f"model expects features {card.features}, not {list(FEATURE_COLUMNS)}")
    booster.set_param({"nthread": os.cpu_count() or 1})  # training saved its per-worker count
    single = booster.copy()
    single.set_param({"nthread": 1})  # one row gains nothing from more
    serving = Serving(booster, OneRow(single, len(FEATURE_COLUMNS)), card, _model_info(tag, card))
    serving.one_row(51318.0, 216.0)  # warm, before use
    return serving


VolumeService.add_asgi_middleware(KeepAliveRequests, requests=100)


def _service() -> VolumeService:
    # bentoml.get_current_service(), not the `self` BentoML would inject into methods of the
    # service class: it injects it with a FastAPI dependency that is a plain function, which
    # FastAPI then runs in a thread pool on every request (a tenth of GET /predict's time).
    return bentoml.get_current_service()


# async: a one-row prediction takes microseconds, less than handing it to a thread pool. The
# answer is encoded here, not by FastAPI's response validation.
@http.get(
    "/predict",
    summary="Predicted volume for one pair of features, as query parameters",
    response_model=int,
    responses=ERRORS,
)
async def predict_get(features: Annotated[Features, Query()]) -> Response:
    return _json(_service().answer_one(features.vol_moving_avg, features.adj_close_rolling_med))


@http.post(
    "/predict",
    summary="Predicted volume for one pair of features, as a JSON object",
    response_model=int,
    responses=ERRORS,
)
async def predict_post(features: FeaturesBody) -> Response:
    return _json(_service().answer_one(features.vol_moving_avg, features.adj_close_rolling_med))


@http.post(
    "/predict_batch",
    summary="Predicted volumes for a batch of rows (up to 100,000), vectorised",
    response_model=Predictions | Outputs,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(Batch.json_schema())}},
        }
    },
)
async def predict_batch(request: Request) -> Response:
    # Parsed and checked in one step by pydantic's own JSON parser, as the model its first key
    # names; any other body through the union, whose Python discriminator needs it parsed first
    # (half as slow again), and whose errors start with the body's kind (the union's tag).
    body = await request.body()
    kind = FIRST_KEY.match(body)
    try:
        if kind:
            batch: Instances | Inputs = (Inputs if kind[1] == b"inputs" else Instances).model_validate_json(
                body
            )
        else:
            batch = Batch.validate_json(body)
    except ValidationError as exc:
        return _refuse(exc.errors(include_url=False), skip=0 if kind else 1)
    if isinstance(batch, Inputs):
        features = np.array(batch.inputs, dtype=np.float64).reshape(-1, len(FEATURE_COLUMNS))
        return _json({"outputs": await run_in_threadpool(_service().answer, features)})
    features = _feature_rows(batch.instances)
    return _json({"predictions": await run_in_threadpool(_service().answer, features)})


def _feature_rows(instances: list[Instance]) -> np.ndarray:
    """The rows' features, a column at a time (C loops over the dicts, no Python one)."""
    return contract.feature_matrix(
        *[
            np.fromiter(map(itemgetter(name), instances), np.float64, len(instances))
            for name in FEATURE_COLUMNS
        ]
    )


@http.get(
    "/model", summary="Which model answers", response_model=ModelInfo, responses={"default": OTHER_ERROR}
)
async def model() -> Response:
    service = _service()
    table = service.forecasts
    return _json(
        {**service.serving.info.model_dump(), "forecast": table.info.model_dump() if table else None}
    )


Symbol = Annotated[
    str,
    Query(
        pattern=forecasts.SYMBOL_PATTERN,
        description="a ticker, e.g. AAPL (case does not matter)",
        examples=["AAPL"],
    ),
]
NO_FORECAST = "no forecast is loaded: run `stockpipe forecast --out OUT` (or `stockpipe run`) and serve OUT"


@http.get(
    "/forecast",
    summary="A symbol's volume in the next session, with its 10-90% range",
    response_model=forecasts.Forecast,
    responses=FORECAST_ERRORS,
)
async def forecast_get(symbol: Symbol) -> Response:
    table = _service().forecasts
    key = symbol.upper()
    if table is None:
        return _error([], 404, NO_FORECAST)
    body = table.bodies.get(key)
    if body is None:
        return _error([], 404, table.why_not(key))
    return Response(body, media_type="application/json")


@http.post(
    "/forecast",
    summary=f"Forecasts for many symbols at once (up to {forecasts.MAX_SYMBOLS})",
    response_model=forecasts.ForecastBatch,
    responses=FORECAST_ERRORS,
)
async def forecast_post(body: forecasts.Symbols) -> Response:
    table = _service().forecasts
    if table is None:
        return _error([], 404, NO_FORECAST)
    found, missing = [], []
    for symbol in body.symbols:
        row = table.rows.get(symbol.upper())
        if row is None:
            missing.append({"symbol": symbol, "error": table.why_not(symbol.upper())})
        else:
            found.append(row.model_dump())
    return _json({"forecasts": found, "not_found": missing})


def _model_info(tag: str, card: contract.ModelCard) -> ModelInfo:
    return ModelInfo(
        tag=tag,
        version=card.version,
        follows=FOLLOW or None,
        features=card.features,
        target=card.target,
        target_transform=card.target_transform,
        objective=card.objective,
        training_window=card.training_window,
        holdout=Holdout(
            cutoff=card.holdout_cutoff, model=card.metrics.time_split, baseline=card.metrics.baseline
        ),
        trained=card.created,
        model_sha256=card.model_sha256,
        data_hash=card.data_hash,
    )
