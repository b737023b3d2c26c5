"""The alert evaluator: every `alert_interval_s` the ops worker calls `tick(now)`.

One tick:
1. scrapes the local server's /metrics into an in-memory window (rate and increase need two scrapes);
2. evaluates every Condition (built-ins, `settings.alert_rules`, extra conditions such as trend alerts);
3. moves each alert instance inactive → pending (held `for_s`) → firing → resolved, in one catalog transaction
   that also records each firing/resolved transition in the history (delivery `pending`, or `silenced` when a
   silence matches, or `none` without webhooks) and logs it (WARNING firing, INFO resolved);
4. delivers the history entries still pending (this tick's and earlier undelivered ones) and records the
   outcome per URL: a transition is notified once, even across restarts (recorded first, sent after, marked).

Nothing raises out of `tick`: a failing condition keeps its alerts' state and its error is shown with the rule.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

import httpx
import orjson
import sqlalchemy as sa

from headwater.alerts.builtins import builtin_conditions, thresholds
from headwater.alerts.conditions import Condition, ConditionSource, Context, Finding, MetricCondition
from headwater.alerts.egress import WebhookGuard
from headwater.alerts.notify import GIVE_UP_S, payload, post
from headwater.alerts.scrape import MetricsWindow, metrics_url
from headwater.alerts.store import ALERTS, HISTORY, RULES, AlertStore, fingerprint, silence_matches
from headwater.core.errors import AlertError
from headwater.core.settings import Settings
from headwater.log.base import EventLog

log = logging.getLogger("headwater.alerts")
RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
HISTORY_KEEP_S = 90 * 86400.0  # history and ended silences are kept this long
PRUNE_EVERY_S = 3600.0


def dashboard_base(settings: Settings) -> str:
    """The web app's address as the local server serves it (notifications link to it)."""
    url = metrics_url(settings)
    return url.removesuffix("/metrics") if url else f"http://{settings.host}:{settings.port}"


class AlertEvaluator:
    """Evaluates the alert rules and keeps their state in the catalog database (restart-safe)."""

    def __init__(
        self,
        settings: Settings,
        catalog_engine: sa.Engine,
        extra_conditions: Iterable[Condition | ConditionSource] = (),
        http: httpx.Client | None = None,
    ) -> None:
        self.settings = settings
        self.engine = catalog_engine
        self.store = AlertStore(catalog_engine)
        self.builtins: list[Condition] = list(builtin_conditions(settings))
        self.user: list[Condition] = [MetricCondition(rule) for rule in settings.alert_rules]
        self.extra = list(extra_conditions)
        taken = {c.name for c in self.builtins}
        for extra in self.extra:  # conditions given by code: a wrong name is a programming error, said at once
            if isinstance(extra, ConditionSource) and not hasattr(extra, "evaluate"):
                continue
            name = getattr(extra, "name", None)
            if not isinstance(name, str) or not RULE_NAME.match(name) or name in taken:
                raise AlertError(f"alert condition {extra!r}: its name must be unique and match {RULE_NAME.pattern}")
            taken.add(name)
        windows = [rule.window_s for rule in settings.alert_rules]
        self.metrics = MetricsWindow(settings, keep_s=max([900.0, *windows]) + 4 * settings.alert_interval_s)
        self.http = http or httpx.Client()
        self.guard = WebhookGuard(settings.webhook_allowed_hosts)
        self._log: EventLog | None = None
        self._answers: dict[str, tuple[float, list[Finding] | None, str | None]] = {}
        self.last: dict[str, Any] = {}
        self._pruned = 0.0

    # --- rules
    def conditions(self) -> tuple[list[Condition], bool]:
        """Every rule now, and whether the list is complete (every condition source answered)."""
        out: list[Condition] = [*self.builtins, *self.user]
        complete = True
        for extra in self.extra:
            if isinstance(extra, ConditionSource) and not hasattr(extra, "evaluate"):
                try:
                    listed = extra.conditions()
                except Exception:
                    log.exception("alert condition source %r failed", extra)
                    listed = None
                if listed is None:
                    complete = False
                    continue
                out.extend(listed)
            else:
                out.append(extra)  # type: ignore[arg-type]
        unique: dict[str, Condition] = {}
        for condition in out:
            if not RULE_NAME.match(condition.name):
                log.error("alert rule name %r is invalid: skipped", condition.name)
            elif condition.name in unique:
                log.error("two alert rules are named %r: the second is skipped", condition.name)
            else:
                unique[condition.name] = condition
        return list(unique.values()), complete

    def _open_log(self) -> EventLog:
        if self._log is None:
            from headwater.log import open_log

            self._log = open_log(self.settings)
        return self._log

    # --- one tick
    def tick(self, now: float | None = None) -> dict[str, Any]:
        """Evaluate, record transitions, deliver; a summary of what happened (never raises)."""
        now = time.time() if now is None else now
        if not self.settings.alerts_enabled:
            return {"at": now, "enabled": False}
        try:
            self.last = self._tick(now)
        except Exception as exc:
            log.exception("alert evaluation failed")
            self.last = {"at": now, "error": f"{type(exc).__name__}: {exc}"}
        return self.last

    def _tick(self, now: float) -> dict[str, Any]:
        scrape = self.metrics.scrape(now)
        ctx = Context(now, self.settings, self.engine, self.metrics, self._open_log)
        conditions, complete = self.conditions()
        answers: dict[str, tuple[list[Finding] | None, str | None]] = {}
        for condition in conditions:
            answers[condition.name] = self._evaluate(condition, ctx)
        transitions = self._apply(now, conditions, answers, complete)
        self._save_rules(now, conditions, answers, complete)
        delivered = self.deliver(now)
        if now - self._pruned >= PRUNE_EVERY_S:
            self._pruned = now
            self.store.prune(now - HISTORY_KEEP_S)
        current = self.store.current()
        return {
            "at": now,
            "metrics": scrape.error or "ok",
            "rules": len(conditions),
            "errors": {name: error for name, (_, error) in answers.items() if error},
            "transitions": transitions,
            "firing": [f"{a['rule']}{_labels(a['labels'])}" for a in current if a["state"] == "firing"],
            "pending": [f"{a['rule']}{_labels(a['labels'])}" for a in current if a["state"] == "pending"],
            "deliveries": delivered,
        }

    def _evaluate(self, condition: Condition, ctx: Context) -> tuple[list[Finding] | None, str | None]:
        previous = self._answers.get(condition.name)
        every = getattr(condition, "every_s", 0.0) or 0.0
        if previous is not None and every > 0 and 0 <= ctx.now - previous[0] < every:
            return previous[1], previous[2]
        try:
            found = condition.evaluate(ctx)
            error = None
        except Exception as exc:
            log.warning("alert rule %s could not be evaluated: %s", condition.name, exc, exc_info=True)
            found, error = None, f"{type(exc).__name__}: {exc}"[:500]
        self._answers[condition.name] = (ctx.now, found, error)
        return found, error

    def _apply(
        self,
        now: float,
        conditions: list[Condition],
        answers: dict[str, tuple[list[Finding] | None, str | None]],
        complete: bool,
    ) -> list[dict[str, Any]]:
        """State changes of this tick, in one transaction; the firing/resolved transitions made."""
        silences = self.store.silences(now)
        by_name = {c.name: c for c in conditions}
        transitions: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(ALERTS)).fetchall()]
            current = {(r["rule"], r["fingerprint"]): r for r in rows}
            for condition in conditions:
                found = answers[condition.name][0]
                if found is None:
                    continue  # unknown now: keep the state
                seen = set()
                for finding in found:
                    labels = {str(k): str(v) for k, v in finding.labels.items()}
                    fp = fingerprint(labels)
                    seen.add(fp)
                    row = current.get((condition.name, fp))
                    moved = self._hold(conn, now, condition, finding, labels, fp, row, silences)
                    if moved:
                        transitions.append(moved)
                for (rule, fp), row in current.items():
                    if rule == condition.name and fp not in seen:
                        moved = self._clear(conn, now, row, condition, silences, "condition no longer holds")
                        if moved:
                            transitions.append(moved)
            if complete:
                for (rule, _), row in current.items():
                    if rule not in by_name:
                        moved = self._clear(conn, now, row, None, silences, "rule removed")
                        if moved:
                            transitions.append(moved)
        return transitions

    def _hold(
        self, conn: sa.Connection, now: float, condition: Condition, finding: Finding, labels: dict[str, str],
        fp: str, row: dict[str, Any] | None, silences: list[dict[str, Any]],
    ) -> dict[str, Any] | None:  # fmt: skip
        """The condition holds for this instance: insert or advance its row; the transition when it fires."""
        severity = finding.severity or condition.severity
        summary = finding.summary or condition.summary
        since = now if row is None else row["active_since"]
        fires = now - since >= condition.for_s
        values = {"severity": severity, "summary": summary, "value": finding.value, "updated_at": now}
        if row is None:
            state = "firing" if fires else "pending"
            conn.execute(sa.insert(ALERTS).values(
                rule=condition.name, fingerprint=fp, labels=orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode(),
                state=state, active_since=now, fired_at=now if fires else None, **values,
            ))  # fmt: skip
        else:
            state = "firing" if row["state"] == "firing" or fires else "pending"
            if state == "firing" and row["state"] == "pending":
                values["fired_at"] = now
            key = (ALERTS.c.rule == condition.name) & (ALERTS.c.fingerprint == fp) & (ALERTS.c.state == row["state"])
            if not conn.execute(sa.update(ALERTS).where(key).values(state=state, **values)).rowcount:
                return None  # another evaluator moved it first (two ops workers for a moment): it records that
        if state == "firing" and (row is None or row["state"] == "pending"):
            return self._record(conn, now, condition, condition.name, fp, labels, "firing", severity, summary,
                                finding.value, since, silences)  # fmt: skip
        return None

    def _clear(
        self, conn: sa.Connection, now: float, row: dict[str, Any], condition: Condition | None,
        silences: list[dict[str, Any]], why: str,
    ) -> dict[str, Any] | None:  # fmt: skip
        """The condition no longer holds for this instance: drop its row; the transition when it was firing."""
        key = (ALERTS.c.rule == row["rule"]) & (ALERTS.c.fingerprint == row["fingerprint"])
        if not conn.execute(sa.delete(ALERTS).where(key & (ALERTS.c.state == row["state"]))).rowcount:
            return None  # another evaluator cleared it first
        if row["state"] != "firing":
            return None
        labels = orjson.loads(row["labels"])
        summary = f"resolved ({why}): {row['summary']}"
        return self._record(conn, now, condition, row["rule"], row["fingerprint"], labels, "resolved",
                            row["severity"], summary, row["value"], row["fired_at"] or row["active_since"],
                            silences)  # fmt: skip

    def _record(
        self, conn: sa.Connection, now: float, condition: Condition | None, rule: str, fp: str,
        labels: dict[str, str], state: str, severity: str, summary: str, value: float | None, since: float,
        silences: list[dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        silenced = any(silence_matches(s, rule, labels, now) for s in silences)
        extra = list(getattr(condition, "webhooks", ()) or ()) if condition is not None else []
        targets = list(dict.fromkeys([*self.settings.alert_webhooks, *extra]))
        delivery = "silenced" if silenced else "pending" if targets else "none"
        link = (
            getattr(condition, "dashboard_url", "") if condition else ""
        ) or f"{dashboard_base(self.settings)}/#/alerts"
        conn.execute(sa.insert(HISTORY).values(
            at=now, rule=rule, fingerprint=fp, labels=orjson.dumps(labels, option=orjson.OPT_SORT_KEYS).decode(),
            state=state, severity=severity, summary=summary, value=value, since=since, silenced=silenced,
            delivery=delivery, attempts=0, deliveries="{}", targets=orjson.dumps(targets).decode(),
            dashboard_url=link,
        ))  # fmt: skip
        text = f"alert {rule}{_labels(labels)} {state}: {summary}" + (" (silenced: not sent)" if silenced else "")
        log.log(logging.WARNING if state == "firing" else logging.INFO, text)
        return {"rule": rule, "labels": labels, "state": state, "silenced": silenced}

    def _save_rules(
        self, now: float, conditions: list[Condition], answers: dict[str, tuple[list[Finding] | None, str | None]],
        complete: bool,
    ) -> None:  # fmt: skip
        limits = thresholds(self.settings)
        rows = []
        for condition in conditions:
            try:
                definition = dict(condition.describe())
            except Exception as exc:
                definition = {"name": condition.name, "error": str(exc)}
            if condition.name in limits and getattr(condition, "kind", "") == "builtin":
                definition["settings"] = limits[condition.name]
            rows.append({
                "name": condition.name, "kind": getattr(condition, "kind", "other"),
                "definition": orjson.dumps(definition, default=str).decode(), "evaluated_at": now,
                "error": answers[condition.name][1],
            })  # fmt: skip
        with self.engine.begin() as conn:
            if complete:
                conn.execute(sa.delete(RULES))
            else:
                conn.execute(sa.delete(RULES).where(RULES.c.name.in_([r["name"] for r in rows])))
            if rows:
                conn.execute(sa.insert(RULES), rows)

    # --- delivery
    def deliver(self, now: float) -> dict[str, int]:
        """Send every notification still pending; per outcome, how many entries."""
        counts = {"delivered": 0, "retrying": 0, "failed": 0}
        broken: set[str] = set()  # URLs that failed this tick: later entries wait for the next tick
        for entry in self.store.undelivered():
            deliveries: dict[str, Any] = entry["deliveries"]
            body = payload(entry)
            for url in entry["targets"]:
                if deliveries.get(url, {}).get("ok") or url in broken:
                    continue
                refusal = None if url in self.settings.alert_webhooks else self.guard.refusal(url)
                if refusal:
                    outcome = {"ok": False, "status": None, "error": f"refused: {refusal}", "at": time.time()}
                else:
                    outcome = post(self.http, url, body)
                deliveries[url] = outcome
                if not outcome["ok"]:
                    broken.add(url)
                    log.warning("alert %s %s: webhook %s failed: %s", entry["rule"], entry["state"], url,
                                outcome["error"])  # fmt: skip
            done = all(deliveries.get(url, {}).get("ok") for url in entry["targets"])
            if done:
                state, counts["delivered"] = "delivered", counts["delivered"] + 1
            elif now - entry["at"] > GIVE_UP_S:
                state, counts["failed"] = "failed", counts["failed"] + 1
            else:
                state, counts["retrying"] = "pending", counts["retrying"] + 1
            self.store.record_delivery(entry["id"], state, entry["attempts"] + 1, deliveries, now if done else None)
        return counts

    def close(self) -> None:
        self.metrics.close()
        self.http.close()
        for condition in self.builtins:
            closer = getattr(condition, "close", None)
            if closer is not None:
                closer()
        self._log = None


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else ""
