"""/openapi.json documents every route, and a bounded schemathesis run finds no 5xx or non-JSON errors."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from starlette.routing import Route

from headwater.api.app import build_app
from headwater.collector.routes import INGEST_PATHS
from headwater.core.settings import load_settings
from tests.helpers import RunningHeadwater, child_env, make_keys, serving

DESTRUCTIVE = r"(revoke|/logout|/password|/role)"
KEEP = re.compile(r"^/api/(keys|users)/")  # deleting them would end the run (the admin key) or its sessions
STREAMS = r"^/api/live/stream$"  # server-sent events: each request would wait for its timeout
EXAMPLES = int(os.environ.get("HEADWATER_OPENAPI_EXAMPLES", "25"))  # per operation; the whole run stays about a minute


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    data_dir = tmp_path_factory.mktemp("openapi")
    keys = make_keys(data_dir)
    with serving(RunningHeadwater(data_dir, child_env(data_dir), command="server", keys=keys)) as running:
        yield running


def test_every_route_and_ingest_path_is_documented(server: RunningHeadwater, tmp_path: Path) -> None:
    doc = httpx.get(server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert {"bearerKey", "apiKeyHeader", "basicKey", "session", "csrf"} <= set(doc["components"]["securitySchemes"])
    (tmp_path / "headwater.toml").write_text("")
    app = build_app(load_settings(tmp_path / "headwater.toml", data_dir=tmp_path))
    starlette = app.fallback
    for route in starlette.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        path = path if isinstance(route, Route) else path + "/{path}"  # type: ignore[attr-defined]
        methods = {m.lower() for m in (getattr(route, "methods", None) or {"GET"}) if m != "HEAD"}
        for method in methods:
            assert method in doc["paths"].get(path, {}), f"{method.upper()} {path} undocumented"
    for path in INGEST_PATHS:
        assert "requestBody" in doc["paths"][path]["post"], path
    query = doc["paths"]["/api/query"]["post"]
    assert "requestBody" in query and query["responses"]["400"]["content"]["application/json"]["schema"]


# typed bodies reach the handlers' success paths, not only their 400s
MUST_SUCCEED = {"POST /api/insights", "POST /api/keys", "POST /api/privacy/deletions", "POST /api/alerts/silences"}


def _run(
    operations: list[Any],
    url: str,
    headers: dict[str, str],
    examples: int,
    seen: dict[str, set[int]],
    mode: GenerationMode = GenerationMode.POSITIVE,
) -> list[str]:
    """Generate `examples` requests per operation; the problems found (5xx, tracebacks, non-JSON API errors)."""
    failures: list[str] = []
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=url, headers=headers, timeout=30)
            seen.setdefault(f"{case.method.upper()} {case.path}", set()).add(response.status_code)
            where = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 500 or "Traceback" in response.text:
                failures.append(where + f"\n  body: {case.body!r:.500}")
            elif response.status_code >= 400 and case.path.startswith("/api/"):
                try:
                    body = response.json()
                except ValueError:
                    body = None
                if not (isinstance(body, dict) and "error" in body):
                    failures.append("not a JSON error: " + where)

        t0 = time.monotonic()
        try:
            check()
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise  # (no negative example exists for an operation without parameters or body)
        if os.environ.get("HEADWATER_OPENAPI_TIMES"):
            print(f"{time.monotonic() - t0:6.2f} s {label}")
    return failures


def test_no_server_errors(server: RunningHeadwater) -> None:
    """Every documented operation, generated requests from its schemas, as the admin: no 5xx, errors are JSON.

    Deletions run last (fewer examples), except those that would end the run (the admin key, users, sign-out)."""
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    schema = schema.exclude(path_regex=DESTRUCTIVE).exclude(path_regex=STREAMS)
    everything = [result.ok() for result in schema.get_all_operations()]
    safe = [op for op in everything if op.method.upper() != "DELETE"]
    deletions = [op for op in everything if op.method.upper() == "DELETE" and not KEEP.match(op.path)]
    headers = {"authorization": f"Bearer {server.keys['admin']}"}
    seen: dict[str, set[int]] = {}
    started = time.monotonic()
    failures = _run(safe, server.url, headers, EXAMPLES, seen)
    failures += _run(safe, server.url, headers, max(2, EXAMPLES // 8), seen, GenerationMode.NEGATIVE)  # wrong types
    failures += _run(deletions, server.url, headers, max(2, EXAMPLES // 5), seen)
    took = time.monotonic() - started
    print(f"schemathesis: {len(safe)} + {len(deletions)} deletions, {EXAMPLES} examples each, in {took:.1f} s")
    assert len(safe) > 50 and deletions
    assert not failures, "\n".join(sorted(set(failures)))
    for label in MUST_SUCCEED:
        assert any(200 <= code < 300 for code in seen.get(label, ())), f"{label}: no success in {seen.get(label)}"
