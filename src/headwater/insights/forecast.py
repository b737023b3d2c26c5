"""Trend forecasts (TrendQuery `forecast: N`): a line extended N intervals ahead, with a 95 % interval and the
error the same model made on the line's own recent past.

- Model: statsmodels' Holt-Winters `ExponentialSmoothing` with an additive damped trend and additive seasonality
  of 24 (hourly lines: the hour of the day) or 7 (daily lines: the weekday); weekly and monthly lines have no
  seasonal term. Parameters are fitted by statsmodels (initial states estimated with them), with one BLAS thread
  (threadpoolctl): the matrices are tiny, and OpenBLAS's threads made a fit 8 to 15 times slower on a busy machine.
- Data: the line's complete intervals (the history the engine fetches before `date_from`, then the range; an
  interval not over yet is left out, and its value is forecast instead). Gaps of non-count measures are filled
  linearly; counts before the line's first event are left out.
- Interval: the 2.5 and 97.5 percentiles of 1,000 simulated futures of the fitted model, its errors drawn from a
  normal distribution with the residuals' spread (`simulate`, fixed seed: the same data gives the same answer).
  Counts are clipped at 0.
- Backtest: rolling origins over the last weeks: up to 4 origins, one season apart (a week for daily lines, a day
  for hourly ones, one point for weekly and monthly), each the start of a forecast `horizon` intervals long made
  from the data before it only, compared with what happened: MAE (mean absolute error, in the line's unit) and
  MAPE (mean absolute percentage error, in %, over actual values that are not 0; None when all are 0). The horizon
  is the forecast's, shortened when the history is too short for it. The smoothing parameters of these forecasts
  are those of the full fit (their states are filtered again from the data before each origin only): re-fitting
  at every origin costs four more fits for nearly the same figure (`backtest(..., refit=True)` does it; tests
  compare the two).

Answer: `{"points": [[iso, yhat, low, high]], "model", "interval": 0.95, "backtest": {"mape", "mae", "horizon",
"origins"} | None, "fit_ms"}`, or `{"error": "needs at least N intervals of history"}`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from headwater.insights.from_rollups import shift

SEASONS = {"hour": 24, "day": 7}
HISTORY = {"hour": 28 * 24, "day": 17 * 7, "week": 104, "month": 36}
"""Intervals of history before `date_from` that the engine fetches for a forecast."""
ORIGINS = 4
REPETITIONS = 1000
LEVEL = 0.95


def min_points(interval: str) -> int:
    """The fewest intervals a forecast is made from: two seasons and a few more, or 8 without seasonality."""
    season = SEASONS.get(interval)
    return 2 * season + 4 if season else 8


def _step(start: datetime, n: int, interval: str) -> datetime:
    return start + timedelta(hours=n) if interval == "hour" else shift(start, n, interval)


def _filled(values: Sequence[float | None]) -> np.ndarray:
    """Leading and trailing gaps dropped, inner gaps interpolated linearly."""
    known = [i for i, v in enumerate(values) if v is not None]
    if not known:
        return np.zeros(0)
    inner = values[known[0] : known[-1] + 1]
    y = np.array([np.nan if v is None else float(v) for v in inner])
    gaps = np.isnan(y)
    if gaps.any():
        at = np.arange(len(y))
        y[gaps] = np.interp(at[gaps], at[~gaps], y[~gaps])
    return y


def _model(y: np.ndarray, season: int | None, **init: Any) -> Any:
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    return ExponentialSmoothing(
        y, trend="add", damped_trend=True, seasonal="add" if season else None, seasonal_periods=season, **init
    )


def fit(y: np.ndarray, season: int | None) -> Any:
    """The fitted Holt-Winters results (statsmodels' optimiser from its default start, without the brute-force
    grid of starting values: a third of the time for the same fit on the series tried; warnings silenced)."""
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        return _model(y, season, initialization_method="estimated").fit(use_brute=False)


def _refilter(y: np.ndarray, season: int | None, params: dict[str, Any]) -> Any:
    """The model with the given fitted parameters run over `y` (no optimisation: a filter pass)."""
    init: dict[str, Any] = {"initial_level": params["initial_level"], "initial_trend": params["initial_trend"]}
    smoothing = {k: params[k] for k in ("smoothing_level", "smoothing_trend", "damping_trend")}
    if season:
        init["initial_seasonal"] = params["initial_seasons"]
        smoothing["smoothing_seasonal"] = params["smoothing_seasonal"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _model(y, season, initialization_method="known", **init).fit(optimized=False, **smoothing)


def backtest(
    y: np.ndarray, season: int | None, horizon: int, params: dict[str, Any] | None = None, refit: bool = False
) -> dict[str, Any] | None:
    """MAE and MAPE of forecasts from up to ORIGINS rolling origins, `horizon` intervals each (shortened so the
    earliest origin keeps min_points of training data); None when not even one origin fits."""
    stride = season or 1
    least = 2 * season + 4 if season else 8
    horizon = min(horizon, len(y) - least)
    if horizon < 1:
        return None
    errors: list[float] = []
    actuals: list[float] = []
    origins = 0
    for k in range(ORIGINS):
        origin = len(y) - horizon - k * stride
        if origin < least:
            break
        train = y[:origin]
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            model = fit(train, season) if refit or params is None else _refilter(train, season, params)
            predicted = np.asarray(model.forecast(horizon))
        actual = y[origin : origin + horizon]
        errors.extend(np.abs(actual - predicted).tolist())
        actuals.extend(actual.tolist())
        origins += 1
    if not origins:
        return None
    err, act = np.array(errors), np.array(actuals)
    nonzero = act != 0
    mape = float(np.mean(err[nonzero] / np.abs(act[nonzero])) * 100) if nonzero.any() else None
    return {"mape": mape, "mae": float(err.mean()), "horizon": horizon, "origins": origins}


def describe(interval: str) -> str:
    season = SEASONS.get(interval)
    seasonal = f", additive seasonality of {season} ({'hours' if interval == 'hour' else 'days'})" if season else ""
    return f"Holt-Winters exponential smoothing (statsmodels): additive damped trend{seasonal}"


def forecast(
    values: Sequence[float | None], start: datetime, interval: str, horizon: int, non_negative: bool = False
) -> dict[str, Any]:
    """`horizon` points from `start` (the interval after the last value) extending `values` (one per interval)."""
    y = _filled(values)
    need = min_points(interval)
    if len(y) < need:
        return {"error": f"needs at least {need} intervals of history (has {len(y)})"}
    season = SEASONS.get(interval)
    started = time.perf_counter()
    if np.ptp(y) == 0:  # a constant line (often all zeros): nothing to fit, it stays where it is
        yhat = low = high = np.full(horizon, y[-1])
        checked: dict[str, Any] | None = {"mape": 0.0 if y[-1] else None, "mae": 0.0, "horizon": horizon,
                                          "origins": 0}  # fmt: skip
    else:
        try:
            with warnings.catch_warnings(), threadpool_limits(1):
                warnings.simplefilter("ignore")
                fitted = fit(y, season)
                yhat = np.asarray(fitted.forecast(horizon), dtype=float)
                paths = fitted.simulate(horizon, repetitions=REPETITIONS, error="add", rng=np.random.default_rng(0))
        except (ValueError, np.linalg.LinAlgError) as exc:
            return {"error": f"the model could not be fitted: {exc}"}
        tail = (1 - LEVEL) / 2 * 100
        low, high = np.percentile(np.asarray(paths).reshape(horizon, -1), [tail, 100 - tail], axis=1)
        checked = None
    fit_ms = (time.perf_counter() - started) * 1000
    if non_negative:
        yhat, low, high = np.clip(yhat, 0, None), np.clip(low, 0, None), np.clip(high, 0, None)
    points = [
        [_step(start, i, interval).isoformat(), _num(yhat[i]), _num(low[i]), _num(high[i])] for i in range(horizon)
    ]
    if checked is None:
        checked = backtest(y, season, horizon, dict(fitted.params))
    return {
        "points": points, "model": describe(interval), "interval": LEVEL, "backtest": checked,
        "fit_ms": round(fit_ms, 1), "history": len(y),
    }  # fmt: skip


def _num(value: float) -> float | None:
    return None if not np.isfinite(value) else round(float(value), 6)
