"""Where trend-alert webhooks may point: public addresses, and non-public ones only when allowed.

An analyst (not an admin) can save a trend alert with a webhook URL, and the ops worker posts to it from the
server's network. Without this check an analyst could make Headwater call internal services (a cloud metadata
endpoint on 169.254.169.254, an admin port on 127.0.0.1, a database's HTTP API on 10.x) — server-side request
forgery. So a trend-alert webhook whose host is, or resolves to, a loopback, private, link-local, multicast,
reserved or otherwise non-global address is refused, unless the operator lists that host, address or network in
`webhook_allowed_hosts`. The URLs of `alert_webhooks` are the operator's own and are not checked.

The check runs when a rule is saved (a 400 naming `webhook`) and again before each delivery (the name may resolve
elsewhere by then; a refused delivery is recorded as failed with the reason). A host that does not resolve when
the rule is saved is accepted: delivery will report it.

Known limit: the address is resolved here and again by the HTTP client, so a name server answering differently
within that instant (DNS rebinding) is not stopped; pinning the address would need a custom httpx transport.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class WebhookGuard:
    """Decides whether a trend-alert webhook URL may be called; `allowed`: `webhook_allowed_hosts` entries."""

    def __init__(self, allowed: Sequence[str] = ()) -> None:
        self.any = "*" in allowed
        self.names = {a.lower() for a in allowed if a != "*" and not _network(a)}
        self.networks = [n for a in allowed if (n := _network(a)) is not None]

    def refusal(self, url: str, resolve: bool = True) -> str | None:
        """Why `url` may not be called (a sentence naming the address and the setting), or None when it may.
        `resolve=False`: only a literal address is checked (no name lookup)."""
        if self.any:
            return None
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            return f"webhook: {url!r} is not a valid URL ({exc})"
        if not host:
            return "webhook: the URL has no host"
        if host in self.names or f"{host}:{port}" in self.names:
            return None
        for address in _addresses(host, port, resolve):
            if (address.is_global and not address.is_multicast) or any(address in network for network in self.networks):
                continue
            shown = host if str(address) == host else f"{host} ({address})"
            return (
                f"webhook: {shown} is not a public address (loopback, private, link-local or reserved); "
                f"an admin can allow it with the webhook_allowed_hosts setting"
            )
        return None


def _network(entry: str) -> Network | None:
    """`entry` as an address or network ("10.0.0.0/8", "127.0.0.1"), or None when it is a host name."""
    try:
        return ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return None


def _addresses(host: str, port: int, resolve: bool) -> list[Address]:
    """The addresses `host` stands for: itself when it is one, else what the resolver answers (none on failure)."""
    try:
        return [_unmapped(ipaddress.ip_address(host))]
    except ValueError:
        pass
    if not resolve:
        return []
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [_unmapped(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos]


def _unmapped(address: Address) -> Address:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
