"""Trend forecasts (insights/forecast.py) on synthetic seasonal data whose noise is known: the backtested error
must match what the model really achieves on the future, and both must match the noise."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pytest

from headwater.insights import forecast as fc

SIGMA = 8.0
HALF_NORMAL = SIGMA * math.sqrt(2 / math.pi)  # the mean absolute value of N(0, SIGMA): the best MAE possible


def seasonal(n: int, period: int, seed: int, sigma: float = SIGMA) -> np.ndarray:
    """Level 200, a slow trend, a seasonal wave of amplitude 50, Gaussian noise of deviation `sigma`."""
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return 200 + 0.05 * t + 50 * np.sin(2 * np.pi * t / period) + rng.normal(0, sigma, n)


def test_daily_backtest_error_matches_the_noise_and_the_real_future_error() -> None:
    series = seasonal(365 + 28, 7, seed=3)
    past, future = series[:365], series[365:379]
    answer = fc.forecast(past.tolist(), datetime(2026, 1, 1), "day", 14)
    backtest = answer["backtest"]
    assert backtest["origins"] == 4 and backtest["horizon"] == 14
    # nothing beats the noise: the error is near SIGMA·√(2/π) = 6.4, and not much more
    assert HALF_NORMAL * 0.7 < backtest["mae"] < HALF_NORMAL * 1.5
    assert backtest["mape"] == pytest.approx(backtest["mae"] / np.mean(np.abs(past[-42:])) * 100, rel=0.25)
    yhat = np.array([p[1] for p in answer["points"]])
    real_mae = float(np.mean(np.abs(future - yhat)))
    assert HALF_NORMAL * 0.5 < real_mae < HALF_NORMAL * 1.6
    # the 95 % interval: about ±1.96 SIGMA wide, holding (nearly) every future point
    low, high = np.array([p[2] for p in answer["points"]]), np.array([p[3] for p in answer["points"]])
    assert np.all(low <= yhat) and np.all(yhat <= high)
    assert 2 * 1.96 * SIGMA * 0.7 < float(np.median(high - low)) < 2 * 1.96 * SIGMA * 1.6
    assert np.mean((low <= future) & (future <= high)) >= 12 / 14
    # dates: one per day from the start given
    assert [p[0] for p in answer["points"][:2]] == ["2026-01-01T00:00:00", "2026-01-02T00:00:00"]
    assert answer["interval"] == 0.95 and "seasonality of 7" in answer["model"]


def test_fixed_parameter_backtest_is_close_to_refitting_at_every_origin() -> None:
    series = seasonal(200, 7, seed=5)
    fitted = fc.fit(series, 7)
    quick = fc.backtest(series, 7, 7, dict(fitted.params))
    refit = fc.backtest(series, 7, 7, refit=True)
    assert quick is not None and refit is not None
    assert quick["mae"] == pytest.approx(refit["mae"], rel=0.2)


def test_a_seasonless_model_is_worse_on_seasonal_data() -> None:
    """The backtest tells a good model from a bad one (the same data without its seasonal term)."""
    series = seasonal(200, 7, seed=7)
    good = fc.backtest(series, 7, 7)
    bad = fc.backtest(series, None, 7)
    assert good is not None and bad is not None
    assert bad["mae"] > 3 * good["mae"]


def test_hourly_lines_have_a_daily_season() -> None:
    series = seasonal(28 * 24, 24, seed=11)
    answer = fc.forecast(series.tolist(), datetime(2026, 3, 1), "hour", 24)
    assert len(answer["points"]) == 24 and answer["points"][1][0] == "2026-03-01T01:00:00"
    assert HALF_NORMAL * 0.7 < answer["backtest"]["mae"] < HALF_NORMAL * 1.5
    assert answer["backtest"]["horizon"] == 24 and answer["backtest"]["origins"] == 4
    peak = max(range(24), key=lambda h: answer["points"][h][1])
    assert peak in (5, 6, 7)  # the top of sin(2π·t/24) is at t ≡ 6 (mod 24): the series starts at a multiple of 24


def test_weekly_and_monthly_lines_follow_their_trend() -> None:
    weeks = [1000.0 + 20 * i for i in range(30)]
    answer = fc.forecast(weeks, datetime(2026, 1, 5), "week", 4)
    assert "seasonality" not in answer["model"]
    assert [p[0][:10] for p in answer["points"]] == ["2026-01-05", "2026-01-12", "2026-01-19", "2026-01-26"]
    assert answer["points"][0][1] == pytest.approx(1600, rel=0.02)
    assert answer["points"][3][1] > answer["points"][0][1]
    months = fc.forecast([500.0 + (i % 3) for i in range(24)], datetime(2026, 11, 1), "month", 3)
    assert [p[0][:7] for p in months["points"]] == ["2026-11", "2026-12", "2027-01"]


def test_short_history_gaps_zeros_and_clipping() -> None:
    assert fc.forecast([1.0] * 17, datetime(2026, 1, 1), "day", 7) == {
        "error": "needs at least 18 intervals of history (has 17)"
    }
    assert "needs at least 8 intervals" in fc.forecast([5.0] * 7, datetime(2026, 1, 1), "month", 2)["error"]
    # gaps inside (a non-count measure without events) are interpolated; leading and trailing ones dropped
    values: list[float | None] = [None, None, *seasonal(60, 7, seed=2).tolist(), None]
    values[30] = values[31] = None
    answer = fc.forecast(values, datetime(2026, 1, 1), "day", 7)
    assert answer["history"] == 60 and len(answer["points"]) == 7
    # a count falling towards zero is never forecast below it
    falling = [max(0.0, 100 - 3 * i) for i in range(40)]
    answer = fc.forecast(falling, datetime(2026, 1, 1), "day", 14, non_negative=True)
    assert min(min(p[1:]) for p in answer["points"]) >= 0
    # all zeros: a flat forecast, and no MAPE (no actual value to divide by)
    flat = fc.forecast([0.0] * 40, datetime(2026, 1, 1), "day", 7, non_negative=True)
    assert "error" in flat or (flat["backtest"]["mape"] is None and flat["points"][0][1] == pytest.approx(0))


def test_backtest_shortens_its_horizon_to_the_history() -> None:
    series = seasonal(40, 7, seed=1)
    answer = fc.forecast(series.tolist(), datetime(2026, 1, 1), "day", 60)
    assert len(answer["points"]) == 60
    assert answer["backtest"]["horizon"] == 40 - 18 and answer["backtest"]["origins"] == 1
    start = datetime(2026, 1, 1)
    assert answer["points"][-1][0] == (start + timedelta(days=59)).isoformat()
