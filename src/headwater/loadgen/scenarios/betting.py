"""Horse-race betting in PMU's shape: races all day, punters who bet on the next races, cancellations, results.

Races start every `RACE_EVERY_MIN` minutes from 11:00 to 22:40 UTC on several tracks (`race_id` like
`2026-11-26-R03C05`); after each one a server-side `Race Result` (the winner, the runners, the pool) comes from
the results service (anonymous id `results-service`). Punters arrive over the period and come back for betting
sessions (weekends busier, evenings busiest); in a session they look at the next race (`Race Viewed`) and place
one or more bets on it (`Bet Placed`: race_id, bet_id, stake, bet_type simple | couple | trio | quinte+, odds),
`CANCEL` of which they cancel (`Bet Cancelled`) a minute or two later, before the race starts. New punters sign
up (`Signed Up`, `identify`), make a first deposit (`Deposit Made`) and bet: the funnel of the truth.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from headwater.loadgen.scenarios.base import (
    DAY_US,
    HOUR_US,
    MINUTE_US,
    US,
    Events,
    GroundTruth,
    Scenario,
    arrivals,
    concat,
    keep_by_weekday,
    population,
    segment_offsets,
    snap_to_day_profile,
    to_iso,
)

NAMES = ["Race Viewed", "Bet Placed", "Bet Cancelled", "Race Result", "Signed Up", "identify", "Deposit Made"]
VIEW, BET, CANCEL_EVENT, RESULT, SIGNUP_EVENT, IDENTIFY, DEPOSIT = range(len(NAMES))
PATHS = ["/course", "/pari", "/pari/annuler", "/resultats", "/inscription", "/inscription", "/compte/depot"]
TRACKS = ["Vincennes", "Longchamp", "Chantilly", "Deauville", "Auteuil", "Enghien"]
BET_TYPES = (["simple", "couple", "trio", "quinte+"], [0.45, 0.27, 0.16, 0.12])
FIRST_RACE_H, RACE_EVERY_MIN, RACES_PER_DAY = 11, 20, 36
CANCEL = 0.03
DEPOSIT_P = 0.7
EVENTS_PER_USER = 13.0


def _race_of(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The next race after each time: (day, race number), and its start time."""
    day = times // DAY_US
    offset = times - day * DAY_US - FIRST_RACE_H * HOUR_US
    number = np.clip(np.ceil(offset / (RACE_EVERY_MIN * MINUTE_US)).astype(np.int64), 0, None)
    later = number >= RACES_PER_DAY
    day, number = np.where(later, day + 1, day), np.where(later, 0, number)
    return day * RACES_PER_DAY + number, day * DAY_US + FIRST_RACE_H * HOUR_US + number * RACE_EVERY_MIN * MINUTE_US


def _race_ids(race: np.ndarray) -> pa.Array:
    if not len(race):  # numpy's zfill fails on an empty array (a live block without a cancelled bet)
        return pa.array([], pa.string())
    day, number = race // RACES_PER_DAY, race % RACES_PER_DAY
    dates = np.datetime_as_string(day.astype("datetime64[D]"))
    meeting = np.char.zfill((number // 8 + 1).astype(str), 2)
    return pa.array(
        np.char.add(
            np.char.add(np.char.add(dates, "-R"), meeting),
            np.char.add("C", np.char.zfill((number % 8 + 1).astype(str), 2)),
        )
    )


def _events(person: np.ndarray, times: np.ndarray, name: int, channel: np.ndarray) -> Events:
    n = len(person)
    return Events(times, person, np.full(n, name), np.ones(n, bool), channel, pa.array([PATHS[name]] * n, pa.string()))


def _sessions(rng: np.random.Generator, person: np.ndarray, start: np.ndarray, channel: np.ndarray) -> list[Events]:
    """Betting sessions: a look at the next race, bets on it, some cancelled."""
    race, race_start = _race_of(start + 2 * MINUTE_US)
    views = _events(person, start, VIEW, channel)
    views.props["race_id"] = _race_ids(race)
    bets_per = 1 + rng.poisson(0.9, len(person))
    group, pos = segment_offsets(bets_per)
    room = np.maximum(race_start[group] - start[group] - 30 * US, US)
    when = start[group] + (rng.random(len(group)) * np.minimum(room, 6 * MINUTE_US)).astype(np.int64) + pos
    bets = _events(person[group], when, BET, channel[group])
    kind = rng.choice(len(BET_TYPES[0]), len(group), p=BET_TYPES[1])
    bet_ids = np.char.add("bet-", rng.integers(0, 2**62, len(group)).astype(str))
    bets.props["race_id"] = _race_ids(race[group])
    bets.props["bet_id"] = pa.array(bet_ids)
    bets.props["bet_type"] = pa.array(np.array(BET_TYPES[0])[kind])
    bets.props["stake"] = pa.array(np.round(np.maximum(1.5, rng.lognormal(np.log(4 + 3 * kind), 0.7)), 1))
    bets.props["odds"] = pa.array(np.round(1.2 + rng.lognormal(np.log(3 + 8 * kind), 0.6), 1))
    cancelled = rng.random(len(group)) < CANCEL
    cancel_at = np.minimum(when[cancelled] + rng.integers(20 * US, 3 * MINUTE_US, int(cancelled.sum())),
                           race_start[group][cancelled] - US)  # fmt: skip
    cancels = _events(person[group][cancelled], np.maximum(cancel_at, when[cancelled] + US), CANCEL_EVENT,
                      channel[group][cancelled])  # fmt: skip
    cancels.props["race_id"] = _race_ids(race[group][cancelled])
    cancels.props["bet_id"] = pa.array(bet_ids[cancelled])
    return [views, bets, cancels]


def _results(rng: np.random.Generator, start_us: int, end_us: int, service: int) -> Events:
    race = np.arange(start_us // DAY_US * RACES_PER_DAY, end_us // DAY_US * RACES_PER_DAY + RACES_PER_DAY)
    at = _race_start(race) + 3 * MINUTE_US
    keep = (at >= start_us) & (at < end_us)
    race, at = race[keep], at[keep]
    results = _events(np.full(len(race), service), at, RESULT, np.zeros(len(race), np.int64))
    results.identified = np.zeros(len(race), bool)
    runners = rng.integers(8, 19, len(race))
    results.props["race_id"] = _race_ids(race)
    results.props["track"] = pa.array(np.array(TRACKS)[(race // 8) % len(TRACKS)])
    results.props["runners"] = pa.array(runners)
    results.props["winner"] = pa.array(1 + (rng.random(len(race)) * runners).astype(np.int64))
    results.props["pool"] = pa.array(np.round(rng.lognormal(np.log(250_000), 0.6, len(race)), 0))
    return results


def _race_start(race: np.ndarray) -> np.ndarray:
    day, number = race // RACES_PER_DAY, race % RACES_PER_DAY
    return day * DAY_US + FIRST_RACE_H * HOUR_US + number * RACE_EVERY_MIN * MINUTE_US


def generate(seed: int, users: int, start_us: int, end_us: int) -> Scenario:
    """`users` punters arriving over [start, end) (and a warm-up month before), their events in [start, end)."""
    rng = np.random.default_rng(seed)
    days = max(1.0, (end_us - start_us) / DAY_US)
    n = users + int(users * 28 / days)
    people = population(rng, n + 1, "punter")  # the last one is the results service
    service = n
    people.anonymous_id = pa.concat_arrays([people.anonymous_id.slice(0, n), pa.array(["results-service"])])
    people.traits["segment"] = pa.array(
        np.array(["casual", "regular", "high-roller"])[rng.choice(3, n + 1, p=[0.7, 0.25, 0.05])]
    )
    everyone = np.arange(n)
    acquired = arrivals(rng, n, start_us - 28 * DAY_US, end_us)
    signup_t = acquired + rng.integers(MINUTE_US, 10 * MINUTE_US, n)
    deposits = rng.random(n) < DEPOSIT_P
    deposit_t = signup_t + rng.integers(MINUTE_US, 20 * MINUTE_US, n)
    keep_on = rng.beta(5, 1.6, n)
    visits = np.where(deposits, np.minimum(rng.geometric(1 - keep_on) - 1, 150), 0)
    who, _ = segment_offsets(visits)
    gaps = rng.exponential(1.0, len(who)) * rng.lognormal(np.log(2.5 * DAY_US), 0.6, n)[who]
    total = np.cumsum(gaps)
    before = np.concatenate([[0.0], total])[np.cumsum(visits) - visits]
    at = snap_to_day_profile(rng, (deposit_t[who] + total - np.repeat(before, visits)).astype(np.int64))
    keep = keep_by_weekday(rng, at) & (at >= start_us - DAY_US) & (at < end_us)
    who, at = who[keep], at[keep]
    first = everyone[deposits]
    parts = _sessions(rng, np.concatenate([first, who]), np.concatenate([deposit_t[first] + MINUTE_US, at]),
                      people.channel[np.concatenate([first, who])])  # fmt: skip
    parts.append(_events(everyone, signup_t, SIGNUP_EVENT, people.channel))
    parts.append(_events(everyone, signup_t + 1000, IDENTIFY, people.channel))
    deposit = _events(first, deposit_t[first], DEPOSIT, people.channel[first])
    deposit.props["amount"] = pa.array(
        np.round(rng.choice([10, 20, 50, 100], len(first), p=[0.3, 0.4, 0.2, 0.1]) * 1.0, 2)
    )
    deposit.props["currency"] = pa.array(["EUR"] * len(first), pa.string())
    parts.append(deposit)
    parts.append(_results(rng, start_us, end_us, service))
    events = concat(parts)
    events = events.take(np.flatnonzero((events.time >= start_us) & (events.time < end_us)))
    events.identified[events.person != service] = True  # punters bet logged in; views before sign-up do not exist
    complete = end_us - 14 * DAY_US
    cohort = (signup_t >= start_us) & (signup_t < complete)
    truth = GroundTruth(
        scenario="betting", seed=seed, users=users, events=len(events), start=to_iso(start_us), end=to_iso(end_us),
        identified_people=len(np.unique(events.person[events.person != service])),
        funnel={"steps": ["Signed Up", "Deposit Made", "Bet Placed"], "window_days": 14,
                "rates_from_previous": [1.0, DEPOSIT_P, 1.0], "range": [to_iso(start_us), to_iso(complete)],
                "reached": [int(cohort.sum()), int((cohort & deposits).sum()), int((cohort & deposits).sum())]},
        notes={"cancel_rate": CANCEL, "races_per_day": RACES_PER_DAY, "results_service": "results-service"},
    )  # fmt: skip
    state = {"keep_on": np.append(keep_on, 0.0)}
    return Scenario(events, people, NAMES, "paris.example.fr", truth, state)


def live(rng: np.random.Generator, scenario: Scenario, start_us: int, end_us: int, sessions: int) -> Events:
    """`sessions` betting sessions starting in [start, end), and the results of the races run then."""
    weight = scenario.state["keep_on"] / scenario.state["keep_on"].sum()
    person = rng.choice(len(weight), sessions, p=weight)
    begin = rng.integers(start_us, end_us, sessions)
    parts = _sessions(rng, person, begin, scenario.people.channel[person])
    parts.append(_results(rng, start_us, end_us, len(weight) - 1))
    return concat(parts)
