"""What a training worker runs, alone in one Ray task or as one of Ray Train's workers: read its
share of the stage-2 part files (nothing is collected on the driver), agree with the other workers
on the time split's cutoff, build its DMatrix shards, and train, with XGBoost's collective when
there are several workers, so that all of them hold the same model. Each worker computes error
sums on its own test rows; the driver merges them exactly. The same worker can then train a second
model on a random 80/20 split, for comparison only, and walk-forward folds. Results go to files in
the work folder, which is shared storage whenever the output is.

On a GPU the numeric columns are copied to the device once (compute/arrays.py) and everything
after the read runs there: the quantile sketch, boosting, predictions, the champion's scoring and
the drift profiles.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import xgboost as xgb

from compute import arrays, drift, storage
from compute import model as contract
from compute.cpus import all_cpus
from compute.layout import MODEL_FILE, part_number
from compute.metrics import ErrorSums
from compute.phases import Phases
from compute.schema import FEATURE_COLUMNS, TARGET_COLUMN
from compute.stages.train import split
from compute.stages.train.results import FitOutcome, FoldOutcome, History, WorkerResult

PLOT_SAMPLE_PER_WORKER = 5_000


@dataclass
class Shard:
    """A worker's rows with both features, from its share of the part files, on the host."""

    x: np.ndarray  # (n, 2): vol_moving_avg, adj_close_rolling_med
    volume: np.ndarray  # float64
    date: np.ndarray  # datetime64[D]
    random_test: np.ndarray | None  # the random split's test rows, when asked for
    read: int  # rows in its parts, with features or not
    symbols: list[str]  # that have a row with both features
    profile: dict[str, drift.Profile]  # per profiled column (compute/drift.py)
    counts: dict[str, drift.Counts]  # per column, over the champion's bins, when given


def _read_part(
    part: str, random_fraction: float | None, seed: int, reference: dict[str, drift.Bins]
) -> Shard:
    table = storage.read_parquet(
        part, columns=["Symbol", "Date", TARGET_COLUMN, *FEATURE_COLUMNS], read_dictionary=["Symbol"]
    )
    read = table.num_rows
    table = table.filter(pc.and_(*[pc.is_valid(table.column(c)) for c in FEATURE_COLUMNS]))
    dates = table.column("Date").cast(pa.date32()).to_numpy()  # datetime64[D]
    x = contract.feature_matrix(*[table.column(c).to_numpy() for c in FEATURE_COLUMNS])
    volume = table.column(TARGET_COLUMN).to_numpy().astype(np.float64)
    random_test = None
    if random_fraction is not None:
        # Seeded by the part's name, so the random split does not depend on the number of workers.
        rng = np.random.default_rng([seed, part_number(storage.basename(part))])
        random_test = rng.random(len(dates)) < random_fraction
    # Every row, profiled here while the other parts are read (the new model's bins) and counted
    # over the champion's bins (the drift report): histograms add up across parts.
    columns = {"vol_moving_avg": x[:, 0], "adj_close_rolling_med": x[:, 1], TARGET_COLUMN: volume}
    return Shard(
        x=x,
        volume=volume,
        date=dates,
        random_test=random_test,
        read=read,
        symbols=pc.unique(table.column("Symbol")).to_pylist(),
        profile={c: drift.Profile.of(v) for c, v in columns.items()},
        counts={c: drift.Counts.of(reference[c], v) for c, v in columns.items() if c in reference},
    )


def load_shard(
    parts: list[str],
    random_fraction: float | None,
    seed: int,
    threads: int = 1,
    reference: dict[str, drift.Bins] | None = None,
) -> Shard:
    """This worker's rows with both features, its parts read `threads` at a time (Arrow and numpy
    release the GIL); `random_fraction`: the random split's test share, when it is asked for;
    `reference`: the champion's bins to count the rows over."""
    reference = reference or {}
    if not parts:
        empty = np.zeros(0)
        profile = {c: drift.Profile.of(empty) for c in drift.COLUMNS}
        counts = {c: drift.Counts.of(reference[c], empty) for c in drift.COLUMNS if c in reference}
        randoms = None if random_fraction is None else np.zeros(0, bool)
        return Shard(np.zeros((0, 2)), empty, np.zeros(0, "datetime64[D]"), randoms, 0, [], profile, counts)
    with ThreadPoolExecutor(max(threads, 1)) as pool:
        read = list(pool.map(lambda part: _read_part(part, random_fraction, seed, reference), parts))
    return Shard(
        x=np.concatenate([r.x for r in read]),
        volume=np.concatenate([r.volume for r in read]),
        date=np.concatenate([r.date for r in read]),
        random_test=None if random_fraction is None else np.concatenate([r.random_test for r in read]),  # type: ignore[misc]
        read=sum(r.read for r in read),
        symbols=sorted({s for r in read for s in r.symbols}),
        profile={c: drift.Profile.merged([r.profile[c] for r in read]) for c in drift.COLUMNS},
        counts={c: drift.Counts.merged([r.counts[c] for r in read]) for c in reference},
    )


def time_test(shard: Shard, cutoff: str) -> np.ndarray:
    """The time split's test rows: dated on or after the cutoff."""
    return shard.date >= np.datetime64(cutoff)


@dataclass
class Rows:
    """A shard's numbers where XGBoost works on them: numpy arrays, or CuPy arrays on the GPU."""

    xp: ModuleType
    x: Any  # (n, 2): vol_moving_avg, adj_close_rolling_med
    volume: Any
    target: Any  # what the booster learns (compute/model.py)

    @classmethod
    def of(cls, shard: Shard, device: str) -> Rows:
        xp = arrays.module_for(device)
        x, volume = xp.asarray(shard.x), xp.asarray(shard.volume)
        return cls(xp, x, volume, contract.to_target(volume, x[:, 0]))


@dataclass
class Fit:
    booster: xgb.Booster
    predicted: np.ndarray  # on the test rows, on the host
    outcome: FitOutcome


def booster_device(booster: xgb.Booster) -> str:
    """The device XGBoost trained on ("cpu", "cuda:0"): without a usable GPU it warns and falls
    back to the CPU, and its config says so, whatever was asked."""
    return str(json.loads(booster.save_config())["learner"]["generic_param"]["device"])


def fit_split(
    params: dict[str, Any],
    rounds: int,
    shard: Shard,
    rows: Rows,
    test: np.ndarray,
    train: np.ndarray | None = None,
    reduce: split.Reduce = split.alone,
    phases: Phases | None = None,
) -> Fit:
    """Train on `train` (default: every row not in `test`) and evaluate on `test` (host masks)."""
    phases = phases or Phases()
    train = ~test if train is None else train
    xp, x, m = rows.xp, rows.x, rows.x[:, 0]
    on_train, on_test = xp.asarray(train), xp.asarray(test)
    with phases.timed("dmatrix"):
        # Weight by vol_moving_avg²: m²·(ratio error)² is the squared error in shares, so the loss
        # ranks rows as the volume-scale metrics do instead of treating a 100-share stock like
        # AAPL. Normalised to a mean of 1 over all workers' training rows, so that XGBoost's
        # regularisation (lambda, min_child_weight) keeps its usual scale whatever the volumes are.
        squares = m**2
        sums = reduce(np.array([float(squares[on_train].sum()), float(train.sum())], np.float64), "SUM")
        weight = squares / max(sums[0] / max(sums[1], 1.0), 1e-12)
        names = list(FEATURE_COLUMNS)
        dtrain = xgb.QuantileDMatrix(
            x[on_train], rows.target[on_train], weight=weight[on_train], feature_names=names
        )
        dtest = xgb.DMatrix(x[on_test], rows.target[on_test], weight=weight[on_test], feature_names=names)
    history: History = {}
    with phases.timed("boosting"):
        started = time.perf_counter()
        booster = xgb.train(
            params, dtrain, rounds, evals=[(dtrain, "train"), (dtest, "validation")],
            evals_result=history, verbose_eval=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
    del dtrain, dtest
    with phases.timed("predict"):
        # Predicted where the rows are, summed on the host: CuPy compiles each kernel it first
        # meets (about 5 s for the error sums' on a new machine), numpy sums 6M rows in 0.3 s.
        predicted = arrays.to_host(contract.to_volume(booster.inplace_predict(x[on_test]), m[on_test]))
        volume = shard.volume[test]
        outcome = FitOutcome(
            history=history,
            seconds=seconds,
            device=booster_device(booster),
            model=ErrorSums.of(volume, predicted),
            baseline=ErrorSums.of(volume, shard.x[test, 0]),
            train_rows=int(train.sum()),
            test_rows=int(test.sum()),
        )
    return Fit(booster, predicted, outcome)


def backtest_fold(
    params: dict[str, Any],
    rounds: int,
    shard: Shard,
    rows: Rows,
    year: int,
    reduce: split.Reduce,
    phases: Phases,
) -> FoldOutcome:
    """One walk-forward fold: train on every row before `year`, test on the rows within it."""
    start, end = np.datetime64(f"{year}-01-01"), np.datetime64(f"{year + 1}-01-01")
    test = (shard.date >= start) & (shard.date < end)
    fitted = fit_split(params, rounds, shard, rows, test, shard.date < start, reduce, phases)
    return FoldOutcome(year=year, outcome=fitted.outcome)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train's workers: the shard by rank, combined with XGBoost's collective."""
    from xgboost import collective

    def allreduce(array: np.ndarray, op: str) -> np.ndarray:
        return collective.allreduce(array, getattr(collective.Op, op))

    context = ray.train.get_context()
    train_shard(config, context.get_world_rank(), context.get_world_size(), allreduce)


def train_alone(config: dict[str, Any]) -> None:
    """The single layout's Ray task: every part, nothing to combine, on every CPU it holds."""
    with all_cpus(int(config["params"].get("nthread") or os.cpu_count() or 1)):
        train_shard(config, 0, 1, split.alone)


def train_shard(config: dict[str, Any], rank: int, size: int, reduce: split.Reduce) -> None:
    """One worker's work; its results go to files in config['work_dir'] (shared storage)."""
    began = time.time()  # wall clock, comparable with the driver's: Ray's start-up before it
    params, rounds = config["params"], config["rounds"]
    threads = int(params.get("nthread") or os.cpu_count() or 1)
    pa.set_cpu_count(threads)  # Arrow sized its pool from OMP_NUM_THREADS, which Ray may have set to 1
    phases = Phases()
    # CuPy's import and the GPU's context while the parts are read (nothing on the CPU).
    warming = ThreadPoolExecutor(1).submit(arrays.warm, str(params["device"]))
    reference = {c: drift.Bins.model_validate(b) for c, b in (config.get("reference_bins") or {}).items()}
    random_fraction = config["holdout_fraction"] if config["compare_random"] else None
    with phases.timed("read"):
        shard = load_shard(config["parts"][rank::size], random_fraction, config["seed"], threads, reference)
        warming.result()
        rows = Rows.of(shard, str(params["device"]))

    first, per_day = split.rows_per_day(shard.date, reduce)
    cutoff = split.cutoff_date(first, per_day, config["holdout_fraction"])
    test = time_test(shard, cutoff)
    timed = fit_split(params, rounds, shard, rows, test, None, reduce, phases)
    rand = None
    if shard.random_test is not None:
        rand = fit_split(params, rounds, shard, rows, shard.random_test, None, reduce, phases)
    with phases.timed("champion"):
        champion = score_champion(config.get("champion"), shard, rows, test)
    years = split.fold_years(first, per_day, config.get("backtest_folds", 0))
    folds_phases = Phases()
    with phases.timed("folds"):
        folds = [backtest_fold(params, rounds, shard, rows, year, reduce, folds_phases) for year in years]
    with phases.timed("write"):
        rng = np.random.default_rng([config["seed"], rank])
        tested = int(test.sum())
        pick = rng.choice(tested, size=min(PLOT_SAMPLE_PER_WORKER, tested), replace=False)
        work = config["work_dir"]
        sample = io.BytesIO()
        np.savez(
            sample,
            actual=shard.volume[test][pick],
            predicted=timed.predicted[pick],
            baseline=shard.x[test][pick, 0],
        )
        storage.write_bytes(sample.getvalue(), storage.join(work, f"sample-{rank}.npz"))
        if rank == 0:  # every worker holds the same model after collective training
            model_bytes = bytes(timed.booster.save_raw(raw_format="ubj"))
            storage.write_bytes(model_bytes, storage.join(work, MODEL_FILE))
    result = WorkerResult(
        rank=rank,
        began=began,
        ended=time.time(),  # Ray's shutdown of the workers comes after it
        load_seconds=phases.seconds["read"],
        phases={k: round(v, 3) for k, v in phases.seconds.items()},
        data_on="gpu" if rows.xp is not np else "host",
        peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,  # Linux: KiB
        cutoff=cutoff,
        read=shard.read,
        rows=len(shard.volume),
        train_dates=_span(shard.date[~test]),
        test_dates=_span(shard.date[test]),
        time=timed.outcome,
        champion=champion,
        random=rand.outcome if rand else None,
        backtest=folds,
        symbols=shard.symbols,
        profile=shard.profile,
        drift=shard.counts,
    )
    storage.write_bytes(result.model_dump_json().encode(), storage.join(work, f"rank-{rank}.json"))


def score_champion(
    champion: tuple[bytes, dict[str, Any]] | None, shard: Shard, rows: Rows, test: np.ndarray
) -> ErrorSums | None:
    """The champion (its model.bin and card) on this worker's test rows, applying its own recorded
    target transform: the gate compares it with the new model on exactly these rows."""
    if champion is None:
        return None
    model, card = champion
    booster = contract.booster(model)
    if rows.xp is not np:  # predict where the rows are (a CPU booster would copy them back)
        booster.set_param({"device": "cuda"})
    features = rows.x[rows.xp.asarray(test)]
    predicted = contract.predict_volume(booster, contract.ModelCard.model_validate(card), features)
    return ErrorSums.of(shard.volume[test], arrays.to_host(predicted))


def _span(dates: np.ndarray) -> list[str] | None:
    return [str(dates.min()), str(dates.max())] if dates.size else None
