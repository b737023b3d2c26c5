"""Sign-in throttling and its audit trail, /metrics access, CORS by path, and security headers, on a real server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from headwater.auth.users import UserStore
from tests.helpers import RunningHeadwater, child_env, make_keys, serving

PASSWORD = "sign-in-password-1"
BI_ORIGIN = "https://bi.example.com"


def _server(data_dir: Path, **settings: object) -> RunningHeadwater:
    keys = make_keys(data_dir)
    users = UserStore(data_dir / "users.db")
    users.create("alice", "analyst", PASSWORD)
    users.close()
    env = child_env(data_dir, login_free_failures=2, login_backoff_max_s=4, api_cors_origins=BI_ORIGIN, **settings)
    return RunningHeadwater(data_dir, env, command="server", keys=keys)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHeadwater]:
    with serving(_server(tmp_path_factory.mktemp("security"))) as hw:
        yield hw


def login(hw: RunningHeadwater, name: str, password: str, address: str) -> httpx.Response:
    # uvicorn takes the client address from X-Forwarded-For when the peer is 127.0.0.1 (a proxy on this host)
    body = {"name": name, "password": password}
    return httpx.post(hw.url + "/api/login", json=body, headers={"x-forwarded-for": address}, timeout=30)


def test_failed_sign_ins_of_one_user_are_throttled_then_allowed_after_the_wait(server: RunningHeadwater) -> None:
    hw = server
    assert login(hw, "alice", "wrong-1", "10.0.0.1").status_code == 401
    assert login(hw, "alice", "wrong-2", "10.0.0.2").status_code == 401
    refused = login(hw, "alice", PASSWORD, "10.0.0.3")  # the right password, but the user must wait first
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert "too many failed sign-ins" in refused.json()["error"]
    time.sleep(int(refused.headers["retry-after"]) + 0.2)
    assert login(hw, "alice", "wrong-3", "10.0.0.4").status_code == 401  # the next failure doubles the wait
    doubled = login(hw, "alice", PASSWORD, "10.0.0.5")
    assert doubled.status_code == 429 and int(doubled.headers["retry-after"]) >= 2
    time.sleep(int(doubled.headers["retry-after"]) + 0.2)
    signed_in = login(hw, "alice", PASSWORD, "10.0.0.6")
    assert signed_in.status_code == 200, signed_in.text
    assert login(hw, "alice", "wrong-4", "10.0.0.7").status_code == 401  # a success reset the count: free again

    audit = httpx.get(
        hw.url + "/api/audit", params={"action": "login", "actor": "alice"},
        headers={"authorization": f"Bearer {hw.keys['admin']}"}, timeout=30,
    ).json()["rows"]  # fmt: skip
    assert [r["action"] for r in audit] == ["login.failed", "login.succeeded"] + ["login.failed"] * 3
    assert audit[1]["address"] == "10.0.0.6" and audit[0]["address"] == "10.0.0.7"
    assert all(r["actor"] == "alice" and r["target"] == "alice" for r in audit)
    assert PASSWORD not in str(audit) and "wrong-" not in str(audit)  # passwords never reach the trail


def test_failed_sign_ins_from_one_address_are_throttled_whatever_the_name(server: RunningHeadwater) -> None:
    hw = server
    assert login(hw, "mallory-1", "guess", "192.0.2.9").status_code == 401  # unknown users count too
    assert login(hw, "mallory-2", "guess", "192.0.2.9").status_code == 401
    refused = login(hw, "mallory-3", "guess", "192.0.2.9")
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert login(hw, "mallory-3", "guess", "192.0.2.10").status_code == 401  # another address is not held up
    viewer = httpx.get(hw.url + "/api/audit", headers={"authorization": f"Bearer {hw.keys['read']}"}, timeout=30)
    assert viewer.status_code == 403  # the trail is for admins only


def test_metrics_answer_only_this_machine_without_a_token(server: RunningHeadwater) -> None:
    local = httpx.get(server.url + "/metrics", timeout=30)
    assert local.status_code == 200 and "headwater_" in local.text
    remote = httpx.get(server.url + "/metrics", headers={"x-forwarded-for": "203.0.113.7"}, timeout=30)
    assert remote.status_code == 403
    assert "metrics_token" in remote.json()["error"]


def test_metrics_token_is_required_when_set(tmp_path: Path) -> None:
    with serving(_server(tmp_path, metrics_token="scrape-secret-1")) as hw:
        assert httpx.get(hw.url + "/metrics", timeout=30).status_code == 401
        wrong = httpx.get(hw.url + "/metrics", headers={"authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401 and "metrics_token" in wrong.json()["error"]
        right = httpx.get(hw.url + "/metrics", headers={"authorization": "Bearer scrape-secret-1"}, timeout=30)
        assert right.status_code == 200 and "headwater_" in right.text


def preflight(hw: RunningHeadwater, path: str, origin: str) -> httpx.Response:
    headers = {"origin": origin, "access-control-request-method": "POST",
               "access-control-request-headers": "authorization,content-type"}  # fmt: skip
    return httpx.options(hw.url + path, headers=headers, timeout=30)


def test_cors_api_answers_only_configured_origins_collector_answers_any(server: RunningHeadwater) -> None:
    hw = server
    foreign = preflight(hw, "/api/query", "https://evil.example")
    assert "access-control-allow-origin" not in foreign.headers
    allowed = preflight(hw, "/api/query", BI_ORIGIN)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == BI_ORIGIN
    auth = {"authorization": f"Bearer {hw.keys['read']}"}
    answer = httpx.post(hw.url + "/api/query", json={"sql": "SELECT 1"}, timeout=30,
                        headers={**auth, "origin": "https://evil.example"})  # fmt: skip
    assert "access-control-allow-origin" not in answer.headers  # the browser will not hand the body to evil.example

    for path in ("/v1/track", "/v1/t", "/track"):
        collector = preflight(hw, path, "https://shop.example")
        assert collector.headers.get("access-control-allow-origin") == "*", path
    sent = httpx.post(hw.url + "/v1/track", timeout=30,
                      json={"writeKey": hw.keys["write"], "event": "x", "userId": "u"},
                      headers={"origin": "https://shop.example"})  # fmt: skip
    assert sent.status_code == 200 and sent.headers["access-control-allow-origin"] == "*"
    settings = httpx.get(
        hw.url + f"/v1/projects/{hw.keys['write']}/settings", headers={"origin": "https://shop.example"}
    )
    assert settings.headers.get("access-control-allow-origin") == "*"
    health = httpx.get(hw.url + "/healthz", headers={"origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in health.headers


def test_security_headers_and_embeddable_share_pages(server: RunningHeadwater) -> None:
    hw = server
    app = httpx.get(hw.url + "/", timeout=30)
    policy = app.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["frame-ancestors"] == "'none'" and app.headers["x-frame-options"] == "DENY"
    assert app.headers["x-content-type-options"] == "nosniff"
    assert app.headers["referrer-policy"] == "strict-origin-when-cross-origin"
    share = httpx.get(hw.url + "/share/some-token", timeout=30)
    assert "frame-ancestors *" in share.headers["content-security-policy"]
    assert "x-frame-options" not in share.headers
    api = httpx.get(hw.url + "/api/me", timeout=30)
    assert api.headers["x-content-type-options"] == "nosniff"
