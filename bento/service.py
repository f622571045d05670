"""BentoML service: predicted daily trading volume from the two rolling features.

    GET  /predict?vol_moving_avg=51318&adj_close_rolling_med=216   -> 200, JSON integer
    POST /predict        {"vol_moving_avg": 51318, "adj_close_rolling_med": 216}
    POST /predict_batch  {"vol_moving_avg": [...], "adj_close_rolling_med": [...]}  -> [int, ...]

The model (booster + metadata) comes from the BentoML model store. Which one is the service's
Bento argument `model_tag`: `stockpipe serve` passes it (`bentoml serve ... --arg model_tag=TAG`),
a built Bento records the one it was built with, and a plain `bentoml serve` takes the latest
`stock-volume`. Every bad input is a 4xx whose message names
the field and the problem; the service never answers 500 for bad input or shows a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from compute import model as contract

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


arguments = bentoml.use_arguments(ServiceArguments)


class Features(BaseModel):
    vol_moving_avg: VolMovingAvg
    adj_close_rolling_med: AdjCloseMedian


class Batch(bentoml.IODescriptor):
    vol_moving_avg: Annotated[list[VolMovingAvg], Field(min_length=1, max_length=MAX_BATCH)]
    adj_close_rolling_med: Annotated[list[AdjCloseMedian], Field(min_length=1, max_length=MAX_BATCH)]

    @model_validator(mode="after")
    def _same_length(self) -> Batch:
        if len(self.vol_moving_avg) != len(self.adj_close_rolling_med):
            raise ValueError(
                f"vol_moving_avg has {len(self.vol_moving_avg)} values but adj_close_rolling_med has "
                f"{len(self.adj_close_rolling_med)}: the lists must have the same length"
            )
        return self


# GET and POST /predict live in a FastAPI app mounted on the service, because @bentoml.api routes
# are POST only and one path's methods must come from one app for the OpenAPI document to list both.
http = FastAPI(title="stockpipe /predict")


@http.exception_handler(RequestValidationError)
async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """400, as BentoML answers for its own routes, with one line per problem naming the field."""
    problems = [f"{_field(e)}: {e['msg']}" for e in exc.errors()]
    return JSONResponse(status_code=400, content={"error": "; ".join(problems), "detail": problems})


@http.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own 4xx (e.g. a body it cannot decode at all) in the same shape as ours."""
    message = "body: not valid JSON" if "parsing the body" in str(exc.detail) else str(exc.detail)
    return JSONResponse(status_code=exc.status_code, content={"error": message}, headers=exc.headers)


def _field(error: dict) -> str:
    """'vol_moving_avg' from loc ('query', 'vol_moving_avg'); 'body' for a body that is not JSON."""
    loc = [str(part) for part in error.get("loc", ())[1:]]
    return "body" if error.get("type") == "json_invalid" or not loc else ".".join(loc)


# Loopback by default, also for a plain `bentoml serve`: exposing it is an explicit --host choice.
# One worker process per CPU: with one, GET /predict at c=8 managed about 760 requests/s here.
@bentoml.service(
    name="stockpipe",
    workers="cpu_count",
    traffic={"timeout": 30},
    http={"host": "127.0.0.1", "port": 3000},
)
@bentoml.asgi_app(http, path="/")
class VolumeService:
    model_ref = bentoml.models.BentoModel(arguments.model_tag)

    def __init__(self) -> None:
        self.booster, self.metadata = contract.load(Path(self.model_ref.path))
        self.booster.set_param({"nthread": os.cpu_count() or 1})  # training saved its per-worker count
        # One row gains nothing from threads, and waking them costs more than the prediction.
        self.single = self.booster.copy()
        self.single.set_param({"nthread": 1})

    def _predict(self, vol_moving_avg: np.ndarray, adj_close_rolling_med: np.ndarray) -> list[int]:
        features = contract.feature_matrix(vol_moving_avg, adj_close_rolling_med)
        booster = self.single if len(features) == 1 else self.booster
        volume = contract.predict_volume(booster, self.metadata, features)
        return np.rint(volume).astype(np.int64).tolist()

    def _predict_one(self, features: Features) -> int:
        return self._predict(np.array([features.vol_moving_avg]), np.array([features.adj_close_rolling_med]))[
            0
        ]

    # async: a one-row prediction takes microseconds, less than handing it to a thread pool.
    @http.get("/predict", summary="Predicted volume for one pair of features, as query parameters")
    async def predict_get(self, features: Annotated[Features, Query()]) -> int:
        return self._predict_one(features)

    @http.post("/predict", summary="Predicted volume for one pair of features, as a JSON object")
    async def predict_post(self, features: Features) -> int:
        return self._predict_one(features)

    @bentoml.api(route="/predict_batch", input_spec=Batch)
    def predict_batch(self, vol_moving_avg: list[float], adj_close_rolling_med: list[float]) -> list[int]:
        """Predicted volumes for equal-length lists of features (up to 100,000 rows), vectorised."""
        return self._predict(np.asarray(vol_moving_avg), np.asarray(adj_close_rolling_med))
