"""The New York Stock Exchange's sessions, from the exchange-calendars library (holidays, half days
and the closures for storms and state funerals, back to 1962), and the facts of each session that
move a day's volume: a half day, the days since the session before (a holiday), the day of the
week, the monthly options expiry (the third Friday, or the session before it when the exchange is
shut that day), a quarterly one (index rebalances fall on it), the first and last session of a
month and of a quarter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXCHANGE = "XNYS"
FIRST_SESSION = "1962-01-02"  # the library's XNYS sessions are checked back to here

# A session's facts, in the order the forecaster's features name them.
FACTS = (
    "half_day",
    "gap_days",
    "weekday",
    "expiry",
    "quarterly_expiry",
    "month_end",
    "quarter_end",
    "month_start",
)


@dataclass(frozen=True)
class Calendar:
    sessions: np.ndarray  # datetime64[D], ascending
    facts: dict[str, np.ndarray]  # per session, float32

    @classmethod
    def between(cls, first: np.datetime64, last: np.datetime64) -> Calendar:
        """The sessions from `first` (or the first known) to a month past `last`."""
        import exchange_calendars as xc
        import pandas as pd

        start = max(pd.Timestamp(first) - pd.Timedelta(days=40), pd.Timestamp(FIRST_SESSION))
        end = pd.Timestamp(last) + pd.Timedelta(days=40)
        exchange = xc.get_calendar(EXCHANGE, start=start, end=end)
        sessions = exchange.sessions.values.astype("datetime64[D]")
        early = np.isin(sessions, exchange.early_closes.values.astype("datetime64[D]"))
        return cls(sessions, _facts(sessions, early))

    def next_session(self, dates: np.ndarray) -> np.ndarray:
        """The first session after each date (NaT past the calendar's end)."""
        index = np.searchsorted(self.sessions, dates, side="right")
        out = np.full(len(dates), np.datetime64("NaT"), "datetime64[D]")
        inside = index < len(self.sessions)
        out[inside] = self.sessions[index[inside]]
        return out

    def index(self, dates: np.ndarray) -> np.ndarray:
        """Each date's position among the sessions; -1 for a date that is not a session."""
        index = np.searchsorted(self.sessions, dates)
        found = (index < len(self.sessions)) & (
            self.sessions[np.minimum(index, len(self.sessions) - 1)] == dates
        )
        return np.where(found, index, -1)

    def facts_of(self, dates: np.ndarray) -> dict[str, np.ndarray]:
        """The facts of each date, which must be a session."""
        index = self.index(dates)
        if (index < 0).any():
            raise ValueError(f"not {EXCHANGE} sessions: {sorted({str(d) for d in dates[index < 0]})[:5]}")
        return {name: values[index] for name, values in self.facts.items()}


def _facts(sessions: np.ndarray, early: np.ndarray) -> dict[str, np.ndarray]:
    n = len(sessions)
    months = sessions.astype("datetime64[M]")
    month_number = months.astype(int) % 12 + 1
    gap = np.zeros(n)
    gap[1:] = (sessions[1:] - sessions[:-1]).astype(int)
    gap[0] = np.nan
    weekday = (sessions.astype("datetime64[D]").astype(int) + 3) % 7  # 1970-01-01 was a Thursday
    # The third Friday of each session's month, and the last session on or before it.
    first_day = months.astype("datetime64[D]")
    first_weekday = (first_day.astype(int) + 3) % 7
    third_friday = first_day + ((4 - first_weekday) % 7 + 14).astype("timedelta64[D]")
    on_or_before = np.searchsorted(sessions, third_friday, side="right") - 1
    expiry = np.zeros(n, bool)
    expiry[on_or_before[on_or_before >= 0]] = True
    expiry &= sessions <= third_friday  # only that month's own expiry
    new_month = np.concatenate([[True], months[1:] != months[:-1]])
    month_end = np.concatenate([new_month[1:], [False]])  # the calendar runs past the data's end
    quarter_month = np.isin(month_number, (3, 6, 9, 12))
    return {
        "half_day": early.astype(np.float32),
        "gap_days": gap.astype(np.float32),
        "weekday": weekday.astype(np.float32),
        "expiry": expiry.astype(np.float32),
        "quarterly_expiry": (expiry & quarter_month).astype(np.float32),
        "month_end": month_end.astype(np.float32),
        "quarter_end": (month_end & quarter_month).astype(np.float32),
        "month_start": new_month.astype(np.float32),
    }
