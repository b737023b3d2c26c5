"""The collector's HTTP surface as a bare ASGI app.

Why not Starlette routes here: profiling `POST /track` with one event per request showed about
half of the server's CPU in Starlette's routing, middleware and Request objects. The ingest paths
are a handful of fixed POST URLs, so they are dispatched here directly; every other request (and
CORS preflights) falls through to the Starlette app.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from headwater.auth.keys import KeyStore
from headwater.collector.parsing import BatchParser, Limits, ParsedBatch, decompress, peek_write_key
from headwater.core import metrics
from headwater.core.erasure import Suppressor
from headwater.core.errors import AuthError, BackPressureError, CollectorError
from headwater.core.events import RAW_TRACK, SEGMENT_TYPES
from headwater.log.base import Producer

_WANTED_HEADERS = {
    name.encode(): name
    for name in (
        "x-api-key", "authorization", "content-length", "content-encoding", "origin", "user-agent", "x-forwarded-for",
    )
}  # fmt: skip
INGEST_PATHS = {"/track": RAW_TRACK, "/v1/import": "batch", "/v1/batch": "batch"}
INGEST_PATHS.update({f"/v1/{t}": t for t in SEGMENT_TYPES})
# analytics-next (Segment's browser SDK) posts to `<apiHost>/<first letter of the type>`: /v1/t, /v1/p, /v1/b …
INGEST_PATHS.update({f"/v1/{t[0]}": t for t in SEGMENT_TYPES} | {"/v1/b": "batch"})


def request_key(headers: Mapping[str, str]) -> str | None:
    """The key from x-api-key, HTTP Basic user (Segment SDKs) or a Bearer token."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user = base64.b64decode(value.strip(), validate=False).decode("utf-8", "replace")
        except ValueError:
            return None
        return user.split(":", 1)[0] or None
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return None


def ids_of(value: bytes) -> tuple[object, ...]:
    """The person ids of a log record's event (user id, anonymous id, and an alias's previous id); for a
    quarantined record, those of its raw payload when that is a JSON object."""
    try:
        envelope = orjson.loads(value)
        event = envelope.get("e")
        if event is None and isinstance(envelope.get("raw"), str):
            event = orjson.loads(envelope["raw"])
    except orjson.JSONDecodeError:
        return ()
    if not isinstance(event, dict):
        return ()
    return (
        event.get("userId", event.get("user_id")), event.get("anonymousId", event.get("anonymous_id")),
        event.get("previousId"),
    )  # fmt: skip


class Collector:
    """Turns one ingest request into log records; holds the back-pressure state."""

    def __init__(self, producer: Producer, keys: KeyStore, limits: Limits) -> None:
        self.producer = producer
        self.keys = keys
        self.limits = limits
        self.overload: tuple[str, int] | None = None  # (reason, retry-after seconds)
        # Counted locally and pushed to Prometheus by flush_metrics() twice a second: in
        # multi-process mode every metric update is an mmap write under a lock.
        self._requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self._accepted: collections.Counter[str] = collections.Counter()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._duplicates = 0
        self._bytes = 0
        self._append_seconds: list[float] = []
        self.suppressor: Suppressor | None = None  # ids of deleted people whose events are dropped
        # applied to each parsed batch before it is appended (the tracking plan's personal data and consent rules);
        # returns how many events it dropped on purpose
        self.transform: Callable[[ParsedBatch, str], int] | None = None
        self.trust_forwarded = False  # client address from X-Forwarded-For (behind the user's own proxy)
        self.record_ip = True  # False when IPs are neither stored nor geolocated: the log never holds them
        self._suppressed: collections.Counter[str] = collections.Counter()

    def flush_metrics(self) -> None:
        requests, self._requests = self._requests, collections.Counter()
        accepted, self._accepted = self._accepted, collections.Counter()
        rejected, self._rejected = self._rejected, collections.Counter()
        timings, self._append_seconds = self._append_seconds, []
        for (route, status), n in requests.items():
            metrics.REQUESTS.labels(route, str(status)).inc(n)
        for label, n in accepted.items():
            metrics.EVENTS_ACCEPTED.labels(label).inc(n)
        for label, n in rejected.items():
            metrics.EVENTS_REJECTED.labels(label).inc(n)
        if self._duplicates:
            metrics.EVENTS_DUPLICATE.inc(self._duplicates)
            self._duplicates = 0
        if self._bytes:
            metrics.REQUEST_BYTES.inc(self._bytes)
            self._bytes = 0
        for seconds in timings:
            metrics.APPEND_SECONDS.observe(seconds)
        suppressed, self._suppressed = self._suppressed, collections.Counter()
        for source, n in suppressed.items():
            metrics.EVENTS_SUPPRESSED.labels(source).inc(n)

    async def handle(
        self,
        headers: Mapping[str, str],
        read: Callable[[int], Awaitable[bytes]],
        endpoint: str,
        peer: str | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Return (status, JSON payload, extra headers). `peer`: the connection's client address."""
        route = "/track" if endpoint == RAW_TRACK else f"/v1/{endpoint}"
        extra: dict[str, str] = {}
        try:
            status, payload = await self._handle(headers, read, endpoint, peer)
        except (AuthError, CollectorError) as exc:
            status, payload = exc.status, {"success": False, "error": str(exc)}
        except BackPressureError as exc:
            metrics.BACKPRESSURE.labels(str(exc).split(":")[0]).inc()
            status, payload = 503, {"success": False, "error": str(exc)}
            extra["retry-after"] = str(exc.retry_after)
        self._requests[(route, status)] += 1
        return status, payload, extra

    def _client(self, headers: Mapping[str, str], peer: str | None) -> dict[str, str]:
        """Enrichment inputs of the request: the client address, and the User-Agent of browser requests (those
        with an Origin; a server's library name says nothing about the person, and would cost every record)."""
        client: dict[str, str] = {}
        forwarded = headers.get("x-forwarded-for") if self.trust_forwarded else None
        # the right-most entry is the one the user's proxy added; entries left of it come from the client
        address = forwarded.split(",")[-1].strip() if forwarded else peer
        if address and self.record_ip:
            client["ip"] = address
        agent = headers.get("user-agent")
        if agent and headers.get("origin") is not None:
            client["ua"] = agent[:512]
        return client

    async def _handle(
        self, headers: Mapping[str, str], read: Callable[[int], Awaitable[bytes]], endpoint: str, peer: str | None
    ) -> tuple[int, dict[str, Any]]:
        key = request_key(headers)
        source = None
        if key is not None:  # fail fast before reading a body we would refuse
            source = self.keys.require(key, write=True).name
        if self.overload is not None:
            reason, retry = self.overload
            raise BackPressureError(reason, retry)
        limit = self.limits.max_request_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise CollectorError(f"body is {declared} bytes; the limit is {limit}: send smaller batches", 413)
        body = decompress(await read(limit), headers.get("content-encoding"), limit)
        self._bytes += len(body)
        if source is None:
            source = self.keys.require(peek_write_key(body) if endpoint != RAW_TRACK else None, write=True).name
        parser = BatchParser(self.limits, source, int(time.time() * 1000), self._client(headers, peer))
        parsed = parser.parse_track(body) if endpoint == RAW_TRACK else parser.parse_segment(body, endpoint)
        suppressed = self._suppress(parsed, source)
        if self.transform is not None and parsed.records:
            suppressed += self.transform(parsed, source)
        return await self._append(parsed, "track" if endpoint == RAW_TRACK else endpoint, suppressed)

    def _suppress(self, parsed: ParsedBatch, source: str) -> int:
        """Drop the events that carry a suppressed id (a deleted person's); return how many."""
        if self.suppressor is None or not (parsed.records or parsed.quarantine) or not self.suppressor.active():
            return 0
        blocked = self.suppressor.blocked
        keep = [not blocked(*ids_of(value)) for _key, value in parsed.records]
        dropped = keep.count(False)
        if dropped:
            parsed.records = [r for r, k in zip(parsed.records, keep, strict=True) if k]
            parsed.idempotency = [i for i, k in zip(parsed.idempotency, keep, strict=True) if k]
            self._suppressed[source] += dropped
        invalid = len(parsed.quarantine)  # nor do their invalid events reach quarantine (still answered as rejected)
        parsed.quarantine = [r for r in parsed.quarantine if not blocked(*ids_of(r[1]))]
        self._suppressed[source] += invalid - len(parsed.quarantine)
        return dropped

    async def _append(self, parsed: ParsedBatch, label: str, suppressed: int = 0) -> tuple[int, dict[str, Any]]:
        records = parsed.records + parsed.quarantine
        idem = parsed.idempotency + [None] * len(parsed.quarantine)
        duplicates = 0
        if records:
            started = time.perf_counter()
            result = await self.producer.append_async(records, idem)
            self._append_seconds.append(time.perf_counter() - started)
            duplicates = len(result.duplicates)
        accepted = parsed.valid
        self._accepted[label] += accepted - duplicates
        self._duplicates += duplicates
        if parsed.rejected:
            self._rejected[label] += len(parsed.rejected)
        accepted += suppressed  # taken and dropped on purpose: the sender must not retry them
        payload: dict[str, Any] = {"success": accepted > 0 or not parsed.rejected, "accepted": accepted}
        if suppressed:
            payload["suppressed"] = suppressed
        if duplicates:
            payload["duplicates"] = duplicates
        if parsed.rejected:
            payload["rejected"] = parsed.rejected
            payload["quarantined"] = len(parsed.rejected)
        status = 200 if accepted > 0 or not parsed.rejected else 400
        if status == 400:
            payload["error"] = f"no valid events: {len(parsed.rejected)} rejected (see `rejected`; kept in quarantine)"
        return status, payload


class IngestApp:
    """ASGI app: ingest POSTs handled here, everything else passed to `fallback`."""

    def __init__(self, fallback: ASGIApp, cors_origins: list[str]) -> None:
        self.fallback = fallback
        self.collector: Collector | None = None  # set once the lifespan has opened the log
        self.any_origin = "*" in cors_origins
        self.origins = {o.encode() for o in cors_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and self.collector is not None:
            endpoint = INGEST_PATHS.get(scope["path"])
            if endpoint is not None:
                await self._ingest(self.collector, scope, receive, send, endpoint)
                return
        await self.fallback(scope, receive, send)

    async def _ingest(self, collector: Collector, scope: Scope, receive: Receive, send: Send, endpoint: str) -> None:
        headers = {}
        for name, value in scope["headers"]:  # ASGI header names are lower-case already
            wanted = _WANTED_HEADERS.get(name)
            if wanted is not None:
                headers[wanted] = value.decode("latin-1")

        async def read(limit: int) -> bytes:
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise CollectorError(f"body is over the {limit}-byte limit: send smaller batches", 413)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)

        client = scope.get("client")
        status, payload, extra = await collector.handle(headers, read, endpoint, client[0] if client else None)
        body = orjson.dumps(payload)
        response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        origin = headers.get("origin")
        if origin is not None and (self.any_origin or origin.encode() in self.origins):
            response_headers.append((b"access-control-allow-origin", b"*" if self.any_origin else origin.encode()))
            response_headers.append((b"vary", b"Origin"))
        response_headers.extend((k.encode(), v.encode()) for k, v in extra.items())
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})
