"""The protocol's vocabulary (quote_core.protocol, quote_core.text) is what every end says:
the JavaScript client, which declares the same figures by hand, holds each of them equal
(read from its modules by Node, so a change on either side fails here), the Python client
takes them from the core, and the codes keep their wire form as enum members."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
from typing import Any, get_args

import orjson
import pytest

from quote_client import QuoteClient
from quote_core import protocol, text
from quote_core.protocol import (
    MODES,
    RECONNECT_CAP_S,
    SLOW_DOWN_CODES,
    CloseCode,
    ErrorCode,
    FeedState,
    Mode,
    auth_refusal,
    split_query_symbols,
)
from quote_core.quote import SYMBOL_PATTERN
from tests.service_proc import ROOT

JS_SRC = ROOT / "clients" / "js" / "src"
# The modules that declare protocol figures; the widget takes its own from stream.js.
JS_MODULES = ("stream.js", "sse-socket.js")
# Closes no service sends: 1006, the abnormal closure (the browser's, for a lost socket),
# and 4000, the JS client's own close of a socket silent beyond the heartbeat.
CLIENT_SIDE_CLOSES = frozenset({1006, 4000})

# A close and its reason -> is it a refusal of the token? Both clients decide it alike.
REFUSALS = [
    (1008, "token expired"),
    (1008, "Token signature invalid"),
    (1008, "authentication required: send a token"),
    (1008, "  Authentication required"),
    (1008, "a token may not change the tier"),
    (1008, "too many connections from this address"),
    (1008, ""),
    (1013, "token expired"),
    (4029, "message flood"),
    (1000, "authentication"),
]

NODE_SCRIPT = """
import * as stream from './clients/js/src/stream.js';
import * as format from './clients/js/src/format.js';
import * as compact from './clients/js/src/compact.js';
const refusals = JSON.parse(process.argv[1]);
console.log(JSON.stringify({
  SLOW_DOWN_CODES: [...stream.SLOW_DOWN_CODES],
  MODES: [...stream.MODES],
  ENCODINGS: [...compact.ENCODINGS],
  MIN_HZ: stream.MIN_HZ,
  MAX_HZ: stream.MAX_HZ,
  SYMBOL_RE: { source: stream.SYMBOL_RE.source, flags: stream.SYMBOL_RE.flags },
  RECONNECT: stream.RECONNECT,
  text: [format.UP, format.DOWN, format.INCREASED, format.DECREASED, format.NO_CHANGE],
  refusals: refusals.map(([code, reason]) => stream.isTokenRefusal(code, reason)),
}));
"""


@pytest.fixture(scope="module")
def js() -> dict[str, Any]:
    """The JS client's figures, as its ES modules export them."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node not found: the JS client's tests need Node.js 20+ (bash .ci/system-packages)")
    result = subprocess.run([node, "--input-type=module", "-e", NODE_SCRIPT, json.dumps(REFUSALS)],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    figures: dict[str, Any] = json.loads(result.stdout)
    return figures


# The JavaScript client against the core.


def test_the_same_closes_slow_the_reconnect_down(js: dict[str, Any]) -> None:
    assert sorted(js["SLOW_DOWN_CODES"]) == sorted(SLOW_DOWN_CODES)


def test_the_same_closes_refuse_the_token(js: dict[str, Any]) -> None:
    assert js["refusals"] == [auth_refusal(code, reason) for code, reason in REFUSALS]
    assert any(js["refusals"]) and not all(js["refusals"]), "the table tells both kinds apart"


def test_the_same_reconnect_cap(js: dict[str, Any]) -> None:
    """After an ordinary drop neither client waits longer than RECONNECT_CAP_S between
    attempts (the Python client's default max_backoff_s)."""
    assert js["RECONNECT"]["capMs"] == RECONNECT_CAP_S * 1000
    default = inspect.signature(QuoteClient).parameters["max_backoff_s"].default
    assert default == RECONNECT_CAP_S


def test_the_same_open_timeout(js: dict[str, Any]) -> None:
    """A socket not open within this long is given up and retried, by either client."""
    default = inspect.signature(QuoteClient).parameters["open_timeout"].default
    assert js["RECONNECT"]["openTimeoutMs"] == default * 1000 == 10_000


def test_the_same_modes_and_rates(js: dict[str, Any]) -> None:
    assert js["MODES"] == list(MODES)
    assert sorted(js["ENCODINGS"]) == sorted(protocol.ENCODINGS)
    assert (js["MIN_HZ"], js["MAX_HZ"]) == (protocol.MIN_HZ, protocol.MAX_HZ)


def test_the_same_symbols(js: dict[str, Any]) -> None:
    assert js["SYMBOL_RE"] == {"source": f"^{SYMBOL_PATTERN.pattern}$", "flags": ""}


def test_the_same_ticker_words(js: dict[str, Any]) -> None:
    assert js["text"] == [text.UP, text.DOWN, text.INCREASED, text.DECREASED, text.NO_CHANGE]


def test_the_codes_the_js_client_names_are_the_cores() -> None:
    """The close codes the JS client sends, compares or reconnects after, and the error
    codes it compares, written as literals in its modules: each is one of the core's, or
    one the service never sends (CLIENT_SIDE_CLOSES)."""
    closes: set[int] = set()
    errors: set[str] = set()
    for name in JS_MODULES:
        source = (JS_SRC / name).read_text(encoding="utf-8")
        closes |= {int(c) for c in re.findall(
            r"(?:close|onClose|scheduleReconnect|lost)\((?:[\w.]+, )?(\d{4})\b", source)}
        closes |= {int(c) for c in re.findall(r"\bcode\s*={2,3}\s*(\d{4})\b", source)}
        closes |= {int(c) for c in re.findall(r"\bcode\s*=\s*(\d{4})\b", source)}
        errors |= set(re.findall(r"\.code\s*={2,3}\s*'([a-z_]+)'", source))
    assert {1000, 1008} <= closes and "token_expired" in errors, "the patterns still find them"
    assert closes - CLIENT_SIDE_CLOSES <= set(CloseCode), sorted(closes - CLIENT_SIDE_CLOSES - set(CloseCode))
    assert errors <= set(ErrorCode), sorted(errors - set(ErrorCode))


# The core itself.


def test_codes_keep_their_wire_form() -> None:
    """Members of ErrorCode and CloseCode are their values wherever they are written: in
    orjson's and json's output, in f-strings and %-formatting, and compared with ==."""
    for code in ErrorCode:
        assert orjson.dumps({"code": code}) == orjson.dumps({"code": code.value})
        assert json.dumps(code) == json.dumps(code.value)
        assert f"{code}" == str(code) == code.value and code == code.value
    for close in CloseCode:
        assert orjson.dumps(close) == str(close.value).encode() == json.dumps(close).encode()
        logged = "%s %d" % (close, close)  # noqa: UP031 - as the logging calls format them
        assert f"{close}" == str(close.value) and logged == f"{close.value} {close.value}"
        assert close == close.value
    assert f"error_{protocol.FORBIDDEN}" == "error_forbidden"


def test_the_old_names_are_the_members() -> None:
    for code in ErrorCode:
        assert getattr(protocol, code.name) is code
    for close in CloseCode:
        assert getattr(protocol, f"CLOSE_{close.name}") is close
    assert (protocol.CLOSE_POLICY, protocol.CLOSE_TRY_AGAIN, protocol.CLOSE_RATE_LIMITED) == (
        1008, 1013, 4029)


def test_modes_and_feed_states() -> None:
    assert MODES == get_args(Mode) == ("conflated", "every")
    assert (protocol.MODE_CONFLATED, protocol.MODE_EVERY) == MODES
    assert get_args(FeedState) == ("live", "stale")
    assert {CloseCode.POLICY, CloseCode.TRY_AGAIN, CloseCode.RATE_LIMITED} == SLOW_DOWN_CODES


def test_split_query_symbols() -> None:
    assert split_query_symbols("  ") is None
    assert split_query_symbols(" * ") == "*"
    assert split_query_symbols("OGDC, ppl,,") == ["OGDC", "ppl"]
