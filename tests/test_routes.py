"""The routes are plain functions of a request: called here without a server or a socket,
on an app whose engine has not started (no feed heard yet)."""

from __future__ import annotations

import orjson
from starlette.requests import Request

from service import rest, routes
from service.app import WebApp, create_app
from service.settings import Settings


def request(app: WebApp, path: str, query: bytes = b"") -> Request:
    return Request({"type": "http", "app": app, "method": "GET", "path": path,
                    "query_string": query, "headers": []})


async def test_readyz_says_not_ready_before_the_feed_is_heard() -> None:
    app = create_app(Settings())
    response = await routes.readyz(request(app, "/readyz"))
    body = orjson.loads(bytes(response.body))
    assert response.status_code == 503
    assert body["feed"] == "stale" and body["connections"] == 0 and not body["draining"]


async def test_quotes_answers_from_the_engine_of_the_request() -> None:
    app = create_app(Settings())
    response = await rest.quotes(request(app, "/quotes", b"symbols=OGDC"))
    assert response.status_code == 200
    assert orjson.loads(bytes(response.body)) == {"quotes": [], "feed": "stale", "unknown": ["OGDC"]}
    bad = await rest.quotes(request(app, "/quotes", b"symbols=no%20such"))
    assert bad.status_code == 400 and orjson.loads(bytes(bad.body))["error"] == "bad_request"


async def test_the_page_renders_without_a_server() -> None:
    app = create_app(Settings())
    response = await routes.index(request(app, "/"))
    assert response.status_code == 200
    assert b"<quote-ticker" in bytes(response.body)
    assert "frame-ancestors 'self'" in response.headers["content-security-policy"]
