"""The real client's address behind a proxy, from a trusted peer only.

uvicorn's ProxyHeadersMiddleware reads X-Forwarded-For, and only from the peers in
FORWARDED_ALLOW_IPS; nginx setups often send X-Real-IP instead. This outer layer turns an
X-Real-IP that comes without X-Forwarded-For into one, so both headers go through
uvicorn's single trust check and nothing here decides whom to believe.
"""

from __future__ import annotations

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
