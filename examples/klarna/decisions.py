"""Klarna's decision store on Headwater: every risk decision checked, enriched, streamed, archived, and
remembered per customer for the last N days.

    POST /v1/track  {"event": "risk_decision", "userId": <customer_id>, "messageId": <decision_id>,
                     "timestamp": <decided at>, "properties": {decision_id, customer_id, amount, currency,
                     outcome, model_version[, merchant_id]}}

The collector answers once the decision is durable in the log (and drops a retry with the same
`messageId`). This processor then, per decision:

1. schema-checks it: an invalid decision raises `ValueError` naming every problem, and the runtime puts
   the event and that reason in the dead-letter table `processor_errors` (the rest keep flowing);
2. enriches it: the amount in EUR from the FX reference table (`fx_rates.csv`, reloaded every minute
   while running) and a risk band;
3. streams it to the output stream `klarna-decisions` (downstream consumers; at-least-once for them:
   dedupe on `decision_id`, which a replay re-sends);
4. archives it in the Iceberg table `klarna_decisions` (SQL);
5. keeps, per customer, the decisions of the last `WINDOW_DAYS` days of event time in keyed state and
   serves them as the state table `klarna_customer_decisions`:
   `GET /api/state/klarna_customer_decisions/<customer_id>` is Klarna's variable store ("decisions for
   this customer in the last N days"). Decisions leave the window when stream time (the newest decision
   time seen on the customer's partition) passes them by N days: on the customer's next decision, or by
   an event-time timer when the customer makes none.

Run it:   HEADWATER_PROCESSORS='["examples/klarna/decisions.py:pipeline"]' headwater up
          (or examples/klarna/run.sh, which also creates keys and starts the generator)
Replay:   headwater process --replay klarna-decisions --from 2026-01-05T10:00:00Z
          (a new run with fresh state re-emits every decision from that event time on; see README.md)
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headwater.processing import Context, Pipeline, ReferenceTable, Timer, days

WINDOW_DAYS = float(os.environ.get("KLARNA_WINDOW_DAYS", "30"))  # the variable store's "last N days"
FX_RATES = Path(os.environ.get("KLARNA_FX_RATES", str(Path(__file__).with_name("fx_rates.csv"))))
MAX_PER_CUSTOMER = 1000  # a bound on one customer's remembered decisions (the newest are kept)

PROCESSOR = "klarna-decisions"
EVENT = "risk_decision"
OUTPUT_STREAM = "klarna-decisions"
ARCHIVE_TABLE = "klarna_decisions"
STATE_TABLE = "klarna_customer_decisions"
OUTCOMES = ("approve", "deny", "review")
RISK_BANDS = ((100.0, "low"), (1000.0, "medium"))  # amount_eur below the bound; "high" above the last
CURRENCY = re.compile(r"^[A-Z]{3}$")


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


# -- 1. schema check ----------------------------------------------------------------------------------


def _text(props: dict[str, Any], name: str, problems: list[str]) -> str:
    value = props.get(name)
    if value is None:
        problems.append(f"{name}: required")
    elif not isinstance(value, str) or not value.strip():
        problems.append(f"{name}: expected a non-empty string, got {value!r:.40}")
    else:
        return value
    return ""


def check_decision(event: dict[str, Any]) -> dict[str, Any]:
    """The decision in a `risk_decision` event, checked; ValueError listing every problem otherwise."""
    props = event.get("properties") or {}
    problems: list[str] = []
    decision_id = _text(props, "decision_id", problems)
    customer_id = _text(props, "customer_id", problems)
    model_version = _text(props, "model_version", problems)
    amount: Any = props.get("amount")
    if amount is None:
        problems.append("amount: required")
    elif isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount <= 0:
        problems.append(f"amount: expected a positive number, got {amount!r:.40}")
    currency = props.get("currency")
    if currency is None:
        problems.append("currency: required")
    elif not isinstance(currency, str) or not CURRENCY.match(currency):
        problems.append(f"currency: expected an ISO 4217 code such as 'SEK', got {currency!r:.40}")
    outcome = props.get("outcome")
    if outcome is None:
        problems.append("outcome: required")
    elif outcome not in OUTCOMES:
        problems.append(f"outcome: expected one of {', '.join(OUTCOMES)}, got {outcome!r:.40}")
    merchant_id = props.get("merchant_id")
    if merchant_id is not None and not isinstance(merchant_id, str):
        problems.append(f"merchant_id: expected a string, got {merchant_id!r:.40}")
    user_id = event.get("user_id")
    if customer_id and user_id and user_id != customer_id:
        problems.append(f"customer_id: {customer_id!r} differs from the event's userId {user_id!r}")
    if problems:
        raise ValueError(f"invalid decision {decision_id or '(no decision_id)'}: {'; '.join(problems)}")
    return {
        "decision_id": decision_id,
        "customer_id": customer_id,
        "amount": float(amount),
        "currency": currency,
        "outcome": outcome,
        "model_version": model_version,
        "merchant_id": merchant_id,
        "decided_at": event["timestamp"],
        "event_id": event["event_id"],
    }


# -- 2. enrichment ------------------------------------------------------------------------------------


def risk_band(amount_eur: float) -> str:
    for bound, band in RISK_BANDS:
        if amount_eur < bound:
            return band
    return "high"


def enrich(decision: dict[str, Any], fx: dict[str, Any] | None) -> dict[str, Any]:
    """Add `fx_rate` (EUR per unit), `amount_eur` and `risk_band`; a currency without a rate is invalid."""
    if fx is None:
        raise ValueError(
            f"invalid decision {decision['decision_id']}: currency: no FX rate for {decision['currency']!r}"
        )
    rate = float(fx["eur_per_unit"])
    amount_eur = round(decision["amount"] * rate, 2)
    return {**decision, "fx_rate": rate, "amount_eur": amount_eur, "risk_band": risk_band(amount_eur)}


# -- 5. the variable store: decisions of the last N days per customer --------------------------------


class CustomerStore:
    """Keyed state per customer: a list of decision summaries, oldest first, trimmed by event time."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms

    def _summary(self, decision: dict[str, Any], ts: int) -> dict[str, Any]:
        keep = ("decision_id", "outcome", "amount", "currency", "amount_eur", "risk_band", "model_version")
        return {"t": ts, "decided_at": decision["decided_at"], **{k: decision[k] for k in keep}}

    def _view(self, customer: str | None, kept: list[dict[str, Any]]) -> dict[str, Any]:
        outcomes = dict.fromkeys(OUTCOMES, 0)
        for item in kept:
            outcomes[item["outcome"]] += 1
        return {
            "customer_id": customer,
            "window_days": self.window_ms / 86_400_000,
            "count": len(kept),
            "outcomes": outcomes,
            "total_eur": round(sum(item["amount_eur"] for item in kept), 2),
            "decisions": [{k: v for k, v in item.items() if k != "t"} for item in reversed(kept)],  # newest first
        }

    def _save(self, ctx: Context, kept: list[dict[str, Any]]) -> None:
        if not kept:
            ctx.state.delete("decisions")
            ctx.emit(None)  # deletes the customer from the served table
            return
        ctx.state.set("decisions", kept)
        ctx.schedule("expire", kept[0]["t"] + self.window_ms)  # when the oldest leaves the window
        ctx.emit(self._view(ctx.key, kept))

    def on_record(self, ctx: Context, decision: dict[str, Any]) -> None:
        now = max(ctx.stream_time, ctx.timestamp)
        cutoff = now - self.window_ms
        if ctx.timestamp <= cutoff:
            return  # already older than the window (archived and streamed, not remembered)
        stored: list[dict[str, Any]] = ctx.state.get("decisions", [])
        kept = [d for d in stored if d["t"] > cutoff and d["decision_id"] != decision["decision_id"]]
        kept.append(self._summary(decision, ctx.timestamp))
        kept.sort(key=lambda d: d["t"])
        self._save(ctx, kept[-MAX_PER_CUSTOMER:])

    def on_timer(self, ctx: Context, timer: Timer) -> None:
        cutoff = ctx.stream_time - self.window_ms
        self._save(ctx, [d for d in ctx.state.get("decisions", []) if d["t"] > cutoff])


# -- the pipeline ----------------------------------------------------------------------------------------


def build_pipeline(window_days: float = WINDOW_DAYS, fx_rates: Path | str = FX_RATES) -> Pipeline:
    fx = ReferenceTable.from_file("fx_rates", fx_rates, key="currency", refresh_s=60)
    about = f"Klarna decision store: check, enrich, stream, archive, remember {window_days:g} days per customer"
    p = Pipeline(PROCESSOR, description=about)
    decisions = (
        p.source("events")
        .filter(lambda event: event["event"] == EVENT)
        .map(check_decision)
        .join_table(fx, key=lambda d: d["currency"], merge=enrich, how="left")
        .map_key(lambda d: d["customer_id"])
    )
    decisions.to_stream(OUTPUT_STREAM).to_table(ARCHIVE_TABLE)
    store = CustomerStore(days(window_days))
    decisions.process(store.on_record, store.on_timer).to_state(STATE_TABLE)
    return p


pipeline = build_pipeline()
