"""The client-message parser and the server frames, without sockets."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from service import protocol
from service.limits import RateLimiter, TokenBucket
from service.protocol import (
    ALL,
    Ping,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    parse_command,
    parse_query_symbols,
)


def parse(text: str, max_symbols: int = 500) -> protocol.Command:
    return parse_command(text, max_symbols=max_symbols)


def error_of(text: str, max_symbols: int = 500) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(text, max_symbols)
    return info.value


def test_subscribe_list_is_upper_cased_and_deduplicated() -> None:
    assert parse('{"op":"subscribe","id":1,"symbols":["ogdc","PPL","OGDC"]}') == Subscribe(
        1, frozenset({"OGDC", "PPL"})
    )


def test_subscribe_all_unsubscribe_and_ping() -> None:
    assert parse('{"op":"subscribe","id":"a","symbols":"*"}') == Subscribe("a", ALL)
    assert parse('{"op":"unsubscribe","symbols":["PPL"]}') == Unsubscribe(None, frozenset({"PPL"}))
    assert parse('{"op":"ping","id":4}') == Ping(4)


def test_unknown_fields_are_ignored() -> None:
    assert parse('{"op":"ping","id":4,"extra":{"x":1}}') == Ping(4)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", "bad_json"),
        ('{"op":"ping"', "bad_json"),
        ("[1,2]", "bad_request"),
        ('"ping"', "bad_request"),
        ("null", "bad_request"),
        ('{"id":1}', "bad_request"),
        ('{"op":"subscribe","id":1}', "bad_request"),
        ('{"op":"subscribe","symbols":"OGDC"}', "bad_request"),
        ('{"op":"subscribe","symbols":[1]}', "bad_request"),
        ('{"op":"subscribe","symbols":["<img src=x>"]}', "bad_request"),
        ('{"op":"subscribe","symbols":["ABCDEFGHIJKLMNOPQ"]}', "bad_request"),
        ('{"op":"subscribe","symbols":[""]}', "bad_request"),
        ('{"op":"ping","id":true}', "bad_request"),
        ('{"op":"ping","id":1.5}', "bad_request"),
        ('{"op":"ping","id":[1]}', "bad_request"),
        ('{"op":"ping","id":"' + "x" * 65 + '"}', "bad_request"),
        ('{"op":"ping","id":9007199254740993}', "bad_request"),
        ('{"op":"dance","id":1}', "unknown_op"),
        ('{"op":5}', "unknown_op"),
    ],
)
def test_bad_messages_get_their_error_code(text: str, code: str) -> None:
    assert error_of(text).code == code


def test_errors_echo_a_valid_id() -> None:
    assert error_of('{"op":"dance","id":7}').id == 7
    assert error_of('{"op":"subscribe","id":"x","symbols":5}').id == "x"
    frame = orjson.loads(error_of('{"op":"dance","id":7}').frame())
    assert frame == {"type": "error", "id": 7, "code": "unknown_op", "message": frame["message"]}
    assert "dance" in frame["message"]


def test_too_many_symbols() -> None:
    err = error_of('{"op":"subscribe","id":1,"symbols":["A","B","C"]}', max_symbols=2)
    assert err.code == "too_many_symbols" and err.id == 1


def test_id_of_64_characters_is_fine() -> None:
    assert parse('{"op":"ping","id":"' + "x" * 64 + '"}') == Ping("x" * 64)


def test_query_symbols() -> None:
    assert parse_query_symbols("ogdc, PPL,,", 500) == frozenset({"OGDC", "PPL"})
    assert parse_query_symbols("*", 500) == ALL
    assert parse_query_symbols("", 500) is None
    with pytest.raises(ProtocolError):
        parse_query_symbols("OGDC,<b>", 500)


def test_frames_are_the_documented_json() -> None:
    welcome = orjson.loads(protocol.welcome(node="3f2a9c01b7de", heartbeat_s=15, max_symbols=500,
                                            max_client_msgs_per_s=20, max_frame_bytes=4096,
                                            every_queue_bytes=1 << 20, max_recovery=10000))
    assert welcome == {"type": "welcome", "protocol": 1, "node": "3f2a9c01b7de", "heartbeat_s": 15,
                       "limits": {"max_symbols": 500, "max_client_msgs_per_s": 20,
                                  "max_frame_bytes": 4096, "every_queue_bytes": 1 << 20,
                                  "max_recovery": 10000}}
    assert orjson.loads(protocol.ack(1, "subscribe", {"PPL", "OGDC"}, ["PPL"], all=False)) == {
        "type": "ack", "id": 1, "op": "subscribe", "symbols": ["OGDC", "PPL"], "unknown": ["PPL"]}
    assert orjson.loads(protocol.quotes_frame("snapshot", ['{"symbol":"A"}', '{"symbol":"B"}'])) == {
        "type": "snapshot", "quotes": [{"symbol": "A"}, {"symbol": "B"}]}
    assert orjson.loads(protocol.pong(4, 99)) == {"type": "pong", "id": 4, "ts": 99}
    assert orjson.loads(protocol.status("stale", 5)) == {"type": "status", "feed": "stale", "ts": 5}
    assert orjson.loads(protocol.heartbeat(6)) == {"type": "heartbeat", "ts": 6}


def test_rate_limiter_refuses_past_the_rate_then_closes_a_flood() -> None:
    limiter = RateLimiter(5)
    now = 100.0
    assert [limiter.check(now) for _ in range(5)] == ["ok"] * 5
    assert [limiter.check(now) for _ in range(5)] == ["limited"] * 5
    assert limiter.check(now) == "close"


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(5)
    for _ in range(7):
        limiter.check(100.0)
    assert limiter.check(101.0) == "ok"
    # A steady client at the rate is never refused.
    steady = RateLimiter(5)
    assert all(steady.check(200 + i * 0.2) == "ok" for i in range(50))


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(10)
    assert sum(bucket.take(50.0) for _ in range(30)) == 10
    assert sum(bucket.take(50.5) for _ in range(30)) == 5


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["op", "id", "symbols", "x"]), c, max_size=4),
                              max_leaves=12).map(json.dumps)))
@settings(max_examples=400, deadline=None)
def test_the_parser_only_ever_raises_protocol_errors(data: str | bytes) -> None:
    try:
        command = parse(data)  # type: ignore[arg-type]
    except ProtocolError as exc:
        assert exc.code in {"bad_json", "bad_request", "unknown_op", "too_many_symbols"}
    else:
        assert isinstance(command, (Subscribe, Unsubscribe, Ping))


@given(st.dictionaries(st.sampled_from(["op", "id", "symbols"]),
                       st.one_of(st.sampled_from(["subscribe", "unsubscribe", "ping", "*"]),
                                 st.lists(st.text(max_size=18), max_size=5), st.integers(),
                                 st.text(max_size=70))))
@settings(max_examples=400, deadline=None)
def test_structured_messages_parse_or_fail_cleanly(message: dict[str, object]) -> None:
    with contextlib.suppress(ProtocolError):
        parse(json.dumps(message))


# max_hz: the most quotes frames a second a client wants.


@pytest.mark.parametrize("value", [0.5, 50, 4, 2.5, 1])
def test_max_hz_from_half_to_fifty_is_taken(value: float) -> None:
    command = parse(json.dumps({"op": "subscribe", "id": 1, "symbols": ["OGDC"], "max_hz": value}))
    assert command == Subscribe(1, frozenset({"OGDC"}), float(value))
    assert protocol.parse_query_max_hz(str(value)) == float(value)


def test_a_subscribe_without_max_hz_leaves_the_rate_alone() -> None:
    assert parse('{"op":"subscribe","symbols":["OGDC"]}') == Subscribe(None, frozenset({"OGDC"}))
    assert parse('{"op":"subscribe","symbols":["OGDC"],"max_hz":null}').max_hz is None  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", ["0.4", "51", '"x"', '"4"', "true", "false", "0", "-1", "[4]",
                                 "{}", "NaN", "Infinity", "-Infinity", "50.0001"])
def test_a_bad_max_hz_is_a_bad_request_with_the_id(raw: str) -> None:
    exc = error_of('{"op":"subscribe","id":9,"symbols":["OGDC"],"max_hz":' + raw + "}")
    assert exc.code == "bad_request" and exc.id == 9
    assert "max_hz" in exc.message or raw.lstrip("-") in exc.message


@pytest.mark.parametrize("raw", ["0.4", "51", "x", "true", "NaN", "inf", "-2", "4hz"])
def test_a_bad_query_max_hz_is_a_bad_request(raw: str) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_query_max_hz(raw)
    assert info.value.code == "bad_request"


def test_an_empty_query_max_hz_says_nothing() -> None:
    assert protocol.parse_query_max_hz("") is None


def test_nan_elsewhere_is_a_bad_request_too_and_plain_junk_stays_bad_json() -> None:
    assert error_of('{"op":"ping","id":3,"x":NaN}').code == "bad_request"
    assert error_of('{"op":"ping","id":3,"x":NaN').code == "bad_json"
    assert error_of("{nope").code == "bad_json"


def test_the_ack_says_the_rate_in_force() -> None:
    frame = orjson.loads(protocol.ack(1, "subscribe", ["OGDC"], [], all=False, max_hz=4.0))
    assert frame["max_hz"] == 4 and isinstance(frame["max_hz"], int)
    assert orjson.loads(protocol.ack(1, "subscribe", [], [], all=False, max_hz=2.5))["max_hz"] == 2.5
    assert "max_hz" not in orjson.loads(protocol.ack(1, "subscribe", [], [], all=False))
