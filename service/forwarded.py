"""The real client's address behind a proxy, from a trusted peer only.

uvicorn's ProxyHeadersMiddleware reads X-Forwarded-For, and only from the peers in
FORWARDED_ALLOW_IPS; nginx setups often send X-Real-IP instead. This outer layer turns an
X-Real-IP that comes without X-Forwarded-For into one, so both headers go through
uvicorn's single trust check and nothing here decides whom to believe.

uvicorn takes an entry of FORWARDED_ALLOW_IPS that is not an address or a network as a
literal name, which no TCP peer ever matches: `check_trusted` refuses those at start.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware


class RealIpAsForwardedFor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            real = None
            for name, value in headers:
                if name == b"x-forwarded-for":
                    break
                if name == b"x-real-ip":
                    real = value
            else:
                if real is not None:
                    scope = {**scope, "headers": [*headers, (b"x-forwarded-for", real)]}
        await self.app(scope, receive, send)


def behind_proxies(app: ASGIApp, trusted: str) -> ASGIApp:
    """`app` with scope["client"] set to the real client when the peer is trusted."""
    return RealIpAsForwardedFor(ProxyHeadersMiddleware(app, trusted_hosts=trusted))  # type: ignore[arg-type]


def check_trusted(trusted: str) -> None:
    """ValueError unless FORWARDED_ALLOW_IPS is "*" or comma-separated addresses and
    networks (strict: 10.0.0.1/8, with host bits set, is refused, not read as a name)."""
    entries = [entry.strip() for entry in trusted.split(",") if entry.strip()]
    if entries == ["*"]:
        return
    accepts = "must be * or comma-separated IP addresses and networks (10.0.0.0/8, ::1)"
    if not entries:
        raise ValueError(f"{accepts}, not nothing")
    for entry in entries:
        if entry == "*":
            raise ValueError(f"{accepts}: * trusts every peer and cannot be combined with others")
        try:
            ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{accepts}; {entry!r} is neither") from None
            raise ValueError(f"{accepts}; {entry!r} has host bits set (the network is "
                             f"{network})") from None
