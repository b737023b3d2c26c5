"""PMU rewards: coupons for anonymous bettors, decided on the live stream of terminal frames.

The point-of-sale terminals send JSON frames (the `generate.py` next to this file plays them):

- `bet_request` (ITC T031, "prise de pari"): bet_id, terminal, bet_type, stake (EUR), race, at
- `bet_response`: bet_id, terminal, status `accepted` | `refused` (the central system's answer)
- `bet_payment` (T033): bet_id, terminal, amount (ignored here)
- `bet_cancelled` (T034, "annulation de pari"): bet_id, terminal

Every frame of a bet comes from its terminal, so they share the record key (the terminal, sent as
`anonymousId`: the bettor is anonymous) and the log partition. The pipeline re-keys them by bet id
(`map_key`), then:

1. correlates each request with its response by an interval join: a response counts when it
   comes at most 2 s after its request. `how="left"` emits the request alone once no response
   can meet it any more (stream time past request + 2 s + 1 s grace): those bets go to the
   stream `pmu-timeouts` (and table `pmu_timeouts`). Frames that arrive after their side of the
   join closed (1 s grace for responses, 3 s for requests) go to the `processor_late` table;
2. settles each bet once (`process`): retransmitted frames join twice, only the first outcome
   counts. Accepted bets go to `pmu-bets`;
3. confronts accepted bets with the campaign table `campaigns.csv` (reloaded every 5 s while it
   runs), looked up by bet type. Each row is a rule, and `qualifies` is the only code: the bet
   was placed in [starts, ends) and its stake is at least min_stake. A bet gets one coupon per
   matching campaign, with an id derived from bet id and campaign id;
4. keeps each bet's coupons in keyed state (`process`): a cancellation of a rewarded bet revokes
   exactly those coupons, and a bet cancelled before it was accepted gets none.

Outputs: stream `pmu-coupons` + Iceberg table `pmu_coupons`, stream `pmu-coupon-revocations` +
table `pmu_coupon_revocations`, and the state table `pmu_coupons_by_bet` served over HTTP
(`GET /api/state/pmu_coupons_by_bet/<bet_id>`).

Run it: `HEADWATER_PROCESSORS='["examples/pmu/rewards.py:pipeline"]' headwater up` (or run.sh). It reads the
`events` stream; `PMU_INPUT=<stream>` points it at another (examples/pmu_frames feeds it decoded frames).
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from headwater.processing import Context, Pipeline, ReferenceTable, Timer, days, minutes, seconds

RESPONSE_WITHIN = seconds(2)  # a response later than this does not count: the bet timed out
GRACE = seconds(1)  # how out of order frames may arrive before they count as late
SETTLED_FOR = minutes(1)  # how long a settled bet is remembered (to drop retransmitted frames)
KEEP_COUPONS = days(1)  # how long a bet's coupons can be revoked by a cancellation
FRAMES = ("bet_request", "bet_response", "bet_cancelled")
CAMPAIGNS = Path(os.environ.get("PMU_CAMPAIGNS", Path(__file__).with_name("campaigns.csv")))


# -- frames ---------------------------------------------------------------------------------------
def is_frame(event: dict[str, Any]) -> bool:
    return event.get("event") in FRAMES and bool((event.get("properties") or {}).get("bet_id"))


def to_frame(event: dict[str, Any]) -> dict[str, Any]:
    """An event of the `events` stream as a frame: its properties, its kind, its terminal."""
    props = event.get("properties") or {}
    terminal = props.get("terminal") or event.get("anonymous_id") or event.get("user_id")
    frame = {**props, "kind": event["event"], "bet_id": str(props["bet_id"]), "terminal": terminal}
    if frame["kind"] == "bet_request":
        frame["at"] = props.get("at") or event.get("timestamp")
        frame["stake"] = float(props.get("stake") or 0)
    return frame


def correlate(request: dict[str, Any], response: dict[str, Any] | None) -> dict[str, Any]:
    """Merge of the request/response join (response None: none came within RESPONSE_WITHIN)."""
    return {"request": request, "response": response}


# -- 2. settle each bet once ----------------------------------------------------------------------
BET_FIELDS = ("bet_id", "terminal", "bet_type", "stake", "race", "at")


def settle(ctx: Context, pair: dict[str, Any]) -> None:
    if ctx.state.exists("outcome"):
        return  # a retransmitted request or response: the bet is settled already
    request, response = pair["request"], pair["response"]
    outcome = "timeout" if response is None else str(response.get("status", "refused"))
    ctx.state.set("outcome", outcome)
    ctx.schedule("forget", ctx.timestamp + SETTLED_FOR)
    bet = {name: request.get(name) for name in BET_FIELDS}
    if outcome == "timeout":
        ctx.emit({**bet, "outcome": "timeout", "waited_ms": RESPONSE_WITHIN})
    else:
        ctx.emit({**bet, "outcome": outcome})


def forget(ctx: Context, timer: Timer) -> None:
    ctx.state.delete("outcome")


# -- 3. campaign rules as data --------------------------------------------------------------------
@lru_cache(maxsize=4096)
def millis(when: str) -> int:
    """Epoch ms of an ISO-8601 time (a zone-less one is UTC)."""
    moment = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def qualifies(offer: dict[str, Any]) -> bool:
    """The rule every row of the campaign table states: placed within its dates, stake high enough."""
    bet, campaign = offer["bet"], offer["campaign"]
    placed = millis(bet["at"])
    return millis(campaign["starts"]) <= placed < millis(campaign["ends"]) and float(bet["stake"]) >= float(
        campaign["min_stake"]
    )


def coupon_id(bet_id: str, campaign_id: str) -> str:
    """The same bet and campaign always give the same coupon id (a replay re-issues no new coupon)."""
    return "CPN-" + hashlib.sha256(f"{bet_id}|{campaign_id}".encode()).hexdigest()[:16].upper()


def to_coupon(offer: dict[str, Any]) -> dict[str, Any]:
    bet, campaign = offer["bet"], offer["campaign"]
    return {
        "kind": "coupon", "coupon_id": coupon_id(bet["bet_id"], str(campaign["campaign_id"])),
        "bet_id": bet["bet_id"], "campaign_id": str(campaign["campaign_id"]), "terminal": bet["terminal"],
        "bet_type": bet["bet_type"], "stake": float(bet["stake"]), "race": str(bet.get("race") or ""), "at": bet["at"],
        "value": float(campaign["coupon_value"]),
    }  # fmt: skip


# -- 4. coupons per bet, revoked by a cancellation ------------------------------------------------
def summary(ctx: Context, coupons: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {
        "kind": "bet", "bet_id": ctx.key, "terminal": coupons[0]["terminal"], "status": status,
        "coupons": [{k: c[k] for k in ("coupon_id", "campaign_id", "value")} for c in coupons],
        "total_value": sum(c["value"] for c in coupons),
    }  # fmt: skip


def ledger(ctx: Context, record: dict[str, Any]) -> None:
    """Coupons and cancellations of one bet (the record key is the bet id)."""
    if record["kind"] == "bet_cancelled":
        if ctx.state.get("cancelled"):
            return  # a retransmitted cancellation
        ctx.state.set("cancelled", True)
        ctx.schedule("forget", ctx.timestamp + KEEP_COUPONS)
        coupons: list[dict[str, Any]] = ctx.state.get("coupons", [])
        cancelled_at = datetime.fromtimestamp(ctx.timestamp / 1000, tz=UTC).isoformat()
        for coupon in coupons:
            ctx.emit({
                "kind": "revocation", "coupon_id": coupon["coupon_id"], "bet_id": coupon["bet_id"],
                "campaign_id": coupon["campaign_id"], "terminal": coupon["terminal"], "value": coupon["value"],
                "cancelled_at": cancelled_at, "reason": "bet cancelled",
            })  # fmt: skip
        if coupons:
            ctx.emit(summary(ctx, coupons, "revoked"))
        return
    if ctx.state.get("cancelled"):
        return  # the cancellation overtook the acceptance: no coupon for a cancelled bet
    coupons = ctx.state.get("coupons", [])
    if any(c["coupon_id"] == record["coupon_id"] for c in coupons):
        return
    coupons = [*coupons, record]
    ctx.state.set("coupons", coupons)
    ctx.schedule("forget", ctx.timestamp + KEEP_COUPONS)
    ctx.emit(record)
    ctx.emit(summary(ctx, coupons, "active"))


def forget_bet(ctx: Context, timer: Timer) -> None:
    ctx.state.delete("coupons")
    ctx.state.delete("cancelled")


def without_kind(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "kind"}


# -- the pipeline ---------------------------------------------------------------------------------
def build(campaigns: ReferenceTable | None = None) -> Pipeline:
    """The pipeline; `campaigns` defaults to `campaigns.csv` (env PMU_CAMPAIGNS), keyed by bet type."""
    table = campaigns or ReferenceTable.from_file("campaigns", CAMPAIGNS, key="bet_type", many=True, refresh_s=5)
    p = Pipeline("pmu-rewards", description="PMU: coupons for accepted bets matching a campaign; revoked on cancel")
    frames = (
        p.source(os.environ.get("PMU_INPUT", "events")).filter(is_frame).map(to_frame).map_key(lambda f: f["bet_id"])
    )
    by_kind = frames.branch(
        request=lambda f: f["kind"] == "bet_request",
        response=lambda f: f["kind"] == "bet_response",
        cancel=lambda f: f["kind"] == "bet_cancelled",
    )
    correlated = by_kind["request"].join(
        by_kind["response"], before=0, after=RESPONSE_WITHIN, grace=GRACE, merge=correlate, how="left"
    )
    outcomes = correlated.process(settle, forget).branch(
        accepted=lambda b: b["outcome"] == "accepted", timeout=lambda b: b["outcome"] == "timeout"
    )  # refused bets stop here
    outcomes["timeout"].to_stream("pmu-timeouts").to_table("pmu_timeouts")
    accepted = outcomes["accepted"].to_stream("pmu-bets")
    coupons = (
        accepted.join_table(
            table, key=lambda bet: bet["bet_type"], merge=lambda bet, row: {"bet": bet, "campaign": row}
        )
        .filter(qualifies)
        .map(to_coupon)
    )
    results = (
        coupons.merge(by_kind["cancel"])
        .process(ledger, forget_bet)
        .branch(
            coupon=lambda r: r["kind"] == "coupon",
            revocation=lambda r: r["kind"] == "revocation",
            bet=lambda r: r["kind"] == "bet",
        )
    )
    results["coupon"].map(without_kind).to_stream("pmu-coupons").to_table("pmu_coupons")
    results["revocation"].map(without_kind).to_stream("pmu-coupon-revocations").to_table("pmu_coupon_revocations")
    results["bet"].map(without_kind).to_state("pmu_coupons_by_bet")
    return p


pipeline = build()
