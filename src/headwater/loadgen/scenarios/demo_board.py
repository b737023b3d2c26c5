"""The demo dashboard `up --demo` creates on first start: saved insights over the scenario's events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from headwater.boards.store import BoardStore, Tile
from headwater.core.settings import Settings

BOARD_NAMES = {"shop": "Shop overview (demo)", "betting": "Betting overview (demo)", "app": "App overview (demo)"}
Tiles = list[tuple[str, dict[str, Any], dict[str, Any]]]


def insights(days: int, now: datetime | None = None, scenario: str = "shop") -> Tiles:
    """(name, saved query, tile placement) of each tile; the board's `last_days` moves the ranges along."""
    end = (now or datetime.now(UTC)).replace(second=0, microsecond=0) + timedelta(minutes=1)
    span = {"date_from": (end - timedelta(days=days)).isoformat(), "date_to": end.isoformat()}
    number = {"display": "number"} if "display" in Tile.model_fields else {}

    def trend(event: str, measure: str = "count", **more: Any) -> dict[str, Any]:
        series: dict[str, Any] = {"event": event, "measure": measure}
        if "property" in more:
            series["property"] = more.pop("property")
        return {"kind": "trend", "series": [series], "interval": "day", **span, **more}

    if scenario == "betting":
        return _betting(trend, span, number)
    if scenario == "app":
        return _app(trend, span, number)
    return [
        ("Daily active visitors", trend("Page Viewed", "users"), {"x": 0, "y": 0, "w": 4, "h": 3, **number}),
        ("Orders", trend("Order Completed"), {"x": 4, "y": 0, "w": 4, "h": 3, **number}),
        ("Revenue", trend("Order Completed", "sum", property="revenue"), {"x": 8, "y": 0, "w": 4, "h": 3, **number}),
        ("Page views by channel", trend("Page Viewed", breakdown="channel"), {"x": 0, "y": 3, "w": 12, "h": 5}),
        (
            "Sign-up funnel (14 days)",
            {"kind": "funnel", "steps": [{"event": "Signed Up"}, {"event": "Activated"}, {"event": "Order Completed"}],
             "window_seconds": 14 * 86400, **span},
            {"x": 0, "y": 8, "w": 6, "h": 5},
        ),
        (
            "Experiment: checkout-button",
            {"kind": "experiment", "exposure_event": "$experiment_started", "variant_property": "variant",
             "goal_event": "Order Completed", "window_seconds": 14 * 86400, "control": "control", **span},
            {"x": 6, "y": 8, "w": 6, "h": 5},
        ),
        (
            "Retention: sign-up to order (weeks)",
            {"kind": "retention", "start_event": "Signed Up", "return_event": "Order Completed", "period": "week",
             "periods": 8, **span},
            {"x": 0, "y": 13, "w": 12, "h": 5},
        ),
    ]  # fmt: skip


def _betting(trend: Any, span: dict[str, str], number: dict[str, str]) -> Tiles:
    return [
        ("Active punters", trend("Bet Placed", "users"), {"x": 0, "y": 0, "w": 4, "h": 3, **number}),
        ("Bets", trend("Bet Placed"), {"x": 4, "y": 0, "w": 4, "h": 3, **number}),
        ("Stakes", trend("Bet Placed", "sum", property="stake"), {"x": 8, "y": 0, "w": 4, "h": 3, **number}),
        ("Bets by type", trend("Bet Placed", breakdown="bet_type"), {"x": 0, "y": 3, "w": 8, "h": 5}),
        ("Cancellations", trend("Bet Cancelled"), {"x": 8, "y": 3, "w": 4, "h": 5}),
        (
            "Sign-up to first bet",
            {"kind": "funnel", "steps": [{"event": "Signed Up"}, {"event": "Deposit Made"}, {"event": "Bet Placed"}],
             "window_seconds": 14 * 86400, **span},
            {"x": 0, "y": 8, "w": 6, "h": 5},
        ),
        (
            "Punters coming back (weeks)",
            {"kind": "retention", "start_event": "Signed Up", "return_event": "Bet Placed", "period": "week",
             "periods": 8, **span},
            {"x": 6, "y": 8, "w": 6, "h": 5},
        ),
    ]  # fmt: skip


def _app(trend: Any, span: dict[str, str], number: dict[str, str]) -> Tiles:
    return [
        ("Daily active users", trend("App Opened", "users"), {"x": 0, "y": 0, "w": 4, "h": 3, **number}),
        ("Installs", trend("App Installed"), {"x": 4, "y": 0, "w": 4, "h": 3, **number}),
        ("Subscriptions", trend("Subscription Started"), {"x": 8, "y": 0, "w": 4, "h": 3, **number}),
        ("Screens", trend("Screen Viewed", breakdown="screen"), {"x": 0, "y": 3, "w": 12, "h": 5}),
        (
            "Install to subscription",
            {"kind": "funnel", "steps": [{"event": "App Installed"}, {"event": "Signed In"},
                                         {"event": "Subscription Started"}], "window_seconds": 14 * 86400, **span},
            {"x": 0, "y": 8, "w": 6, "h": 5},
        ),
        (
            "Retention (weeks)",
            {"kind": "retention", "start_event": "App Installed", "return_event": "App Opened", "period": "week",
             "periods": 8, **span},
            {"x": 6, "y": 8, "w": 6, "h": 5},
        ),
    ]  # fmt: skip


def create_demo_board(settings: Settings, scenario: str, days: int, user: str = "demo") -> dict[str, Any]:
    """Save the insights and the dashboard (ranges: the last `days` days, moving); returns the dashboard."""
    store = BoardStore(settings.store_uri("app"))
    try:
        title = BOARD_NAMES.get(scenario, "Demo")
        made = [b for b in store.dashboards() if b["name"] == title]
        if made:  # a first start interrupted after making it: the same board, not a second one
            return store.dashboard(made[0]["id"])
        tiles = []
        for name, query, place in insights(days, scenario=scenario):
            saved = store.save_insight(name, query, user)
            tiles.append({"insight_id": saved["id"], **place})
        body = {"tiles": tiles, "last_days": max(1, days), "refresh_seconds": 60}
        return store.save_dashboard(title, body, user)
    finally:
        store.close()
