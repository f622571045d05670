"""What every Ray Train worker runs: read its own share of the stage-2 part files (nothing is
collected on the driver), agree with the other workers on the time split's cutoff, build its
DMatrix shards, and train with XGBoost's collective, so that all workers hold the same model. Each
worker computes error sums on its own test rows; the driver merges them exactly. The same workers
can then train a second model on a random 80/20 split, for comparison only. Results go to files in
the work folder, which is shared storage whenever the output is.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xgboost as xgb
from xgboost import collective

from compute import drift, storage
from compute import model as contract
from compute.layout import MODEL_FILE, part_number
from compute.metrics import ErrorSums
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN
from compute.stages.train import split
from compute.stages.train.results import FitOutcome, FoldOutcome, History, WorkerResult

PLOT_SAMPLE_PER_WORKER = 5_000


def load_shard(parts: list[str], random_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """This worker's rows with both features, and `read`: how many rows its parts hold in all."""
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("x", "volume", "date", "random_test")}
    read, symbols = 0, set()
    for part in parts:
        table = storage.read_parquet(
            part, columns=["Symbol", "Date", TARGET_COLUMN, *FEATURE_COLUMNS], read_dictionary=["Symbol"]
        )
        read += table.num_rows
        table = table.filter(pc.and_(*[pc.is_valid(table.column(c)) for c in FEATURE_COLUMNS]))
        symbols |= set(pc.unique(table.column("Symbol")).to_pylist())
        dates = table.column("Date").cast(pa.date32()).to_numpy()  # datetime64[D]
        arrays["x"].append(contract.feature_matrix(*[table.column(c).to_numpy() for c in FEATURE_COLUMNS]))
        arrays["volume"].append(table.column(TARGET_COLUMN).to_numpy().astype(np.float64))
        arrays["date"].append(dates)
        # Seeded by the part's name, so the random split does not depend on the number of workers.
        rng = np.random.default_rng([seed, part_number(storage.basename(part))])
        arrays["random_test"].append(rng.random(len(dates)) < random_fraction)
    if not parts:
        return {"x": np.zeros((0, 2)), "volume": np.zeros(0), "date": np.zeros(0, "datetime64[D]"),
                "random_test": np.zeros(0, bool), "read": np.array(0),
                "symbols": np.array([], str)}  # fmt: skip
    return {
        **{k: np.concatenate(v) for k, v in arrays.items()},
        "read": np.array(read),
        "symbols": np.array(sorted(symbols), str),
    }


def time_test(shard: dict[str, np.ndarray], cutoff: str) -> np.ndarray:
    """The time split's test rows: dated on or after the cutoff."""
    return shard["date"] >= np.datetime64(cutoff)


@dataclass
class Fit:
    booster: xgb.Booster
    predicted: np.ndarray  # on the test rows
    outcome: FitOutcome


def booster_device(booster: xgb.Booster) -> str:
    """The device XGBoost trained on ("cpu", "cuda:0"): without a usable GPU it warns and falls
    back to the CPU, and its config says so, whatever was asked."""
    return str(json.loads(booster.save_config())["learner"]["generic_param"]["device"])


def fit_split(
    params: dict[str, Any],
    rounds: int,
    shard: dict[str, np.ndarray],
    test: np.ndarray,
    train: np.ndarray | None = None,
) -> Fit:
    """Train on `train` (default: every row not in `test`) and evaluate on `test`."""
    train = ~test if train is None else train
    x, volume, m = shard["x"], shard["volume"], shard["x"][:, 0]
    target = contract.to_target(volume, m)
    # Weight by vol_moving_avg²: m²·(ratio error)² is the squared error in shares, so the loss
    # ranks rows as the volume-scale metrics do instead of treating a 100-share stock like AAPL.
    # Normalised to a mean of 1 over all workers' training rows, so that XGBoost's regularisation
    # (lambda, min_child_weight) keeps its usual scale whatever the volumes are.
    sums = collective.allreduce(
        np.array([np.sum(m[train] ** 2), train.sum()], dtype=np.float64), collective.Op.SUM
    )
    weight = m**2 / max(sums[0] / max(sums[1], 1.0), 1e-12)
    names = list(FEATURE_COLUMNS)
    dtrain = xgb.QuantileDMatrix(x[train], target[train], weight=weight[train], feature_names=names)
    dtest = xgb.DMatrix(x[test], target[test], weight=weight[test], feature_names=names)
    history: History = {}
    started = time.perf_counter()
    booster = xgb.train(
        params, dtrain, rounds, evals=[(dtrain, "train"), (dtest, "validation")],
        evals_result=history, verbose_eval=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    predicted = contract.to_volume(booster.inplace_predict(x[test]), m[test])
    outcome = FitOutcome(
        history=history,
        seconds=seconds,
        device=booster_device(booster),
        model=ErrorSums.of(volume[test], predicted),
        baseline=ErrorSums.of(volume[test], m[test]),
        train_rows=int(train.sum()),
        test_rows=int(test.sum()),
    )
    return Fit(booster, predicted, outcome)


def backtest_fold(
    params: dict[str, Any], rounds: int, shard: dict[str, np.ndarray], year: int
) -> FoldOutcome:
    """One walk-forward fold: train on every row before `year`, test on the rows within it."""
    start, end = np.datetime64(f"{year}-01-01"), np.datetime64(f"{year + 1}-01-01")
    test = (shard["date"] >= start) & (shard["date"] < end)
    return FoldOutcome(
        year=year, outcome=fit_split(params, rounds, shard, test, shard["date"] < start).outcome
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker; results go to files in config['work_dir'] (shared storage)."""
    began = time.time()  # wall clock, comparable with the driver's: Ray Train's start-up before it
    context = ray.train.get_context()
    rank, size = context.get_world_rank(), context.get_world_size()
    started = time.perf_counter()
    shard = load_shard(config["parts"][rank::size], config["holdout_fraction"], config["seed"])
    load_seconds = time.perf_counter() - started

    first, per_day = split.rows_per_day(shard["date"], _allreduce)
    cutoff = str(np.datetime64(first + split.cutoff_index(per_day, config["holdout_fraction"]), "D"))
    shard["time_test"] = time_test(shard, cutoff)
    timed = fit_split(config["params"], config["rounds"], shard, shard["time_test"])
    rand = (
        fit_split(config["params"], config["rounds"], shard, shard["random_test"])
        if config["compare_random"]
        else None
    )
    champion = score_champion(config.get("champion"), shard, shard["time_test"])
    years = split.fold_years(first, per_day, config.get("backtest_folds", 0))
    folds = [backtest_fold(config["params"], config["rounds"], shard, year) for year in years]
    # Every row this worker holds, profiled (the new model's bins) and, against the champion's
    # bins, counted (the drift report).
    columns = {
        "vol_moving_avg": shard["x"][:, 0],
        "adj_close_rolling_med": shard["x"][:, 1],
        TARGET_COLUMN: shard["volume"],
    }
    reference = {c: drift.Bins.model_validate(b) for c, b in (config.get("reference_bins") or {}).items()}

    test = shard["time_test"]
    rng = np.random.default_rng([config["seed"], rank])
    pick = rng.choice(int(test.sum()), size=min(PLOT_SAMPLE_PER_WORKER, int(test.sum())), replace=False)
    work = config["work_dir"]
    sample = io.BytesIO()
    np.savez(
        sample,
        actual=shard["volume"][test][pick],
        predicted=timed.predicted[pick],
        baseline=shard["x"][test][pick, 0],
    )
    storage.write_bytes(sample.getvalue(), storage.join(work, f"sample-{rank}.npz"))
    if rank == 0:  # every worker holds the same model after collective training
        model_bytes = bytes(timed.booster.save_raw(raw_format="ubj"))
        storage.write_bytes(model_bytes, storage.join(work, MODEL_FILE))
    result = WorkerResult(
        rank=rank,
        began=began,
        ended=time.time(),  # Ray Train's shutdown comes after it
        load_seconds=load_seconds,
        cutoff=cutoff,
        read=int(shard["read"]),
        rows=len(shard["volume"]),
        train_dates=_span(shard["date"][~test]),
        test_dates=_span(shard["date"][test]),
        time=timed.outcome,
        champion=champion,
        random=rand.outcome if rand else None,
        backtest=folds,
        symbols=shard["symbols"].tolist(),
        profile={c: drift.Profile.of(v) for c, v in columns.items()},
        drift={c: drift.Counts.of(reference[c], v) for c, v in columns.items() if c in reference},
    )
    storage.write_bytes(result.model_dump_json().encode(), storage.join(work, f"rank-{rank}.json"))


def score_champion(
    champion: tuple[bytes, dict[str, Any]] | None, shard: dict[str, np.ndarray], test: np.ndarray
) -> ErrorSums | None:
    """The champion (its model.bin and card) on this worker's test rows, applying its own recorded
    target transform: the gate compares it with the new model on exactly these rows."""
    if champion is None:
        return None
    model, card = champion
    booster = contract.booster(model)
    predicted = contract.predict_volume(booster, contract.ModelCard.model_validate(card), shard["x"][test])
    return ErrorSums.of(shard["volume"][test], predicted)


def _span(dates: np.ndarray) -> list[str] | None:
    return [str(dates.min()), str(dates.max())] if dates.size else None


def _allreduce(array: np.ndarray, op: str) -> np.ndarray:
    return collective.allreduce(array, getattr(collective.Op, op))
