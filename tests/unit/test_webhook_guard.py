"""WebhookGuard: which trend-alert webhook URLs the ops worker may call (alerts/egress.py)."""

from __future__ import annotations

import pytest

from headwater.alerts.egress import WebhookGuard

INTERNAL = [
    "http://127.0.0.1/x", "http://127.9.9.9:8080/", "http://localhost/", "http://10.0.0.5/", "http://172.16.3.4/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/", "http://[::1]:8080/", "http://[fe80::1]/",
    "http://[fd00::5]/", "http://[::ffff:127.0.0.1]/", "http://0.0.0.0/", "http://100.64.0.1/", "http://2130706433/",
    "http://0x7f.1/", "http://224.0.0.1/",
]  # fmt: skip


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_addresses_are_refused_with_the_setting_named(url: str) -> None:
    refusal = WebhookGuard().refusal(url)
    assert refusal is not None and refusal.startswith("webhook: ") and "webhook_allowed_hosts" in refusal


@pytest.mark.parametrize("url", ["https://93.184.216.34/hook", "http://[2606:4700::1111]/", "https://hooks.invalid/x"])
def test_public_and_unresolvable_hosts_pass(url: str) -> None:
    assert WebhookGuard().refusal(url) is None  # an unresolvable name fails at delivery, where it is reported


def test_allow_list_by_name_port_network_or_anything() -> None:
    guard = WebhookGuard(["localhost:9000", "hooks.lan", "10.1.0.0/16", "fd00::/8"])
    assert guard.refusal("http://localhost:9000/a") is None
    assert guard.refusal("http://localhost:9001/a") is not None  # the port is part of that entry
    assert guard.refusal("https://HOOKS.lan/a") is None  # names compare case-insensitively, any port
    assert guard.refusal("http://10.1.200.3/") is None and guard.refusal("http://10.2.0.1/") is not None
    assert guard.refusal("http://[fd00::5]/") is None
    assert WebhookGuard(["*"]).refusal("http://127.0.0.1/") is None


def test_literal_addresses_are_checked_without_a_lookup() -> None:
    guard = WebhookGuard()
    assert guard.refusal("http://127.0.0.1/", resolve=False) is not None
    assert guard.refusal("http://localhost/", resolve=False) is None  # names need the lookup
    assert guard.refusal("http://[::1", resolve=False) == "webhook: 'http://[::1' is not a valid URL (Invalid IPv6 URL)"


def test_a_bad_port_is_named() -> None:
    refusal = WebhookGuard().refusal("http://example.com:99999/")
    assert refusal == "webhook: 'http://example.com:99999/' is not a valid URL (Port out of range 0-65535)"
