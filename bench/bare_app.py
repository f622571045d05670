"""Reference server for bench/serve.py: the same booster and model contract behind a bare FastAPI
app on uvicorn, written as a person would write it well: async routes (a one-row prediction takes
microseconds), pydantic bodies, no BentoML, no metrics, no validation bounds beyond types.

    python -m bench.bare_app --model output/model --port 3100 [--workers N]

One worker process per CPU by default, each accepting one connection at a time and asking each
connection to close after 100 requests, as the service does (bento/connections.py): without that,
wrk's connections, opened together, could all land on one worker, and the reference measured half
its throughput one round in two. POST /predict_batch takes rows as objects ({"instances": [...]})
or the feature matrix as one tensor ({"inputs": [[vol_moving_avg, adj_close_rolling_med], ...]}),
as the service does.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from compute import model as contract


class Instance(BaseModel):
    vol_moving_avg: float
    adj_close_rolling_med: float


class Batch(BaseModel):
    instances: list[Instance] | None = None
    inputs: list[tuple[float, float]] | None = None


def make_app(model_dir: Path) -> FastAPI:
    booster, card = contract.load(model_dir)
    booster.set_param({"nthread": os.cpu_count() or 1})
    single = booster.copy()
    single.set_param({"nthread": 1})
    app = FastAPI()

    def predict(m: np.ndarray, a: np.ndarray, on: object = booster) -> list[int]:
        volume = contract.predict_volume(on, card, contract.feature_matrix(m, a))  # type: ignore[arg-type]
        return np.rint(volume).astype(np.int64).tolist()

    @app.get("/readyz")
    async def ready() -> str:
        return "ok"

    @app.get("/predict")
    async def predict_get(vol_moving_avg: float, adj_close_rolling_med: float) -> int:
        return predict(np.array([vol_moving_avg]), np.array([adj_close_rolling_med]), single)[0]

    @app.post("/predict_batch")
    async def predict_batch(batch: Batch) -> dict[str, list[int]]:
        if batch.inputs is not None:
            matrix = np.array(batch.inputs, dtype=np.float64)
            return {"outputs": predict(matrix[:, 0], matrix[:, 1])}
        rows = batch.instances or []
        m = np.array([r.vol_moving_avg for r in rows])
        return {"predictions": predict(m, np.array([r.adj_close_rolling_med for r in rows]))}

    return app


def from_env() -> FastAPI:
    """The app for each uvicorn worker process (which cannot receive arguments)."""
    from bento.connections import KeepAliveRequests

    app = make_app(Path(os.environ["BARE_APP_MODEL"]))
    app.add_middleware(KeepAliveRequests, requests=100)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ["BARE_APP_MODEL"] = str(Path(args.model).resolve())
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")  # as bento/service.py: connections spread over workers
    uvicorn.run(
        "bench.bare_app:from_env",
        factory=True,
        workers=args.workers,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )
