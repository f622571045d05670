"""The forecast's pieces on real rows of the sample: the inputs against an independent pandas
reference, the market's reduce against one pass over everything, the exchange calendar's facts on
known sessions, the walk-forward's independence from later rows, and the gate."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from compute.stages.forecast import gate, inputs, market, model
from compute.stages.forecast.calendar import Calendar
from tests.conftest import SAMPLE

SYMBOLS = ("AAPL", "AIA", "ASYS", "DIA")  # ASYS has rows with Low = 0.0


def stage1_rows(symbols: tuple[str, ...] = SYMBOLS, upto: str | None = None) -> pa.Table:
    """Rows of real sample files as stage 1 holds them (sorted by Symbol, then Date)."""
    frames = []
    for symbol in symbols:
        path = next(SAMPLE.glob(f"*/{symbol}.csv"))
        frame = pd.read_csv(path).dropna()
        frame["Symbol"] = symbol
        frames.append(frame)
    df = pd.concat(frames).sort_values(["Symbol", "Date"])
    if upto:
        df = df[df["Date"] <= upto]
    return pa.table({
        "Symbol": df["Symbol"].to_numpy(), "Date": df["Date"].to_numpy(),
        **{c: df[c].to_numpy(np.float32) for c in ("High", "Low", "Adj Close")},
        "Volume": df["Volume"].to_numpy(np.int64),
    })  # fmt: skip


def reference(table: pa.Table, keep: int) -> pd.DataFrame:
    """Plain pandas per symbol: shift, rolling(k).mean(), rolling(30).std(ddof=0)."""
    df = table.to_pandas()
    g = df.groupby("Symbol", sort=False)
    lv = np.log1p(df["Volume"].astype(float))
    out = pd.DataFrame({"Symbol": df["Symbol"], "Date": df["Date"]})
    for k in inputs.LAGS:
        out[f"lag{k}"] = lv.groupby(df["Symbol"]).shift(k - 1)
    for k in inputs.MEANS:
        out[f"mean{k}"] = lv.groupby(df["Symbol"]).rolling(k).mean().reset_index(level=0, drop=True)
    out["std30"] = lv.groupby(df["Symbol"]).rolling(30).std(ddof=0).reset_index(level=0, drop=True)
    zero = (df["Volume"] == 0).astype(float)
    out["zeros30"] = zero.groupby(df["Symbol"]).rolling(30).mean().reset_index(level=0, drop=True)
    adj = df["Adj Close"].astype(float)
    out["ret"] = np.log(adj / adj.groupby(df["Symbol"]).shift(1))
    with np.errstate(divide="ignore"):
        out["range"] = np.log(df["High"].astype(float) / df["Low"].astype(float)).replace(np.inf, np.nan)
    vol = df["Volume"].astype(float)
    out["naive5"] = vol.groupby(df["Symbol"]).rolling(5).mean().reset_index(level=0, drop=True)
    out["naive30"] = vol.groupby(df["Symbol"]).rolling(30).mean().reset_index(level=0, drop=True)
    out["volume"] = df["Volume"]
    out["next_volume"] = df.groupby("Symbol")["Volume"].shift(-1)
    out["next_date"] = g["Date"].shift(-1)
    position, after = g.cumcount(), g.cumcount(ascending=False)
    return out[(position >= inputs.LOOK_BACK - 1) & (after < keep)].reset_index(drop=True)


def test_inputs_match_a_pandas_reference_per_symbol() -> None:
    table = stage1_rows()
    got, _ = inputs.compute(table, keep=300)
    want = reference(table, keep=300)
    assert got.num_rows == len(want) > 4 * 200
    assert got.column("Symbol").to_pylist() == want["Symbol"].tolist()
    assert [str(d) for d in got.column("Date").to_pylist()] == want["Date"].tolist()
    nexts = [None if d is None else str(d) for d in got.column("next_date").to_pylist()]
    assert nexts == [None if pd.isna(d) else d for d in want["next_date"]]
    for name in [f.name for f in inputs.INPUTS if f.name not in ("Symbol", "Date", "next_date")]:
        ours = got.column(name).to_numpy(zero_copy_only=False).astype(float)
        theirs = want[name].to_numpy(dtype=float)
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=f"{name}: missing values")
        tolerance = (
            1e-9 if pa.types.is_integer(got.schema.field(name).type) or name.startswith("naive") else 2e-6
        )
        np.testing.assert_allclose(ours, theirs, rtol=tolerance, atol=tolerance, equal_nan=True, err_msg=name)
    # A symbol's last row has no next session yet.
    last = got.to_pandas().groupby("Symbol").tail(1)
    assert last["next_volume"].isna().all() and last["next_date"].isna().all()


def test_the_market_reduce_over_parts_equals_one_pass_over_everything() -> None:
    table = stage1_rows()
    whole = market.combine([inputs.compute(table, keep=10)[1]])
    halves = [table.filter(pa.array(np.isin(table.column("Symbol").to_numpy(zero_copy_only=False), part)))
              for part in (SYMBOLS[:2], SYMBOLS[2:])]  # fmt: skip
    split = market.combine([inputs.compute(half, keep=10)[1] for half in halves])
    assert whole.column("Date").to_pylist() == split.column("Date").to_pylist()
    np.testing.assert_allclose(whole.column("mean").to_numpy(), split.column("mean").to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        whole.column("relative").to_numpy(), split.column("relative").to_numpy(), rtol=1e-9, equal_nan=True
    )
    df = table.to_pandas()
    day = df["Date"].iloc[-1]
    assert whole.column("symbols").to_pylist()[-1] == (df["Date"] == day).sum()


@pytest.mark.parametrize(
    ("day", "facts"),
    [
        ("2020-11-27", {"half_day": 1, "gap_days": 2, "weekday": 4}),  # the day after Thanksgiving
        ("2020-12-24", {"half_day": 1}),
        ("2020-12-28", {"half_day": 0, "gap_days": 4, "weekday": 0}),  # after Christmas
        ("2020-12-18", {"expiry": 1, "quarterly_expiry": 1}),
        ("2021-01-15", {"expiry": 1, "quarterly_expiry": 0}),
        ("2019-04-18", {"expiry": 1}),  # the third Friday was Good Friday: expiry moved to Thursday
        ("2020-03-31", {"month_end": 1, "quarter_end": 1}),
        ("2021-01-04", {"month_start": 1, "gap_days": 4}),
        ("2018-12-06", {"gap_days": 2}),  # the exchange closed on 5 December 2018 (a state funeral)
    ],
)
def test_the_calendar_knows_the_sessions_that_move_volume(day: str, facts: dict[str, int]) -> None:
    calendar = Calendar.between(np.datetime64("2018-01-01"), np.datetime64("2021-01-27"))
    got = calendar.facts_of(np.array([day], "datetime64[D]"))
    assert {name: int(got[name][0]) for name in facts} == facts


def test_the_next_session_is_the_exchanges() -> None:
    calendar = Calendar.between(np.datetime64("2020-01-01"), np.datetime64("2021-01-27"))
    days = np.array(["2020-11-25", "2020-12-24", "2020-12-31", "2021-01-15", "2021-01-27"], "datetime64[D]")
    assert calendar.next_session(days).astype(str).tolist() == [
        "2020-11-27", "2020-12-28", "2021-01-04", "2021-01-19", "2021-01-28",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="not XNYS sessions"):
        calendar.facts_of(np.array(["2020-12-25"], "datetime64[D]"))


def rows_of(table: pa.Table) -> tuple[model.Rows, Calendar]:
    built, share = inputs.compute(table, keep=10_000)
    columns = {n: built.column(n).to_numpy(zero_copy_only=False) for n in built.column_names}
    columns["Symbol"] = built.column("Symbol").combine_chunks()
    for name in ("Date", "next_date"):
        columns[name] = (
            built.column(name).cast(pa.timestamp("s")).to_numpy(zero_copy_only=False).astype("datetime64[D]")
        )
    for name in ("volume", "next_volume"):
        columns[name] = built.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)
    whole = market.combine([share])
    calendar = Calendar.between(columns["Date"].min(), columns["Date"].max())
    relative = (whole.column("Date").to_numpy().astype("datetime64[D]"), whole.column("relative").to_numpy())
    return model.rows_of(columns, relative, calendar), calendar


PARAMS = model.params(type("S", (), {"forecast_max_depth": 4, "forecast_eta": 0.3, "seed": 0})(), "cpu", 1)


def test_a_forecast_for_day_d_is_the_same_whether_or_not_rows_after_d_exist() -> None:
    """Cut the rows at D: the folds whose forecasts end by D forecast exactly as before."""
    full, calendar = rows_of(stage1_rows())
    blocks = model.fold_blocks(calendar.sessions, np.datetime64("2021-01-27"), 3, 5)
    day = blocks[1][-1]  # the second fold's last session
    cut, cut_calendar = rows_of(stage1_rows(upto=str(day)))
    before = model.walk_forward(full, calendar.sessions, blocks[:2], PARAMS, 20, 120, keep_forecasts=True)
    after = model.walk_forward(cut, cut_calendar.sessions, blocks[:2], PARAMS, 20, 120, keep_forecasts=True)
    for one, other in zip(before, after, strict=True):
        assert one.train_rows == other.train_rows and one.model.n == other.model.n > 0
        assert one.tested is not None and other.tested is not None
        assert one.tested.symbol.equals(other.tested.symbol)
        np.testing.assert_array_equal(one.forecast, other.forecast)
    # The final model of the cut data is the fold model of the full data trained up to the same cutoff.
    window = model.window(cut, day, cut_calendar.sessions, 120)
    final = model.fit(cut.take(window), PARAMS, 20)
    same = model.fit(full.take(model.window(full, day, calendar.sessions, 120)), PARAMS, 20)
    assert bytes(final.booster.save_raw()) == bytes(same.booster.save_raw())


def test_a_model_that_loses_to_a_naive_forecast_is_not_what_answers() -> None:
    rows, calendar = rows_of(stage1_rows())
    blocks = model.fold_blocks(calendar.sessions, np.datetime64("2021-01-27"), 2, 5)
    folds = model.walk_forward(rows, calendar.sessions, blocks, PARAMS, 30, 120)
    walk = gate.walk_forward(folds)
    assert walk.model.forecasts == sum(f.model.n for f in folds) > 0
    assert set(walk.naive) == {"last", "mean5", "mean30"}
    assert walk.best_naive == min(walk.naive, key=lambda n: walk.naive[n].mae)
    # A forecaster one round deep cannot beat the naive forecasts: the naive one answers, with a
    # range from its own errors.
    weak = model.walk_forward(rows, calendar.sessions, blocks, {**PARAMS, "eta": 0.01}, 1, 120)
    decision = gate.decide(gate.walk_forward(weak), "f" * 16, "2021-01-27", weak)
    assert not decision.published_model and decision.answers == f"naive:{gate.walk_forward(weak).best_naive}"
    assert "did not beat it" in decision.why
    low, high = decision.naive_range
    assert low < 0 < high
