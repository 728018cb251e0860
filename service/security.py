"""Who may connect, how many from one address, and the headers every HTTP answer carries.

- **Origins** (`ALLOWED_ORIGINS`): a browser says which page opened a websocket or an
  EventSource in its `Origin` header. One whose origin is not listed is refused before the
  upgrade (or the stream) with HTTP 403; a request without the header (another service, a
  script, curl: no browser page can leave it out) is not refused for that. `*` (the
  default) allows every origin.
- **New connections per address** (`MAX_CONNECTS_PER_IP_PER_S`, burst
  `MAX_CONNECTS_PER_IP_BURST`, per worker): a token bucket per address (an IPv6 one by its
  /64, which one subscriber holds); past it a websocket is accepted and closed with 1013
  (try again later: clients come back with jittered back-off), an SSE stream gets HTTP 503.
  This, not a cap on open connections, is the default: an office NAT or a carrier's CGNAT
  puts thousands of readers behind one address, and they arrive over time, while a flood
  from one address stays bounded by the rate and by MAX_CONNECTIONS. Idle buckets are
  dropped, so the table holds only the addresses seen in the last burst/rate seconds.
- **Open connections per address** (`MAX_CONNECTIONS_PER_IP`, per worker; 0, the default:
  no cap): past it a websocket is accepted and closed with 1008 "too many connections from
  this address", an SSE stream gets HTTP 429. The address is the real client's behind a
  trusted proxy: uvicorn's ProxyHeadersMiddleware (service/forwarded.py) sets the scope's
  `client` before the app sees it, the websocket that WebApp serves ahead of Starlette's
  middleware included.
- **Headers** (`SecurityHeaders`, on HTTP responses only): `X-Content-Type-Options: nosniff`
  and `Referrer-Policy` on every one; a Content-Security-Policy on every one that has none of
  its own: for HTML, framing (`FRAME_ANCESTORS`) and no plugins or `<base>`; for anything
  else, nothing at all (`default-src 'none'; frame-ancestors 'none'`). The news page (`GET /`)
  sets its own strict policy (`page_policy`): scripts and styles from this origin only, no
  inline script, and its one inline stylesheet (the widget's CSS in the declarative shadow
  root, service/page.py) allowed by its hash, so the server-rendered board takes over
  without a flash.
- **`/metrics`** (`METRICS_TOKEN`): when set, a scrape must send `Authorization: Bearer
  TOKEN`; compared in constant time, 401 with `WWW-Authenticate: Bearer` otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import re
from collections import Counter
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from .auth import bearer
from .limits import KeyedBuckets, TokenBucket
from .protocol import CLOSE_POLICY, CLOSE_TRY_AGAIN

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("service.security")

ANY = "*"
# CORS for answers any page may read (the REST API, SSE, assets, the AsyncAPI document).
OPEN_TO_ALL = {"Access-Control-Allow-Origin": "*"}
# A websocket refused for its address: accepted, then closed with 1008 and this reason.
TOO_MANY_REASON = "too many connections from this address"
# A websocket refused for its address's connect rate: accepted, then closed with 1013.
TOO_FAST_REASON = "too many new connections from this address, try again later"
# Retry-After of an SSE stream refused for its address, in seconds.
RETRY_AFTER_S = 5
REFERRER_POLICY = "strict-origin-when-cross-origin"
# What a response that is not HTML may do as a document: nothing.
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[a-z0-9-]+(?:\.[a-z0-9-]+)*)"
                     r"(?::(?P<port>[0-9]{1,5}))?")
# CSP source expressions FRAME_ANCESTORS may hold (CSP3 "host-source" and "scheme-source").
_HOST_SOURCE = re.compile(r"(?:[a-z][a-z0-9+.-]*://)?(?:\*|(?:\*\.)?[a-z0-9-]+(?:\.[a-z0-9-]+)*"
                          r"|\[[0-9a-f:.]+\])(?::(?:[0-9]{1,5}|\*))?(?:/[^\s;,']*)?", re.IGNORECASE)
_SCHEME_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:", re.IGNORECASE)
_BEARER = re.compile(r"[A-Za-z0-9._~+/-]+=*")


# Settings (checked at start by settings.py)


def normalize_origin(raw: str) -> str | None:
    """An origin as browsers serialise it (`scheme://host[:port]`, lower case, no default
    port), or None when `raw` is not one (a path, `null`, junk)."""
    m = _ORIGIN.fullmatch(raw.strip().lower())
    if m is None:
        return None
    scheme, host, port = m["scheme"], m["host"], m["port"]
    if port is not None:
        number = int(port)
        if not 0 < number < 65536:
            return None
        if _DEFAULT_PORTS.get(scheme) == number:
            port = None
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{int(port)}"


def parse_origins(raw: str) -> frozenset[str] | None:
    """ALLOWED_ORIGINS: None for `*` (any origin), else the normalised origins. Raises
    ValueError naming the entry that is not `scheme://host[:port]`."""
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    if entries == [ANY]:
        return None
    if not entries:
        raise ValueError('must be "*" or a comma-separated list of origins, got nothing')
    origins = set()
    for entry in entries:
        if entry == ANY:
            raise ValueError('"*" allows every origin: it cannot be combined with others')
        origin = normalize_origin(entry)
        if origin is None:
            raise ValueError(f"{entry!r} is not an origin: scheme://host[:port] (no path, no "
                             "trailing slash), e.g. https://news.example.com")
        origins.add(origin)
    return frozenset(origins)


def parse_frame_ancestors(raw: str) -> str:
    """FRAME_ANCESTORS as the directive's value: `'self'`, `'none'`, or CSP sources
    (`https://news.example.com`, `https://*.example.com`, `https:`, `*`), separated by
    spaces or commas. Raises ValueError on anything else (a `;` or a quote could smuggle
    another directive into the header)."""
    tokens = [t for t in re.split(r"[\s,]+", raw.strip()) if t]
    if not tokens:
        raise ValueError("must be 'none', 'self' or CSP sources such as https://news.example.com")
    for token in tokens:
        if token.lower() == "'none'":
            if len(tokens) > 1:
                raise ValueError("'none' cannot be combined with other sources")
        elif token.lower() != "'self'" and not (_SCHEME_SOURCE.fullmatch(token)
                                                 or _HOST_SOURCE.fullmatch(token)):
            raise ValueError(f"{token!r} is not a CSP source: use 'self', 'none', "
                             "https://host[:port], https://*.example.com or https:")
    return " ".join(t.lower() if t.startswith("'") else t for t in tokens)


def check_metrics_token(token: str) -> None:
    if len(token) < 16:
        raise ValueError("must be at least 16 characters")
    if not _BEARER.fullmatch(token):
        raise ValueError("must be a bearer token: letters, digits and - . _ ~ + / (= at the end)")


# Origins and addresses


def request_origin(scope: Scope) -> str | None:
    """The request's Origin header as sent (the first one), or None without one."""
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            return bytes(value).decode("latin-1")
    return None


def client_address(scope: Scope) -> str | None:
    """The client's address: the real client's when a trusted proxy named it."""
    client = scope.get("client")
    return str(client[0]) if client else None


def rate_key(address: str) -> str:
    """Whose connect rate an address counts against: IPv4 as it is, IPv6 by its /64 (one
    subscriber's, which a host can fill with addresses at will)."""
    if ":" not in address:
        return address
    try:
        ip = ipaddress.IPv6Address(address.partition("%")[0])
    except ValueError:
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


# Why a connection was refused for its address: its connect rate, or its open connections.
Refusal = Literal["rate", "cap"]


class Gate:
    """What a websocket or an SSE request passes before it is served: its origin, its
    address's connect rate, and its address's share of the open connections (counted here
    while each is served)."""

    def __init__(self, settings: Settings, stats: Counter[str]) -> None:
        self.origins = parse_origins(settings.allowed_origins)
        self.per_address = settings.max_connections_per_ip
        self.held: Counter[str] = Counter()
        self.rates = (KeyedBuckets(settings.max_connects_per_ip_per_s,
                                   settings.max_connects_per_ip_burst)
                      if settings.max_connects_per_ip_per_s > 0 else None)
        self.rate_text = (f"{settings.max_connects_per_ip_per_s}/s, burst "
                          f"{settings.max_connects_per_ip_burst}")
        # The hub's stats: metrics.py reads the refusals from there.
        self.stats = stats
        self._log = TokenBucket(1)

    def origin_allowed(self, scope: Scope) -> bool:
        """Whether the request's Origin may connect (no Origin: yes); a refusal is counted
        and logged (at most a line a second)."""
        if self.origins is None:
            return True
        raw = request_origin(scope)
        if raw is None or normalize_origin(raw) in self.origins:
            return True
        self.stats["refused_origin"] += 1
        self._warn(scope, "origin", f"origin {raw[:200]!r} is not in ALLOWED_ORIGINS",
                   origin=raw[:200])
        return False

    def enter(self, address: str | None) -> Refusal | None:
        """Count a connection of `address` in (None), or refuse it, counted and logged:
        "rate" when the address opened MAX_CONNECTS_PER_IP_PER_S (and the burst) already,
        "cap" when it holds MAX_CONNECTIONS_PER_IP. Every None needs its `leave`. An
        unknown address (no client in the scope) is not counted."""
        if address is None:
            return None
        if self.rates is not None and not self.rates.take(
                rate_key(address), asyncio.get_running_loop().time()):
            self.stats["refused_address_rate"] += 1
            self._warn(None, "address_rate", f"new connections from {address} over "
                       f"{self.rate_text} (MAX_CONNECTS_PER_IP_PER_S)", client=address)
            return "rate"
        if self.per_address <= 0:
            return None
        if self.held[address] >= self.per_address:
            self.stats["refused_per_address"] += 1
            self._warn(None, "per_address", f"{self.held[address]} connections from {address} "
                       "already (MAX_CONNECTIONS_PER_IP)", client=address)
            return "cap"
        self.held[address] += 1
        return None

    def leave(self, address: str | None) -> None:
        if address is None or self.per_address <= 0:
            return
        left = self.held[address] - 1
        if left > 0:
            self.held[address] = left
        else:
            self.held.pop(address, None)

    async def websocket(self, scope: Scope, receive: Receive, send: Send
                        ) -> tuple[bool, str | None]:
        """Check a websocket before it is served: (False, _) when refused (and answered
        already), else (True, the address counted in) for `leave` at its end."""
        if not self.origin_allowed(scope):
            await refuse_websocket_origin(scope, receive, send)
            return False, None
        address = client_address(scope)
        refusal = self.enter(address)
        if refusal is not None:
            websocket = WebSocket(scope, receive, send)
            await websocket.accept()
            if refusal == "rate":
                await websocket.close(CLOSE_TRY_AGAIN, TOO_FAST_REASON)
            else:
                await websocket.close(CLOSE_POLICY, TOO_MANY_REASON)
            return False, None
        return True, address

    def _warn(self, scope: Scope | None, reason: str, why: str, **facts: str) -> None:
        if not self._log.take(asyncio.get_running_loop().time()):
            return
        client = facts.get("client") or (client_address(scope) if scope else None) or "?"
        log.warning("refusing a connection from %s: %s", client, why,
                    extra={"event": "client_refused", "reason": reason, "client": client, **facts})


def forbidden_origin_response() -> Response:
    return JSONResponse({"error": "forbidden", "message": "this origin may not connect "
                         "(ALLOWED_ORIGINS)"}, status_code=403,
                        headers={"X-Content-Type-Options": "nosniff"})


def too_many_response() -> Response:
    """An SSE stream refused for its address; open to any origin, so a page can read why."""
    return JSONResponse({"error": "too_many_connections", "message": TOO_MANY_REASON},
                        status_code=429, headers={**OPEN_TO_ALL, "Retry-After": str(RETRY_AFTER_S)})


def too_fast_response() -> Response:
    """An SSE stream refused for its address's connect rate: 503, as for MAX_CONNECTS_PER_S."""
    return JSONResponse({"error": "try_again_later", "message": TOO_FAST_REASON},
                        status_code=503, headers={**OPEN_TO_ALL, "Retry-After": str(RETRY_AFTER_S)})


def refusal_response(refusal: Refusal) -> Response:
    return too_fast_response() if refusal == "rate" else too_many_response()


async def refuse_websocket_origin(scope: Scope, receive: Receive, send: Send) -> None:
    """HTTP 403 instead of the upgrade: with the websocket denial response extension
    (uvicorn has it) a JSON body says why; without it, a close before the accept, which
    servers answer with a bodiless 403."""
    websocket = WebSocket(scope, receive, send)
    if "websocket.http.response" in scope.get("extensions", {}):
        await websocket.send_denial_response(forbidden_origin_response())
    else:
        await websocket.close(CLOSE_POLICY)


# Headers


def style_hash(css: str) -> str:
    """The CSP hash source of an inline <style> holding exactly `css`."""
    digest = hashlib.sha256(css.encode("utf-8")).digest()
    return f"'sha256-{base64.b64encode(digest).decode('ascii')}'"


@lru_cache(maxsize=8)
def page_policy(css: str, frame_ancestors: str) -> str:
    """The news page's policy: everything from this origin, no inline script, the one
    inline stylesheet (the widget's, `css`) by its hash, the websocket and /sse on this
    origin (CSP3's 'self' matches ws: and wss: of the same host), the favicon's data: URL."""
    return ("default-src 'self'; script-src 'self'; "
            f"style-src 'self' {style_hash(css)}; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; "
            f"frame-ancestors {frame_ancestors}")


def document_policy(frame_ancestors: str) -> str:
    """Any other HTML (the examples, with their own inline scripts): who may frame it."""
    return f"frame-ancestors {frame_ancestors}; object-src 'none'; base-uri 'self'"


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response, added to what a route
    set (a route's own Content-Security-Policy wins). Websockets pass untouched."""

    def __init__(self, app: ASGIApp, frame_ancestors: str = "'self'") -> None:
        self.app = app
        self.common = [(b"x-content-type-options", b"nosniff"),
                       (b"referrer-policy", REFERRER_POLICY.encode())]
        self.html = [(b"content-security-policy", document_policy(frame_ancestors).encode())]
        frame_options = {"'self'": b"SAMEORIGIN", "'none'": b"DENY"}.get(frame_ancestors)
        if frame_options is not None:  # for browsers without frame-ancestors
            self.html.append((b"x-frame-options", frame_options))
        self.other = [(b"content-security-policy", OTHER_POLICY.encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                html = any(name.lower() == b"content-type" and value.startswith(b"text/html")
                           for name, value in headers)
                for name, value in (*self.common, *(self.html if html else self.other)):
                    if name not in present:
                        headers.append((name, value))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# /metrics


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether `Authorization: Bearer X` carries `token`, compared in constant time."""
    presented = bearer(authorization)
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), token.encode("utf-8"))


def metrics_refusal(headers: Headers, token: str | None) -> Response | None:
    """The 401 for a scrape without the right token, or None (allowed, or no token set)."""
    if token is None:
        return None
    authorization = headers.get("authorization")
    if bearer_ok(authorization, token):
        return None
    challenge = 'Bearer realm="metrics"'
    if authorization is not None:
        challenge += ', error="invalid_token"'
    return Response("a bearer token is needed for /metrics (METRICS_TOKEN)\n", status_code=401,
                    media_type="text/plain; charset=utf-8",
                    headers={"WWW-Authenticate": challenge})
